"""`lanner demo`: the whole broker in one process, on simulated and shipped alerts, with no server.

`run` does, in order:

1. queue ``count`` simulated Rubin alerts (the latest schema, seeded) on the Rubin alert topic of
   the embedded in-process queue, and the 53 real ZTF alerts shipped in `broker.data` on the ZTF
   topic;
2. run the real ingest stage once over the queue, into the embedded archive (one SQLite file
   under the state folder);
3. load the reference catalogs shipped in `broker.data` (Hipparcos, OpenNGC), unless a previous
   run already did;
4. with ``build_enrich`` (as ``lanner demo`` does): three more simulated transients placed on a
   Hipparcos star, in an OpenNGC galaxy's disk and in empty sky (`PLACEMENTS`), and the real
   enrich stage over every ingested alert, so that each context can be opened;
5. report what was archived and enriched (`DemoReport`), with a few URLs worth opening.

Running it again adds nothing twice: every write is keyed by source ids. Serving the API is the
caller's part (``lanner demo`` runs uvicorn over the same factory), since ``broker/`` does not
import ``api/``; so is building the ingest stage (``lanner demo`` passes
``consumers.ingest.build``), since ``broker/`` does not import ``consumers/`` either. The caller
shows progress through a `Progress` of its own; nothing here prints.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from broker.config import Backend, Settings
from broker.data import CATALOGS, ztf_alerts
from broker.domain.catalogs import select_rows
from broker.domain.context import offset_by
from broker.enricher import julian_year
from broker.exceptions import LannerError, NotFoundError
from broker.simulator import AlertSimulator
from broker.storage.refcat import open_catalog_file
from broker.streaming import lanner_schemas, wire
from broker.streaming.replay import iter_alert_files
from broker.streaming.schemas import SchemaVersion, latest_version

if TYPE_CHECKING:
    from broker.factory import Factory
    from broker.storage.filters import Filter

__all__ = ["DEMO_FILTERS", "PLACEMENTS", "BuildEnrich", "BuildFilters", "BuildIngest",
           "DemoReport", "Enrich", "Filters", "Ingest", "IngestReport", "Placement", "Progress",
           "Silent", "demo_filters", "embedded_settings", "load_catalogs", "place", "run"]


class Progress(Protocol):
    """How the demo reports its steps: a task to enter, advanced by a count of items done."""

    def task(
        self, description: str, total: int | None
    ) -> AbstractContextManager[Callable[[int], None]]:
        """A step of ``total`` items (``None``: one indivisible step); yields its advance."""
        ...


class IngestReport(Protocol):
    """What the demo reads of an ingest report (`consumers.ingest.BatchReport`)."""

    consumed: int
    archived: int


class Ingest(Protocol):
    """The ingest stage as the demo runs it (`consumers.ingest.IngestStage`)."""

    def run(self, *, once: bool = ..., idle_polls: int = ...,
            on_batch: Callable[[IngestReport], None] | None = ...) -> IngestReport:
        """Process batches; with ``once``, until the input is drained."""
        ...


class BuildIngest(Protocol):
    """Builds the ingest stage from a factory (`consumers.ingest.build`)."""

    def __call__(self, factory: Factory, *, poll_timeout: float | None = ...) -> Ingest: ...


class EnrichReport(Protocol):
    """What the demo reads of an enrich report (`consumers.enrich.EnrichReport`)."""

    consumed: int
    enriched: int
    contexts: dict[str, int]


class Enrich(Protocol):
    """The enrich stage as the demo runs it (`consumers.enrich.EnrichStage`)."""

    def run(self, *, once: bool = ..., idle_polls: int = ...,
            on_batch: Callable[[EnrichReport], None] | None = ...) -> EnrichReport:
        """Process batches; with ``once``, until the input is drained."""
        ...


class BuildEnrich(Protocol):
    """Builds the enrich stage from a factory (`consumers.enrich.build`)."""

    def __call__(self, factory: Factory, *, poll_timeout: float | None = ...) -> Enrich: ...


class FiltersReport(Protocol):
    """What the demo reads of a filters report (`consumers.filters.FiltersReport`)."""

    consumed: int
    published: int
    by_filter: dict[int, int]


class Filters(Protocol):
    """The filters stage as the demo runs it (`consumers.filters.FiltersStage`)."""

    def run(self, *, once: bool = ..., idle_polls: int = ...,
            on_batch: Callable[[FiltersReport], None] | None = ...) -> FiltersReport:
        """Process batches; with ``once``, until the input is drained."""
        ...


class BuildFilters(Protocol):
    """Builds the filters stage from a factory (`consumers.filters.build`)."""

    def __call__(self, factory: Factory, *, poll_timeout: float | None = ...) -> Filters: ...


#: The public filters of the demo's user ``demo`` (docs/filters.md), enabled in the demo.
DEMO_USER = "demo"
DEMO_FILTERS = (
    ("supernova-candidates", "Alerts on catalogued galaxies, off their nucleus.",
     "SELECT mag, band, context_source_id AS host, context_offset_semimajor "
     "WHERE context = 'supernova_like'"),
    ("bright", "Anything brighter than 19.5 mag.",
     "SELECT mag, band, context WHERE mag < 19.5 ORDER BY mag"),
)


@dataclass(frozen=True, slots=True)
class Placement:
    """A simulated transient the demo puts where its context is known, to show each one."""

    label: str  # what it shows
    context: str  # the context it gets (docs/context.md)
    object_id: int
    ra: float
    dec: float
    #: The proper motion (mas/yr in RA, as mu_alpha cos delta, and in Dec) and Julian epoch
    #: of (ra, dec): the transient is put where the star is at the alert's time.
    motion: tuple[float, float, float] | None = None

    def position_at(self, mjd: float) -> tuple[float, float]:
        """Where the transient goes for an alert at ``mjd``."""
        if self.motion is None:
            return self.ra, self.dec
        pmra, pmdec, epoch = self.motion
        years = julian_year(mjd) - epoch
        ra, dec = offset_by(np.array([self.ra]), np.array([self.dec]),
                            math.degrees(math.atan2(pmra, pmdec)),
                            math.hypot(pmra, pmdec) * years / 3.6e6)
        return float(ra[0]), float(dec[0])


def _along(ra: float, dec: float, pa_deg: float, arcsec: float) -> tuple[float, float]:
    """A point ``arcsec`` from (ra, dec) towards position angle ``pa_deg`` (small offsets)."""
    east = arcsec * math.sin(math.radians(pa_deg))
    north = arcsec * math.cos(math.radians(pa_deg))
    return (ra + east / 3600.0 / math.cos(math.radians(dec))) % 360.0, dec + north / 3600.0


#: On Vega (Hipparcos 91262, where its proper motion has taken it since J1991.25), in the disk
#: of NGC 1 (OpenNGC: 1.57' x 1.07' diameters, PA 112: half a semi-major axis out along the major
#: axis) and in empty sky (no Hipparcos star within 6', no OpenNGC object within 44').
PLACEMENTS = (
    Placement("a simulated transient on a Hipparcos star", "variable_star",
              9_000_000_000_000_001, 279.23410832, 38.78299311, (200.94, 286.23, 1991.25)),
    Placement("a simulated transient in a galaxy's disk", "supernova_like",
              9_000_000_000_000_002, *_along(1.8160000, 27.7080833, 112.0, 0.5 * 1.57 * 30)),
    Placement("a simulated transient with nothing near", "orphan",
              9_000_000_000_000_003, 120.0, 10.0),
)


def place(record: dict[str, Any], object_id: int, ra: float, dec: float) -> dict[str, Any]:
    """A simulated Rubin packet moved to (ra, dec), every source of it, with a new object id."""
    placed = copy.deepcopy(record)
    for source in [placed["diaSource"], *(placed["prvDiaSources"] or []),
                   *(placed["prvDiaForcedSources"] or [])]:
        source["ra"], source["dec"] = ra, dec
        if "diaObjectId" in source:
            source["diaObjectId"] = object_id
    if placed.get("diaObject"):
        placed["diaObject"]["ra"], placed["diaObject"]["dec"] = ra, dec
        placed["diaObject"]["diaObjectId"] = object_id
    return placed


class Silent:
    """A `Progress` that shows nothing."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A step that reports nothing."""
        del description, total
        yield lambda _: None


