"""A filter's backfill: the filter run over archived alerts of a time window, as a job.

``POST /api/v1/filters/{id}/backfill`` queues a ``filter_backfill`` job (table ``jobs``, run by
the API process's `broker.retro.JobRunner`) for the filter's current version. The job reads the
window's archived alerts oldest first, a page of `PAGE` at a time (the same records a test run
reads: `broker.filtering.archived_alerts`), runs the filter on each page as the stream runs it
on a batch, and delivers what passes:

- ``topic``: on the filter's own topic, as ``lanner.filtered`` records flagged ``backfill``
  (subscribers tell them from live ones), keyed by object id like live ones;
- ``file``: as a CSV file of the job (the alert's ids, time and position and the filter's
  output columns), served by ``GET /api/v1/jobs/{id}/result`` as CSV or VOTable.

Progress is the alerts read of those the window holds (counted when the job starts). At most
``max_rows`` passing alerts are delivered; the job then stops and says so. ORDER BY and LIMIT
act on each page, as they act on each batch of the stream. A job run again (the API process
restarted mid-job) starts the window again: a file is written afresh, and a topic gets the
alerts again, flagged backfill.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from broker.domain.filters import ALWAYS, AlertBatch, compile_filter, run
from broker.filtering import archived_alerts, scope_for
from broker.filterset import Passed, attachments, filtered_records
from broker.retro import Job, JobStore, Stopped, Superseded
from broker.storage.annotations import AnnotationStore
from broker.storage.filters import FilterStore
from broker.storage.stores import LightCurveArchive, ObjectCatalog, ReferenceCatalogs
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import WatchmapStore
from broker.streaming.queue import Publisher

#: Archived alerts read and filtered per page.
PAGE = 10_000
DELIVERIES = ("topic", "file")


def result_path(results_dir: Path, job_id: int) -> Path:
    return results_dir / f"backfill-{job_id}.csv"


class _FileSink:
    """Passing alerts into the job's CSV file (written beside, renamed when complete)."""

    def __init__(self, path: Path, names: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.partial = path.with_suffix(".part")
        self.names = names
        self.file = self.partial.open("w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(names)

    def deliver(self, passed: Passed, records: list[dict[str, Any]], take: list[int]) -> None:
        columns = {n: v.to_pylist() for n, v in passed.selection.columns.items()}
        rows = passed.selection.rows.tolist()
        for i in take:
            record = records[rows[i]]
            self.writer.writerow([columns[n][i] if n in columns else record[n]
                                  for n in self.names])

    def close(self, complete: bool) -> None:
        self.file.close()
        if complete:
            os.replace(self.partial, self.path)


class _TopicSink:
    """Passing alerts onto the filter's topic, flagged backfill."""

    def __init__(self, publisher: Publisher, topic: str,
                 lightcurves: Callable[[], LightCurveArchive] | None = None) -> None:
        self.publisher = publisher
        self.topic = topic
        self.lightcurves = lightcurves

    def deliver(self, passed: Passed, records: list[dict[str, Any]], take: list[int]) -> None:
        attached = {}
        if passed.filter.attach and self.lightcurves is not None:
            rows = passed.selection.rows.tolist()
            attached = attachments({rows[i]: passed.filter.attach for i in take}, records,
                                   self.lightcurves())
        for key, value in filtered_records(passed, take, records, int(time.time() * 1000),
                                           backfill=True, attached=attached):
            self.publisher.publish(self.topic, value, key=key)
        self.publisher.flush(60.0)

    def close(self, complete: bool) -> None:
        """The publisher belongs to whoever made it."""


def run_backfill(job: Job, jobs: JobStore, *, filters: FilterStore, catalog: ObjectCatalog,
                 watchlists: WatchlistStore, watchmaps: WatchmapStore,
                 refcats: ReferenceCatalogs, publisher: Callable[[], Publisher],
                 results_dir: Path, max_rows: int, page: int = PAGE,
                 annotations: AnnotationStore | None = None,
                 lightcurves: Callable[[], LightCurveArchive] | None = None) -> int:
    """Run a ``filter_backfill`` job; how many alerts it delivered."""
    found = filters.owned(job.target_id, job.owner)
    versions = {v["version"]: v["text"] for v in filters.history(job.target_id, job.owner)}
    if job.target_version not in versions:
        raise Superseded
    scope = scope_for(job.owner, refcats=refcats, watchlists=watchlists, watchmaps=watchmaps,
                      annotations=annotations)
    plan = compile_filter(versions[job.target_version], scope)
    at_version = replace(found, version=job.target_version)
    since, until = float(job.params["since_mjd"]), float(job.params["until_mjd"])
    deliver = job.params.get("deliver", "topic")
    if deliver not in DELIVERIES:
        msg = f"deliver {deliver!r} is not one of {', '.join(DELIVERIES)}"
        raise ValueError(msg)
    total = catalog.count_alerts_between(since, until)
    jobs.progress(job.job_id, 0, total, 0)
    sink: _FileSink | _TopicSink
    if deliver == "file":
        sink = _FileSink(result_path(results_dir, job.job_id),
                         [*ALWAYS, *(n for n, _ in plan.select if n not in ALWAYS)])
    else:
        sink = _TopicSink(publisher(), found.topic, lightcurves)
    done = delivered = 0
    after: tuple[float, int] | None = (since, -(2**63))
    complete = False
    try:
        while delivered < max_rows:
            records = archived_alerts(plan, since, until, page, catalog=catalog,
                                      watchlists=watchlists, watchmaps=watchmaps, after=after,
                                      annotations=annotations)
            if not records:
                break
            after = (records[-1]["mjd"], records[-1]["alert_id"])
            selection = run(plan, AlertBatch(records))
            take = list(range(min(int(selection.rows.size), max_rows - delivered)))
            sink.deliver(Passed(at_version, plan, selection, 0.0), records, take)
            delivered += len(take)
            done += len(records)
            jobs.progress(job.job_id, done, max(total, done), delivered)
        complete = True
    finally:
        sink.close(complete)
    if delivered >= max_rows:
        msg = f"stopped at {max_rows:,} alerts delivered, the most a backfill delivers"
        raise Stopped(msg)
    return delivered
