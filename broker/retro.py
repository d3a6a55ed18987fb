"""Retroactive matching: a new or changed watchlist or watchmap against the whole archive.

A job is queued (table ``jobs`` on shard 0) whenever a watchlist's cones or a watchmap's area
are made or replaced; `JobRunner` (a thread of the API process) claims queued jobs one at a
time and runs them: every object of every shard, a page at a time, is matched against the
list's cones (`broker.domain.watchlists.ConeIndex`) or the map's MOC, and each object found is
stored as a hit (``live`` false) for the detection that gave the object's position. Progress
(objects read of those the job expects to read: the archive's count, times the cover's share of
the sky when only the cells the list or map covers are read) is written after every page, so the API
and `lanner jobs show --follow` can report it. Hits are stored once whatever happens, so a job
run twice (an API process killed mid-job, its job queued again) changes nothing; a job whose
list or map changed again meanwhile stops and leaves the newer version's job to do the work.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import structlog

from broker.domain.watchlists import ConeIndex
from broker.domain.watchmaps import contains, from_text
from broker.domain.watchmaps import cover as moc_cover
from broker.exceptions import NotFoundError
from broker.storage import schema
from broker.storage.dialect import column_list
from broker.storage.shard0 import Shard0Tables, utc
from broker.storage.stores import ObjectCatalog
from broker.storage.watchlists import HitColumns, WatchlistStore
from broker.storage.watchmaps import MapHit, WatchmapStore

log = structlog.get_logger(__name__)

_COLUMNS = schema.columns("jobs")
KINDS = ("watchlist_retro", "watchmap_retro", "filter_backfill")
#: Objects read and matched per page.
PAGE = 50_000


@dataclass(frozen=True, slots=True)
class Job:
    job_id: int
    owner: str
    kind: str
    target_id: int
    target_version: int
    state: str
    done: int
    total: int
    hits: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def progress(self) -> float:
        return 1.0 if self.state == "done" else (self.done / self.total if self.total else 0.0)


def _job(row: Any) -> Job:
    v = dict(zip(_COLUMNS, row, strict=True))
    return Job(int(v["job_id"]), v["owner"], v["kind"], int(v["target_id"]),
               int(v["target_version"]), v["state"], int(v["done"]), int(v["total"]),
               int(v["hits"]), v["error"], utc(v["created_at"]),
               utc(v["started_at"]) if v["started_at"] is not None else None,
               utc(v["finished_at"]) if v["finished_at"] is not None else None,
               json.loads(v["params"]) if v["params"] else {})


class JobStore(Shard0Tables):
    """Background jobs (table ``jobs`` on shard 0)."""

    TABLES = ("jobs",)

    def queue(self, owner: str, kind: str, target_id: int, target_version: int,
              params: dict[str, Any] | None = None) -> Job:
        if kind not in KINDS:
            msg = f"job kind {kind!r} is not one of {', '.join(KINDS)}"
            raise ValueError(msg)
        job_id = secrets.randbits(53) or 1
        now = self._now()
        self._run(lambda cursor: cursor.execute(
            self.dialect.insert_ignore("jobs", _COLUMNS),
            [job_id, owner, kind, target_id, target_version, "queued", 0, 0, 0, None, now,
             None, None, json.dumps(params, sort_keys=True) if params else None]))
        return self.get(job_id, owner)

    def get(self, job_id: int, caller: str | None) -> Job:
        """A job of ``caller``'s; `NotFoundError` for any other (404)."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM jobs WHERE job_id = %s",
                           [job_id])
            return cursor.fetchone()

        row = self._run(work, write=False)
        if row is None or (caller is not None and row[1] != caller):
            msg = f"no job {job_id}"
            raise NotFoundError(msg)
        return _job(row)

    def of(self, caller: str) -> list[Job]:
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM jobs WHERE owner = %s "
                           "ORDER BY created_at DESC, job_id LIMIT 200", [caller])
            return list(cursor.fetchall())

        return [_job(r) for r in self._run(work, write=False)]

    def claim(self) -> Job | None:
        """The oldest queued job, now running (None if there is none); one claimant wins."""
        def work(cursor: Any) -> int | None:
            cursor.execute("SELECT job_id FROM jobs WHERE state = 'queued' "
                           "ORDER BY created_at, job_id LIMIT 1")
            row = cursor.fetchone()
            if row is None:
                return None
            cursor.execute("UPDATE jobs SET state = 'running', started_at = %s "
                           "WHERE job_id = %s AND state = 'queued'", [self._now(), row[0]])
            return int(row[0]) if cursor.rowcount == 1 else None

        job_id = self._run(work)
        return None if job_id is None else self.get(job_id, None)

    def progress(self, job_id: int, done: int, total: int, hits: int) -> None:
        self._run(lambda cursor: cursor.execute(
            "UPDATE jobs SET done = %s, total = %s, hits = %s WHERE job_id = %s",
            [done, total, hits, job_id]))

    def finish(self, job_id: int, state: str, error: str | None = None) -> None:
        self._run(lambda cursor: cursor.execute(
            "UPDATE jobs SET state = %s, error = %s, finished_at = %s WHERE job_id = %s",
            [state, error, self._now(), job_id]))


