"""The enrich stage: every ingested alert's object cross-matched, placed in context, published.

Per batch of ``internal.ingested`` records: decode them (a bad record goes to the dead-letter
topic with its reason); resolve the loaded reference catalogs and their versions (`Catalogs`);
cross-match every object's position against every catalog with the chunk cache of
`broker.domain.crossmatch` (one store call per catalog per batch for the chunks not cached,
halos included, keyed by ``name@version`` so a reload is never half-read); read the shape of
the galaxies matched (`ReferenceCatalogs.rows`, two rounds); classify each object
(`broker.domain.context`); store the results (`ObjectCatalog.write_enrichment`, which keeps each
object's newest alert's); publish one ``lanner.enriched`` record per alert; wait for every
acknowledgement; commit the offsets. A store that fails makes the stage retry the step with
back-off, committing nothing; a catalog reloaded during a batch makes it resolve the versions
again and match the batch anew.

Redelivery: the stored results are keyed by object and only a newer alert replaces them, so a
batch processed twice stores the same rows; its ``internal.enriched`` records are published
again with the same alert ids (at-least-once), and readers deduplicate by ``alert_id``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from broker import metrics
from broker.config import DEFAULT_ONCE_WAIT_S
from broker.domain.catalogs import CatalogShape
from broker.domain.context import DEFAULT_RULES, ContextRules, Counterpart, classify_many
from broker.domain.crossmatch import ChunkCache, CrossMatcher, Matches
from broker.domain.enrichment import Match, ObjectEnrichment
from broker.domain.sky import Chunker, hpx29
from broker.exceptions import CatalogReloadedError, PermanentError
from broker.factory import Factory
from broker.storage.chunks import RefCatChunkSource, versioned
from broker.storage.stores import ObjectCatalog, ReferenceCatalogs
from broker.streaming import lanner_schemas
from broker.streaming.queue import Message, MessageSource, Publisher
from consumers.stage import Backoff, Stage, unexpected

log = structlog.get_logger(__name__)

STAGE = "enrich"

#: A galaxy catalog is searched out to its overlap radius (1' by default) unless the settings
#: name a radius for it: the context rules judge a galaxy out to 2.5 semi-major axes
#: (`ContextRules.outskirts_limit`), which for most catalogued galaxies is within 1'; a
#: larger galaxy needs its catalog loaded with a larger overlap.
GALAXY_RADIUS_ARCSEC = 60.0


def default_radius_arcsec(kind: str, rules: ContextRules = DEFAULT_RULES) -> float:
    """The match radius of a catalog of ``kind`` the settings name no radius for: the context
    rules' own search radius (docs/context.md), and `GALAXY_RADIUS_ARCSEC` for galaxies."""
    if kind == "galaxy":
        return GALAXY_RADIUS_ARCSEC
    return rules.search_radius_arcsec("star" if kind == "star" else
                                      "qso" if kind == "qso" else "generic")

#: Seconds the stage trusts its list of loaded catalogs before reading the registry again.
CATALOGS_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class EnrichTopics:
    """The topics the stage reads and writes."""

    ingested: str = "internal.ingested"
    enriched: str = "internal.enriched"
    dlq: str = "alerts.dlq"


@dataclass(slots=True)
class EnrichReport:
    """What one batch did (or several, added up)."""

    consumed: int = 0
    enriched: int = 0
    dead_lettered: int = 0
    contexts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: EnrichReport) -> None:
        self.consumed += other.consumed
        self.enriched += other.enriched
        self.dead_lettered += other.dead_lettered
        for target, source in ((self.contexts, other.contexts), (self.reasons, other.reasons)):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n


@dataclass(frozen=True, slots=True)
class CatalogView:
    """One loaded reference catalog as the stage matches against it."""

    name: str
    version: int
    kind: str
    shape: CatalogShape | None
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
                radius = float(self.radii.get(entry["name"],
                                              default_radius_arcsec(kind, self.rules)))
                views.append(CatalogView(
                    name=entry["name"], version=int(entry["version"]), kind=kind,
                    shape=CatalogShape.from_json(entry.get("shape")),
                    radius_arcsec=min(radius, overlap_arcsec)))
            self._views = views
            self._read_at = self.clock()
        return self._views


