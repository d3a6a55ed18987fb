"""The background jobs of the API process, by kind: what `broker.retro.JobRunner` runs.

``watchlist_retro`` and ``watchmap_retro`` (`broker.retro.run_job`) match a list or map against
the archived objects; ``filter_backfill`` (`broker.backfill.run_backfill`) runs a filter over
archived alerts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from broker.backfill import run_backfill
from broker.config import Settings
from broker.queries import Stores
from broker.retro import Job, JobRunner, JobStore, run_job
from broker.storage.filters import FilterStore
from broker.streaming.queue import Publisher


class JobStores(Stores, Protocol):
    """What the jobs read and write (a `broker.factory.Factory`, or the API's stores): the
    archive's stores, and the jobs, filters, settings and a producer."""

    @property
    def settings(self) -> Settings: ...
    @property
    def jobs(self) -> JobStore: ...
    @property
    def filters(self) -> FilterStore: ...
    def publisher(self) -> Publisher: ...


def results_dir(settings: Settings) -> Path:
    """Where backfills write their result files."""
    return settings.state_dir / "results"


def run(job: Job, stores: JobStores) -> int:
    """Run one job of any kind; the hits (or alerts delivered) it found."""
    if job.kind == "filter_backfill":
        return run_backfill(job, stores.jobs, filters=stores.filters, catalog=stores.catalog,
                            watchlists=stores.watchlists, watchmaps=stores.watchmaps,
                            refcats=stores.refcats, publisher=stores.publisher,
                            results_dir=results_dir(stores.settings),
                            max_rows=stores.settings.filter_backfill_rows,
                            annotations=stores.annotations,
                            lightcurves=lambda: stores.lightcurves)
    return run_job(job, stores.jobs, stores.catalog, stores.watchlists, stores.watchmaps)


def runner(stores: JobStores) -> JobRunner:
    """A runner of every kind of job over ``stores``."""
    return JobRunner(stores.jobs, lambda job: run(job, stores))