class Superseded(Exception):  # noqa: N818 (a signal, not an error)
    """The list, map or filter changed again while its job ran."""


class Stopped(Exception):  # noqa: N818 (a signal, not an error)
    """A job that ended early on purpose (a backfill at its most rows): done, and why."""


#: Above this share of the sky, a job reads every object (a cell filter would save little).
FULL_SCAN_SHARE = 0.8


def run_job(job: Job, jobs: JobStore, catalog: ObjectCatalog, watchlists: WatchlistStore,
            watchmaps: WatchmapStore, *, page: int = PAGE) -> int:
    """Match every archived object against the job's watchlist or watchmap; the hits found.

    Only the objects in the cells the list's cones (or the map) cover are read (the server
    picks them), unless those cover most of the sky. A page's hits are stored while the next
    page is read and matched (one store in flight at a time, waited for before the progress
    that counts it is written)."""
    match: Callable[[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray], int]
    if job.kind == "watchlist_retro":
        current = watchlists.get(job.target_id, job.owner)
        if current.version != job.target_version:
            raise Superseded
        cone_ids, _, ra, dec, radius = watchlists.cones(job.target_id)
        index = ConeIndex(ra, dec, radius)
        cover = index.cover()

        def match(ids: list[str], ra_: np.ndarray, dec_: np.ndarray, src: np.ndarray,
                  mjd: np.ndarray) -> int:
            points, cones, distance = index.match(ra_, dec_)
            return watchlists.add_hit_columns(HitColumns(
                np.full(points.size, job.target_id, dtype=np.int64), cone_ids[cones],
                src[points], [ids[p] for p in points.tolist()], distance, mjd[points],
                np.zeros(points.size, dtype=bool)))
    else:
        current_map = watchmaps.get(job.target_id, job.owner)
        if current_map.version != job.target_version:
            raise Superseded
        moc = from_text(watchmaps.moc(job.target_id))
        cover = moc_cover(moc)

        def match(ids: list[str], ra_: np.ndarray, dec_: np.ndarray, src: np.ndarray,
                  mjd: np.ndarray) -> int:
            inside = np.flatnonzero(contains(moc, ra_, dec_)).tolist()
            return watchmaps.add_hits(
                MapHit(job.target_id, int(src[p]), ids[p], float(ra_[p]), float(dec_[p]),
                       float(mjd[p]), live=False) for p in inside)
    cells = cover if cover.share <= FULL_SCAN_SHARE else None
    total = int(catalog.counts().get("objects", 0))
    if cells is not None:  # estimated: the archive's objects in the cover's share of the sky
        total = math.ceil(total * cells.share)
    done = hits = 0
    jobs.progress(job.job_id, done, total, hits)
    with ThreadPoolExecutor(1, thread_name_prefix="lanner-retro-store") as store:
        pending: Future[int] | None = None
        for shard in range(catalog.shard_count()):
            after = ""
            while True:
                rows = catalog.positions(shard, after, page, cells)
                if not rows:
                    break
                after = rows[-1][0]
                work = store.submit(
                    match, [r[0] for r in rows], np.array([r[1] for r in rows]),
                    np.array([r[2] for r in rows]), np.array([r[3] for r in rows], dtype=np.int64),
                    np.array([r[4] for r in rows]))
                if pending is not None:
                    hits += pending.result()
                    jobs.progress(job.job_id, done, max(total, done), hits)
                pending = work
                # Read: every object of the page, matched or (outside the cover) not.
                done += len(rows)
        if pending is not None:
            hits += pending.result()
    done = max(done, total)
    jobs.progress(job.job_id, done, done, hits)
    return hits


class JobRunner:
    """Runs queued jobs one at a time on a daemon thread until stopped: ``run`` does one job
    (whatever its kind) and answers how many hits it found."""

    def __init__(self, jobs: JobStore, run: Callable[[Job], int], *,
                 poll_s: float = 1.0) -> None:
        self.jobs = jobs
        self.run = run
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lanner-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self._thread.join(30)

    def run_once(self) -> Job | None:
        """Claim and run one queued job; the job as it ended, or None when none was queued."""
        job = self.jobs.claim()
        if job is None:
            return None
        started = time.monotonic()
        try:
            hits = self.run(job)
        except Stopped as exc:
            self.jobs.finish(job.job_id, "done", str(exc))
        except (Superseded, NotFoundError):
            self.jobs.finish(job.job_id, "done", "superseded: its list, map or filter changed "
                             "or went")
        except Exception as exc:  # a job must not take the runner down: record, go on
            log.error("job failed", job_id=job.job_id, kind=job.kind,
                      error=traceback.format_exception_only(exc)[-1].strip())
            self.jobs.finish(job.job_id, "failed", f"{type(exc).__name__}: {exc}"[:2000])
        else:
            self.jobs.finish(job.job_id, "done")
            log.info("job done", job_id=job.job_id, kind=job.kind, hits=hits,
                     seconds=round(time.monotonic() - started, 2))
        return self.jobs.get(job.job_id, None)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.run_once() is None:
                    self.stopping.wait(self.poll_s)
            except Exception as exc:  # the store is down: wait and try again
                log.warning("job runner waits for its store", error=str(exc))
                self.stopping.wait(5.0)