@dataclass(frozen=True, slots=True)
class DemoReport:
    """What a demo run archived and loaded."""

    version: SchemaVersion
    simulated: int
    ztf: int
    archived: int
    archive: Path
    objects: int
    detections: int
    catalogs: tuple[str, ...]
    #: The last alert ingested (an ``internal.ingested`` record), to point at; None if none.
    example: Mapping[str, Any] | None
    #: Alerts enriched, objects per context, and the objects placed to show each context.
    enriched: int = 0
    contexts: Mapping[str, int] | None = None
    placed: tuple[tuple[Placement, str | None], ...] = ()
    #: The demo's filters: (filter id, name, alerts it published).
    filters: tuple[tuple[int, str, int], ...] = ()

    def summary(self) -> str:
        """One line: alerts archived, where, and what the archive now holds."""
        line = (f"archived {self.archived} alerts ({self.simulated} simulated Rubin "
                f"{self.version}, {self.ztf} real ZTF) into {self.archive}: {self.objects} "
                f"objects, {self.detections} detections")
        if self.contexts is not None:
            counts = ", ".join(f"{n} {label}" for label, n in sorted(self.contexts.items()))
            line += f"; enriched {self.enriched} alerts ({counts})"
        if self.filters:
            shown = ", ".join(f"{name} {n}" for _, name, n in self.filters)
            line += f"; filters published {shown}"
        return line

    def urls(self, base: str) -> list[str]:
        """The URLs worth opening on the API served at ``base``, one line each."""
        lines = [f"{base}/                      the landing page",
                 f"{base}/docs                  the API documentation"]
        if self.example is not None:
            oid = self.example["object_id"]
            lines += [f"{base}/api/v1/objects/{oid}",
                      f"{base}/api/v1/objects/{oid}/lightcurve",
                      f"{base}/api/v1/cone?ra={self.example['ra']:.5f}"
                      f"&dec={self.example['dec']:.5f}&radius=60"]
        if self.ztf:
            lines += [f"{base}/api/v1/objects/ZTF18abmmoot/lightcurve   a real ZTF light curve",
                      f"{base}/api/v1/cone?ra=197.6&dec=7.3&radius=1800   a real ZTF field"]
        if self.catalogs:
            lines.append(f"reference catalogs: {', '.join(self.catalogs)} "
                         f"(see {base}/api/v1/catalogs)")
        for placement, context in self.placed:
            lines.append(f"{base}/api/v1/objects/{placement.object_id}   {placement.label} "
                         f"(context: {context})")
        for filter_id, name, _ in self.filters:
            lines.append(f"{base}/api/v1/filters/{filter_id}   the {name} filter "
                         f"(topic filter.{DEMO_USER}.{name})")
        if "hipparcos" in self.catalogs:
            lines += [f"{base}/api/v1/cone?ra=279.2341&dec=38.7830&radius=3600&catalog=hipparcos"
                      "   stars around Vega",
                      f"{base}/scs/hipparcos?RA=279.2341&DEC=38.7830&SR=1   the same, IVOA SCS"]
            if self.ztf:
                lines.append(f"{base}/api/v1/objects/ZTF20aabaesq/crossmatches?radius=300   a "
                             "real ZTF object's Hipparcos neighbour")
        return lines