def build(factory: Factory, *, source: MessageSource | None = None,
          publisher: Publisher | None = None, batch_size: int | None = None,
          poll_timeout: float | None = None, backoff: Backoff | None = None) -> EnrichStage:
    """The enrich stage of ``lanner enrich``, from the factory's settings and stores."""
    s = factory.settings
    topics = EnrichTopics(ingested=s.topic_ingested, enriched=s.topic_enriched,
                          dlq=s.topic_dlq)
    if source is None:
        source = factory.source(group=s.enrich_group, topics=[topics.ingested],
                                instance_id=s.enrich_instance_id)
    return EnrichStage(
        source=source,
        publisher=factory.publisher() if publisher is None else publisher,
        catalog=factory.catalog, refcats=factory.refcats, chunker=factory.chunker,
        topics=topics, radii=s.enrich_radius_arcsec, cache_rows=s.enrich_cache_rows,
        batch_size=s.enrich_batch_size if batch_size is None else batch_size,
        poll_timeout=s.ingest_poll_timeout_s if poll_timeout is None else poll_timeout,
        backoff=backoff,
        once_wait=s.once_wait_limit_s,
    )


class EnrichStage(Stage[EnrichReport]):
    """Turns ``internal.ingested`` records into stored contexts and ``internal.enriched``."""

    name = STAGE

    def __init__(
        self,
        *,
        source: MessageSource,
        publisher: Publisher,
        catalog: ObjectCatalog,
        refcats: ReferenceCatalogs,
        chunker: Chunker,
        topics: EnrichTopics | None = None,
        radii: Mapping[str, float] | None = None,
        rules: ContextRules | None = None,
        cache_rows: int = 20_000_000,
        batch_size: int = 1000,
        poll_timeout: float = 0.2,
        backoff: Backoff | None = None,
        once_wait: float = DEFAULT_ONCE_WAIT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(source=source, publisher=publisher, batch_size=batch_size,
                         poll_timeout=poll_timeout, backoff=backoff, once_wait=once_wait)
        self.catalog = catalog
        self.refcats = refcats
        self.chunker = chunker
        self.topics = topics or EnrichTopics()
        self.rules = rules or DEFAULT_RULES
        self.catalogs = Catalogs(refcats, radii or {}, rules=self.rules)
        self.cache = ChunkCache(max_rows=cache_rows)
        self.clock = clock

    def new_report(self) -> EnrichReport:
        return EnrichReport()

    def process(self, messages: Sequence[Message]) -> EnrichReport:
        """Enrich a batch, store and publish its results, then commit its offsets."""
        started = time.monotonic()
        report = EnrichReport(consumed=len(messages))
        records: list[tuple[Message, dict[str, Any]]] = []
        rejected: list[tuple[Message, PermanentError]] = []
        for message in messages:
            try:
                records.append((message, self.read(message)))
            except PermanentError as exc:
                rejected.append((message, exc))
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, unexpected(STAGE, message, exc)))

        results: list[ObjectEnrichment] = []
        if records:
            results = self.retry("refcats", lambda: self.enrich([r for _, r in records]))
            self.retry("catalog", lambda: self.catalog.write_enrichment(results))
        self.retry("kafka", lambda: self._publish(records, results, rejected))
        self.retry("kafka", lambda: self.source.commit(messages))

        report.enriched = len(results)
        report.dead_lettered = len(rejected)
        for result in results:
            report.contexts[result.context] = report.contexts.get(result.context, 0) + 1
        self.count_rejections(report.reasons, rejected)
        metrics.ALERTS_OUT.labels(STAGE).inc(report.enriched)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.monotonic() - started)
        return report

    def read(self, message: Message) -> dict[str, Any]:
        """Decode one ``internal.ingested`` record and check the position it carries."""
        record = lanner_schemas.decode("ingested", message.value)
        ra, dec = record["object_ra"], record["object_dec"]
        if not (math.isfinite(ra) and math.isfinite(dec) and -90.0 <= dec <= 90.0):
            error = PermanentError(f"object position ({ra}, {dec}) is not a sky position")
            error.reason = "bad_position"
            raise error
        return record

    def enrich(self, records: Sequence[dict[str, Any]]) -> list[ObjectEnrichment]:
        """The enrichment of each record's object (one per record, in order)."""
        for attempt in (1, 2):
            views = self.catalogs.current(fresh=attempt > 1)
            try:
                return self._enrich(records, views)
            except CatalogReloadedError as exc:
                log.info("reference catalog reloaded during a batch; matching it again",
                         catalog=exc.name, version=exc.version, current=exc.current)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _enrich(self, records: Sequence[dict[str, Any]],
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
        contexts = classify_many(ra, dec, counterparts, rules=self.rules)
        out = []
        for i, (record, context) in enumerate(zip(records, contexts, strict=True)):
            matches_out: list[Match] = []
            for view in views:
                mine = sorted((d, str(s)) for v, s, d in per_record[i] if v is view)
                matches_out += [Match(view.name, s, d, rank)
                                for rank, (d, s) in enumerate(mine, 1)]
            out.append(ObjectEnrichment(
                object_id=record["object_id"], chunk_id=int(record["chunk_id"]),
                hpx29=int(indices[i]), ra=float(ra[i]), dec=float(dec[i]),
                alert_id=int(record["alert_id"]), alert_mjd=float(record["mjd"]),
                context=context.label, catalog=context.catalog, source_id=context.source_id,
                separation_arcsec=context.separation_arcsec,
                offset_semimajor=context.offset_semimajor, reason=str(context.reason),
                matches=tuple(matches_out)))
        return out

    def _matched_rows(self, views: Sequence[CatalogView],
                      per_record: Sequence[Sequence[tuple[CatalogView, Any, float]]]
                      ) -> dict[tuple[str, Any], dict[str, Any]]:
        """The stored rows (positions, shapes) of every matched counterpart: two rounds to the
        shards per catalog with matches."""
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

    def _publish(self, records: Sequence[tuple[Message, dict[str, Any]]],
                 results: Sequence[ObjectEnrichment],
                 rejected: Sequence[tuple[Message, PermanentError]]) -> None:
        now_ms = int(self.clock() * 1000)
        for (message, record), result in zip(records, results, strict=True):
            self.publisher.publish(self.topics.enriched, lanner_schemas.encode("enriched", {
                "alert_id": record["alert_id"], "object_id": record["object_id"],
                "survey": record["survey"], "mjd": record["mjd"], "band": record["band"],
                "mag": record.get("mag"), "ra": result.ra, "dec": result.dec,
                "chunk_id": result.chunk_id, "context": result.context,
                "context_catalog": result.catalog, "context_source_id": result.source_id,
                "context_separation_arcsec": result.separation_arcsec,
                "context_offset_semimajor": result.offset_semimajor,
                "context_reason": result.reason,
                "matches": [{"catalog": m.catalog, "source_id": m.source_id,
                             "separation_arcsec": m.separation_arcsec, "rank": m.rank}
                            for m in result.matches],
                "features": {},
                "source_timestamp_ms": record.get("source_timestamp_ms"),
                "ingested_ms": record["ingested_ms"], "enriched_ms": now_ms,
            }), key=message.key or record["object_id"].encode())
        self.dead_letter(self.topics.dlq, rejected)
        self.publisher.flush(60.0)


def _counterpart(view: CatalogView, source_id: Any, row: dict[str, Any]) -> Counterpart:
    """A matched catalog row as the context rules take it (axes as diameters in arcmin)."""
    major = minor = pa = None
    if view.shape is not None:
        semi_major, semi_minor = view.shape.semi_axes_arcsec(
            row.get(view.shape.major), row.get(view.shape.minor) if view.shape.minor else None)
        if semi_major is not None and semi_minor is not None:
            major, minor = semi_major * 2.0 / 60.0, semi_minor * 2.0 / 60.0
            value = row.get(view.shape.pa) if view.shape.pa else None
            pa = float(value) if value is not None and math.isfinite(value) else None
    return Counterpart(catalog=view.name, kind=view.kind,  # type: ignore[arg-type]
                       source_id=str(source_id), ra=float(row["ra"]), dec=float(row["dec"]),
                       major_diameter_arcmin=major, minor_diameter_arcmin=minor,
                       position_angle_deg=pa)
