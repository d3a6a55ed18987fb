"""Enrichment of a batch of ingested alerts: counterparts, context and features of each object.

This is what the enrich stage does to a batch, apart from Kafka, so that both stream loops
(`consumers.enrich`, a confluent-kafka loop, and `consumers.enrich_faust`, a faust-streaming
agent) run the same code. For a batch of ``lanner.ingested`` records, `Enricher.enrich`:

1. resolves the loaded reference catalogs, their versions and match radii (`Catalogs`, re-read
   every `CATALOGS_TTL_S` seconds, or at once when a reload is met);
2. cross-matches every object's position against every catalog with the chunk cache of
   `broker.domain.crossmatch` (one store call per catalog per batch for the chunks not cached,
   halos included, keyed by ``name@version`` so a reload is never half-read);
3. reads the stored rows of the counterparts found (one call per catalog with matches: the
   shape of galaxies, the proper motion and epoch of stars);
4. classifies each object (`broker.domain.context`; a known solar-system object is
   ``solar_system`` whatever lies under it);
5. reads the whole stored history of the batch's objects from the light-curve archive (one
   `LightCurveArchive.histories` call) and computes each object's features
   (`broker.domain.features`) at its newest alert in the batch;
6. finds the users' watchlist cones each object lies in (`broker.watching.WatchMatcher`, kept
   current by polling the watchlists' versions).

Why the features are computed here and not at ingest: docs/architecture.md (the archive holds
more than the newest packet for nine objects in ten, and ingest is the slower stage).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog
from astropy.time import Time

from broker.domain.catalogs import CatalogMotion, CatalogShape
from broker.domain.context import DEFAULT_RULES, ContextRules, Counterpart, classify_many
from broker.domain.crossmatch import ChunkCache, CrossMatcher, Matches
from broker.domain.enrichment import Match, ObjectEnrichment
from broker.domain.features import compute_features
from broker.domain.sky import Chunker, hpx29
from broker.exceptions import CatalogReloadedError
from broker.storage.chunks import RefCatChunkSource, versioned
from broker.storage.stores import LightCurveArchive, ReferenceCatalogs
from broker.watching import WatchMatcher

log = structlog.get_logger(__name__)

#: The reason of the ``solar_system`` context: the survey associated the detection with a known
#: solar-system object (Rubin's ssObjectId; the object id is ``ss`` and that number).
SOLAR_SYSTEM_REASON = "known_solar_system_object"

#: Seconds the enricher trusts its list of loaded catalogs before reading the registry again.
CATALOGS_TTL_S = 10.0


def default_radius_arcsec(kind: str, overlap_arcsec: float, *, moving: bool = False,
                          rules: ContextRules = DEFAULT_RULES) -> float:
    """The match radius of a catalog the settings name no radius for.

    A galaxy catalog is searched to its overlap radius: the rules judge a galaxy out to 2.5
    semi-major axes (`ContextRules.outskirts_limit`), so the overlap a galaxy catalog is
    loaded with is how large a galaxy it can place an alert in (OpenNGC in the demo: 10').
    So is a catalog with proper motions: a source is found by its catalogued position, which
    may be far from where it is now, and the rules judge it where it has moved to. Any other
    catalog is searched to the rules' radius for its kind (docs/context.md)."""
    if kind == "galaxy" or moving:
        return overlap_arcsec
    return rules.search_radius_arcsec("star" if kind == "star" else
                                      "qso" if kind == "qso" else "generic")


def julian_year(mjd: float) -> float:
    """The Julian epoch of an MJD (TAI and UTC differ by far less than a proper motion
    needs)."""
    return float(Time(mjd, format="mjd", scale="tai").jyear)


@dataclass(frozen=True, slots=True)
class CatalogView:
    """One loaded reference catalog as the enricher matches against it."""

    name: str
    version: int
    kind: str
    shape: CatalogShape | None
    motion: CatalogMotion | None
    radius_arcsec: float

    @property
    def key(self) -> str:
        return versioned(self.name, self.version)


class Catalogs:
    """The loaded reference catalogs, their versions and match radii, re-read every
    `CATALOGS_TTL_S` seconds (or at once after a reload was met)."""

    def __init__(self, refcats: ReferenceCatalogs, radii: Mapping[str, float], *,
                 rules: ContextRules = DEFAULT_RULES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.refcats = refcats
        self.radii = dict(radii)
        self.rules = rules
        self.clock = clock
        self._views: list[CatalogView] = []
        self._read_at = -math.inf

    def current(self, *, fresh: bool = False) -> list[CatalogView]:
        if fresh or self.clock() - self._read_at > CATALOGS_TTL_S:
            views = []
            for entry in self.refcats.list():
                kind = entry.get("kind") or "generic"
                overlap_arcsec = float(entry["overlap_deg"]) * 3600.0
                motion = CatalogMotion.from_json(entry.get("shape"))
                default = default_radius_arcsec(kind, overlap_arcsec,
                                                moving=motion is not None, rules=self.rules)
                radius = float(self.radii.get(entry["name"], default))
                views.append(CatalogView(
                    name=entry["name"], version=int(entry["version"]), kind=kind,
                    shape=CatalogShape.from_json(entry.get("shape")), motion=motion,
                    radius_arcsec=min(radius, overlap_arcsec)))
            self._views = views
            self._read_at = self.clock()
        return self._views


class Enricher:
    """Turns batches of ``lanner.ingested`` records into `ObjectEnrichment` results."""

    def __init__(self, *, refcats: ReferenceCatalogs, lightcurves: LightCurveArchive,
                 chunker: Chunker, radii: Mapping[str, float] | None = None,
                 rules: ContextRules | None = None, cache_rows: int = 20_000_000,
                 watch: WatchMatcher | None = None) -> None:
        self.refcats = refcats
        self.watch = watch
        self.lightcurves = lightcurves
        self.chunker = chunker
        self.rules = rules or DEFAULT_RULES
        self.catalogs = Catalogs(refcats, radii or {}, rules=self.rules)
        self.cache = ChunkCache(max_rows=cache_rows)

    def enrich(self, records: Sequence[Mapping[str, Any]]) -> list[ObjectEnrichment]:
        """The enrichment of each record's object (one per record, in order)."""
        for attempt in (1, 2):
            views = self.catalogs.current(fresh=attempt > 1)
            try:
                contexts = self._contexts(records, views)
                break
            except CatalogReloadedError as exc:
                log.info("reference catalog reloaded during a batch; matching it again",
                         catalog=exc.name, version=exc.version, current=exc.current)
                if attempt == 2:
                    raise
        features = self.features(records)
        results = [result if (f := features.get(result.object_id)) is None
                   else replace(result, features=f) for result in contexts]
        if self.watch is not None:
            self.watch.refresh()
            ra = np.array([r.ra for r in results])
            dec = np.array([r.dec for r in results])
            watched = self.watch.match(ra, dec)
            mapped = self.watch.match_maps(ra, dec)
            results = [replace(r, watches=tuple(w), maps=tuple(m)) if w or m else r
                       for r, w, m in zip(results, watched, mapped, strict=True)]
        return results

    def features(self, records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """The features of each object at its newest record in the batch, by object id:
        computed from the object's whole stored history (the ingest stage wrote it before
        publishing the record). Every record of the object in the batch carries them."""
        newest: dict[str, int] = {}
        for i, record in enumerate(records):
            current = newest.get(record["object_id"])
            if current is None or _epoch(record) > _epoch(records[current]):
                newest[record["object_id"]] = i
        histories = self.lightcurves.histories(newest)
        out: dict[str, dict[str, Any]] = {}
        for object_id, i in newest.items():
            history = histories.get(object_id)
            if history is None or not history.detections:
                continue  # the archive lost it, or a test fed a record it never stored
            record = records[i]
            out[object_id] = compute_features(history.detections, history.forced,
                                      now_mjd=float(record["mjd"]),
                                      dia_object=record.get("dia_object"))
        return out

    def _contexts(self, records: Sequence[Mapping[str, Any]],
                  views: Sequence[CatalogView]) -> list[ObjectEnrichment]:
        ra = np.array([r["object_ra"] for r in records], dtype=np.float64) % 360.0
        dec = np.array([r["object_dec"] for r in records], dtype=np.float64)
        found: dict[str, Matches] = {}
        if views:
            overlap = max(v.radius_arcsec for v in views) / 3600.0
            matcher = CrossMatcher(RefCatChunkSource(self.refcats), self.chunker, self.cache,
                                   overlap_deg=overlap)
            found = matcher.match(ra, dec, [v.key for v in views],
                                  {v.key: v.radius_arcsec for v in views}, mode="all")
        per_record: list[list[tuple[CatalogView, Any, float]]] = [[] for _ in records]
        for view in views:
            matches = found[view.key]
            for index, source_id, distance in zip(matches.index.tolist(), matches.ids.tolist(),
                                                  matches.distance_arcsec.tolist(), strict=True):
                per_record[index].append((view, source_id, distance))
        rows = self._matched_rows(views, per_record)
        indices = hpx29(ra, dec)
        # A row deleted between the match and the read (a DR change) is left out.
        counterparts = [[_counterpart(view, source_id, row) for view, source_id, _ in matched
                         if (row := rows.get((view.key, source_id))) is not None]
                        for matched in per_record]
        epochs = [julian_year(float(r["mjd"])) for r in records]
        contexts = classify_many(ra, dec, counterparts, rules=self.rules, epoch_jyear=epochs)
        out = []
        for i, (record, context) in enumerate(zip(records, contexts, strict=True)):
            matches_out: list[Match] = []
            for view in views:
                mine = sorted((d, str(s)) for v, s, d in per_record[i] if v is view)
                matches_out += [Match(view.name, s, d, rank)
                                for rank, (d, s) in enumerate(mine, 1)]
            label: str = context.label
            reason = str(context.reason)
            catalog, source_id = context.catalog, context.source_id
            separation, offset = context.separation_arcsec, context.offset_semimajor
            ss_object_id = record.get("ss_object_id")
            if ss_object_id is not None:
                label, catalog, source_id, separation, offset = (
                    "solar_system", None, None, None, None)
                reason = SOLAR_SYSTEM_REASON
            out.append(ObjectEnrichment(
                object_id=record["object_id"], chunk_id=int(record["chunk_id"]),
                hpx29=int(indices[i]), ra=float(ra[i]), dec=float(dec[i]),
                alert_id=int(record["alert_id"]), alert_mjd=float(record["mjd"]),
                context=label, catalog=catalog, source_id=source_id,
                separation_arcsec=separation, offset_semimajor=offset, reason=reason,
                matches=tuple(matches_out)))
        return out

    def _matched_rows(self, views: Sequence[CatalogView],
                      per_record: Sequence[Sequence[tuple[CatalogView, Any, float]]]
                      ) -> dict[tuple[str, Any], dict[str, Any]]:
        """The stored rows (positions, shapes, motions) of every matched counterpart: one call
        per catalog with matches."""
        wanted: dict[str, set[Any]] = {}
        for matched in per_record:
            for view, source_id, _ in matched:
                wanted.setdefault(view.key, set()).add(source_id)
        rows: dict[tuple[str, Any], dict[str, Any]] = {}
        for view in views:
            if view.key in wanted:
                found = self.refcats.rows(view.name, sorted(wanted[view.key], key=str),
                                          version=view.version)
                rows.update({(view.key, key): row for key, row in found.items()})
        return rows


def _epoch(record: Mapping[str, Any]) -> tuple[float, int]:
    return float(record["mjd"]), int(record["alert_id"])


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _counterpart(view: CatalogView, source_id: Any, row: dict[str, Any]) -> Counterpart:
    """A matched catalog row as the context rules take it (axes as diameters in arcmin, the
    proper motion in mas/yr at the catalog's epoch)."""
    major = minor = pa = None
    if view.shape is not None:
        semi_major, semi_minor = view.shape.semi_axes_arcsec(
            row.get(view.shape.major), row.get(view.shape.minor) if view.shape.minor else None)
        if semi_major is not None and semi_minor is not None:
            major, minor = semi_major * 2.0 / 60.0, semi_minor * 2.0 / 60.0
            pa = _finite(row.get(view.shape.pa)) if view.shape.pa else None
    pmra = pmdec = epoch = None
    if view.motion is not None:
        pmra, pmdec = _finite(row.get(view.motion.pmra)), _finite(row.get(view.motion.pmdec))
        epoch = view.motion.epoch_jyear if pmra is not None and pmdec is not None else None
    return Counterpart(catalog=view.name, kind=view.kind,  # type: ignore[arg-type]
                       source_id=str(source_id), ra=float(row["ra"]), dec=float(row["dec"]),
                       major_diameter_arcmin=major, minor_diameter_arcmin=minor,
                       position_angle_deg=pa, pmra_mas_yr=pmra, pmdec_mas_yr=pmdec,
                       epoch_jyear=epoch)