def embedded_settings(settings: Settings) -> Settings:
    """The settings with the embedded backend, whatever they chose: the demo needs no server."""
    return settings.model_copy(update={"backend": Backend.embedded})


def run(factory: Factory, *, build_ingest: BuildIngest, count: int, seed: int,
        progress: Progress | None = None, build_enrich: BuildEnrich | None = None,
        build_filters: BuildFilters | None = None) -> DemoReport:
    """Queue, ingest and load everything the demo shows (see the module docstring); with
    ``build_enrich``, also the `PLACEMENTS` and the enrich stage over every ingested alert;
    with ``build_filters`` too, the `DEMO_FILTERS` of user ``demo``, enabled, and the filters
    stage over every enriched alert.

    Raises
    ------
    LannerError
        If the factory is not on the embedded backend (see `embedded_settings`).
    """
    settings = factory.settings
    if settings.backend is not Backend.embedded:
        msg = "the demo runs on the embedded backend only"
        raise LannerError(msg)
    steps = progress or Silent()
    queue = factory.memory_broker
    version = latest_version()
    simulator = AlertSimulator(schema=version, seed=seed)
    simulated = 0
    with steps.task(f"simulating schema {version}", count) as advance:
        for key, value in simulator.encoded(count):
            queue.produce(settings.topic_alerts_lsst, value, key=key)
            simulated += 1
            advance(1)
    if build_enrich is not None:
        placed_records = AlertSimulator(schema=version, seed=seed + 1, cutouts=False)
        for placement, record in zip(PLACEMENTS, placed_records.packets(len(PLACEMENTS)),
                                     strict=True):
            moved = place(record, placement.object_id,
                          *placement.position_at(float(record["diaSource"]["midpointMjdTai"])))
            queue.produce(settings.topic_alerts_lsst, wire.encode(moved, version.schema_id),
                          key=str(placement.object_id).encode())
            simulated += 1
    ztf = 0
    for _, packet, object_id in iter_alert_files(ztf_alerts()):
        queue.produce(settings.topic_alerts_ztf, packet, key=object_id)
        ztf += 1
    # The in-process queue answers at once: a short poll ends the run soon after the last batch.
    stage = build_ingest(factory, poll_timeout=0.05)
    with steps.task("ingesting into the embedded archive", simulated + ztf) as advance:
        total = stage.run(once=True, idle_polls=2,
                          on_batch=lambda report: advance(report.consumed))
    catalogs = load_catalogs(factory, steps)
    enriched, contexts = 0, None
    placed: tuple[tuple[Placement, str | None], ...] = ()
    if build_enrich is not None:
        enrich = build_enrich(factory, poll_timeout=0.05)
        with steps.task("enriching (cross-match and context)", total.archived) as advance:
            done = enrich.run(once=True, idle_polls=2,
                              on_batch=lambda report: advance(report.consumed))
        enriched, contexts = done.enriched, dict(done.contexts)
        placed = tuple((p, (factory.catalog.context(str(p.object_id)) or {}).get("context"))
                       for p in PLACEMENTS)
    filters: tuple[tuple[int, str, int], ...] = ()
    if build_enrich is not None and build_filters is not None:
        made = demo_filters(factory)
        filtering = build_filters(factory, poll_timeout=0.05)
        with steps.task("running the demo's filters", enriched) as advance:
            ran = filtering.run(once=True, idle_polls=2,
                                on_batch=lambda report: advance(report.consumed))
        filters = tuple((f.filter_id, f.name, ran.by_filter.get(f.filter_id, 0)) for f in made)
    counts = dict(factory.catalog.counts())
    return DemoReport(
        version=version,
        simulated=simulated,
        ztf=ztf,
        archived=total.archived,
        archive=settings.embedded_path,
        objects=counts.get("objects", 0),
        detections=counts.get("alert_rows", 0),
        catalogs=catalogs,
        example=_last_ingested(factory),
        enriched=enriched,
        contexts=contexts,
        placed=placed,
        filters=filters,
    )


