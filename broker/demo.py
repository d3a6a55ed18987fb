"""`lanner demo`: the whole broker in one process, on simulated and shipped alerts, with no server.

`run` does, in order:

1. queue ``count`` simulated Rubin alerts (the latest schema, seeded) on the Rubin alert topic of
   the embedded in-process queue, and the 53 real ZTF alerts shipped in `broker.data` on the ZTF
   topic;
2. run the real ingest stage once over the queue, into the embedded archive (one SQLite file
   under the state folder);
3. load the reference catalogs shipped in `broker.data` (Hipparcos, OpenNGC), unless a previous
   run already did;
4. report what was archived (`DemoReport`), with a few URLs worth opening.

Running it again adds nothing twice: every write is keyed by source ids. Serving the API is the
caller's part (``lanner demo`` runs uvicorn over the same factory), since ``broker/`` does not
import ``api/``; so is building the ingest stage (``lanner demo`` passes
``consumers.ingest.build``), since ``broker/`` does not import ``consumers/`` either. The caller
shows progress through a `Progress` of its own; nothing here prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from broker.config import Backend, Settings
from broker.data import CATALOGS, ztf_alerts
from broker.exceptions import LannerError
from broker.simulator import AlertSimulator
from broker.storage.refcat import open_catalog_file
from broker.streaming import lanner_schemas
from broker.streaming.replay import iter_alert_files
from broker.streaming.schemas import SchemaVersion, latest_version

if TYPE_CHECKING:
    from broker.factory import Factory

__all__ = ["BuildIngest", "DemoReport", "Ingest", "IngestReport", "Progress", "Silent",
           "embedded_settings", "load_catalogs", "run"]


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

    def summary(self) -> str:
        """One line: alerts archived, where, and what the archive now holds."""
        return (f"archived {self.archived} alerts ({self.simulated} simulated Rubin "
                f"{self.version}, {self.ztf} real ZTF) into {self.archive}: {self.objects} "
                f"objects, {self.detections} detections")

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
        progress: Progress | None = None) -> DemoReport:
    """Queue, ingest and load everything the demo shows (see the module docstring).

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
    )


def load_catalogs(factory: Factory, progress: Progress | None = None) -> tuple[str, ...]:
    """Load the shipped reference catalogs not loaded yet; the names of all of them."""
    steps = progress or Silent()
    present = {entry["name"] for entry in factory.refcats.list()}
    for catalog in CATALOGS:
        if catalog.name in present:
            continue
        with catalog.path() as path, steps.task(f"loading the {catalog.name} catalog", None):
            source = open_catalog_file(path)
            try:
                factory.refcats.load(catalog.name, source.batches, catalog.id_col,
                                     catalog.ra_col, catalog.dec_col, kind=catalog.kind,
                                     shape=catalog.shape)
            finally:
                source.close()
    return tuple(catalog.name for catalog in CATALOGS)


def _last_ingested(factory: Factory) -> Mapping[str, Any] | None:
    messages = factory.memory_broker.messages(factory.settings.topic_ingested)
    if not messages:
        return None
    decoded: Mapping[str, Any] = lanner_schemas.decode("ingested", messages[-1].value)
    return decoded