def demo_filters(factory: Factory) -> list[Filter]:
    """The `DEMO_FILTERS` of user ``demo``, made if missing, enabled, their topics made."""
    try:
        factory.accounts.get_user(DEMO_USER)
    except NotFoundError:
        factory.accounts.add_user(DEMO_USER)
    mine = {f.name: f for f in factory.filters.visible(DEMO_USER) if f.owner == DEMO_USER}
    made = []
    for name, description, text in DEMO_FILTERS:
        found = mine.get(name) or factory.filters.create(
            DEMO_USER, name, text, description=description, visibility="public",
            daily_cap=factory.settings.filter_daily_cap)
        factory.create_topics([found.topic])
        factory.filters.set_state(found.filter_id, "enabled")
        made.append(found)
    return made


def load_catalogs(factory: Factory, progress: Progress | None = None) -> tuple[str, ...]:
    """Load the shipped reference catalogs not loaded yet; the names of all of them."""
    steps = progress or Silent()
    present = {entry["name"] for entry in factory.refcats.list()}
    for catalog in CATALOGS:
        if catalog.name in present:
            continue
        with catalog.path() as path, steps.task(f"loading the {catalog.name} catalog", None):
            source = open_catalog_file(path)
            batches = source.batches
            if catalog.only is not None:
                batches = select_rows(batches, *catalog.only)
            try:
                factory.refcats.load(catalog.name, batches, catalog.id_col,
                                     catalog.ra_col, catalog.dec_col, kind=catalog.kind,
                                     shape=catalog.shape, motion=catalog.motion,
                                     overlap_deg=catalog.overlap_deg,
                                     description=catalog.description)
            finally:
                source.close()
    return tuple(catalog.name for catalog in CATALOGS)


def _last_ingested(factory: Factory) -> Mapping[str, Any] | None:
    messages = factory.memory_broker.messages(factory.settings.topic_ingested)
    if not messages:
        return None
    decoded: Mapping[str, Any] = lanner_schemas.decode("ingested", messages[-1].value)
    return decoded
