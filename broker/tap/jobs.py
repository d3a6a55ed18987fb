"""Asynchronous TAP queries: UWS 1.1 jobs (table ``tap_jobs`` on shard 0) and the workers of
the API process that run them.

A job is made PENDING (or QUEUED when made with ``PHASE=RUN``), holds its query and
parameters, and belongs to the caller that made it (``user:NAME``, or ``anon:ADDRESS``): no one
else can see it. Queued jobs are claimed by `TapRunner`, oldest first, by any API process with
workers (``tap_workers``), at most ``tap_jobs_per_user`` of one owner at once; the claim is one
conditional UPDATE, so two processes never run the same job. The result is written to a file
under the state directory (``tap/results/<job_id>``), named in the row once complete: a job
survives the restart of its API process, and its result can be read from any process sharing
that directory.

A running job's process writes ``heartbeat_at`` every few seconds; a job whose process went
quiet (killed, or its machine gone) for `STALE_S` is queued again by any runner, and run again
from the start (a query writes nothing, so running it twice is harmless). Abort (or delete)
marks the job ABORTED (or removes it) at once; a query already running goes on until it ends
or reaches its time limit (``executionDuration``, enforced by each database), and its result
is then thrown away. Jobs past their destruction time are deleted with their files.

Why one file of about 500 lines: the store (`TapJobStore`), the files a job keeps and the
runner (`TapRunner`) are one protocol: the phases the store's conditional updates allow are
the runner's whole contract, and reading them apart would hide it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from broker.exceptions import CatalogReloadedError, NotFoundError, StatementTimeoutError
from broker.storage import schema
from broker.storage.dialect import column_list, marks
from broker.storage.shard0 import Shard0Tables, utc
from broker.tap.adql import LANGUAGES, ADQLError, check
from broker.tap.execute import Engine
from broker.tap.output import MEDIA, encode, writer_for
from broker.tap.upload import read as read_uploads

log = structlog.get_logger(__name__)

_COLUMNS = schema.columns("tap_jobs")
#: The phases a job of this service takes (UWS 1.1 defines also UNKNOWN, HELD, SUSPENDED and
#: ARCHIVED, which it never uses).
PHASES = ("PENDING", "QUEUED", "EXECUTING", "COMPLETED", "ERROR", "ABORTED")
#: Phases in which a job may still change by itself (WAIT blocks only in these).
ACTIVE = ("PENDING", "QUEUED", "EXECUTING")
#: A running job whose process has not written its heartbeat for this long is queued again.
STALE_S = 30.0
HEARTBEAT_S = 5.0


def new_job_id() -> str:
    return secrets.token_hex(8)


def results_dir(state_dir: Path) -> Path:
    """Where the jobs' results are written: shared by every API process of a deployment."""
    return state_dir / "tap" / "results"


def uploads_dir(state_dir: Path, job_id: str) -> Path:
    """Where a job's uploaded tables are kept until it is deleted, one file per part."""
    return state_dir / "tap" / "uploads" / job_id


def keep_uploads(state_dir: Path, job_id: str, parts: dict[str, bytes]) -> None:
    folder = uploads_dir(state_dir, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    for index, (_, body) in enumerate(sorted(parts.items())):
        # Part names are the caller's: files are numbered, the names kept in a list.
        (folder / f"{index}.part").write_bytes(body)
    (folder / "names.json").write_text(json.dumps(sorted(parts)), encoding="utf-8")


def kept_uploads(state_dir: Path, job_id: str) -> dict[str, bytes]:
    folder = uploads_dir(state_dir, job_id)
    if not folder.exists():
        return {}
    names = json.loads((folder / "names.json").read_text(encoding="utf-8"))
    return {name: (folder / f"{i}.part").read_bytes() for i, name in enumerate(names)}


def forget(state_dir: Path, job_id: str) -> None:
    """Delete a job's files: its result and its uploads."""
    (results_dir(state_dir) / job_id).unlink(missing_ok=True)
    shutil.rmtree(uploads_dir(state_dir, job_id), ignore_errors=True)


class BusyError(Exception):
    """The queue is full: try again later (503 with Retry-After)."""

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"the service has {queued} queries waiting, its most: try again in "
                         f"{retry_after_s} s")
        self.retry_after_s = retry_after_s


class PhaseError(ValueError):
    """A request the job's phase does not allow (parameters of a job no longer PENDING)."""


@dataclass(frozen=True, slots=True)
class TapJob:
    job_id: str
    owner: str
    run_id: str | None
    phase: str
    lang: str
    query: str
    response_format: str
    maxrec: int
    execution_duration: int
    destruction: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    result_rows: int | None
    overflow: bool | None
    result_type: str | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, str]:
        """The job's parameters as UWS lists them (names as TAP spells them)."""
        out = {"LANG": self.lang, "QUERY": self.query, "RESPONSEFORMAT": self.response_format,
               "MAXREC": str(self.maxrec)}
        if self.run_id:
            out["RUNID"] = self.run_id
        out.update({k.upper(): str(v) for k, v in self.params.items()})
        return out


def _job(row: Sequence[Any]) -> TapJob:
    v = dict(zip(_COLUMNS, row, strict=True))
    return TapJob(
        v["job_id"], v["owner"], v["run_id"], v["phase"], v["lang"], v["query"],
        v["response_format"], int(v["maxrec"]), int(v["execution_duration"]),
        utc(v["destruction"]), utc(v["created_at"]),
        utc(v["started_at"]) if v["started_at"] is not None else None,
        utc(v["finished_at"]) if v["finished_at"] is not None else None,
        v["error"], int(v["result_rows"]) if v["result_rows"] is not None else None,
        bool(v["overflow"]) if v["overflow"] is not None else None, v["result_type"],
        json.loads(v["params"]) if v["params"] else {})


class TapJobStore(Shard0Tables):
    """The asynchronous TAP jobs (table ``tap_jobs`` on shard 0)."""

    TABLES = ("tap_jobs",)

    def create(self, owner: str, *, lang: str, query: str, response_format: str, maxrec: int,
               execution_duration: int, retention: timedelta, run_id: str | None = None,
               params: dict[str, Any] | None = None, queue: int | None = None,
               job_id: str | None = None) -> TapJob:
        """A new job (``job_id``, or a new one), PENDING, or QUEUED if ``queue`` (the most
        jobs the queue may hold) is given: `BusyError` when the queue holds that many."""
        now = self.clock()
        job_id = job_id or new_job_id()
        phase = "PENDING" if queue is None else "QUEUED"
        values = {
            "job_id": job_id, "owner": owner, "run_id": run_id, "phase": phase, "lang": lang,
            "query": query, "response_format": response_format, "maxrec": maxrec,
            "params": json.dumps(params, sort_keys=True) if params else None,
            "execution_duration": execution_duration,
            "destruction": self.dialect.time_value(now + retention),
            "created_at": self.dialect.time_value(now), "started_at": None,
            "finished_at": None, "heartbeat_at": None, "error": None, "result_rows": None,
            "overflow": None, "result_type": None}

        def work(cursor: Any) -> None:
            if queue is not None:
                _refuse_if_full(cursor, queue)
            cursor.execute(f"INSERT INTO tap_jobs ({column_list(_COLUMNS)}) "
                           f"VALUES ({marks(len(_COLUMNS))})", [values[c] for c in _COLUMNS])

        self._run(work)
        return self.get(job_id, owner)

    def get(self, job_id: str, owner: str | None) -> TapJob:
        """A job of ``owner``'s (any owner's for None); `NotFoundError` for any other."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM tap_jobs WHERE job_id = %s",
                           [job_id])
            return cursor.fetchone()

        row = self._run(work, write=False)
        if row is None or (owner is not None and row[1] != owner):
            msg = f"no job {job_id}"
            raise NotFoundError(msg)
        return _job(row)

    def of(self, owner: str, *, phases: Sequence[str] = (), after: datetime | None = None,
           last: int | None = None) -> list[TapJob]:
        """``owner``'s jobs, oldest first: only in ``phases`` (if any), made after ``after``
        (if given), the ``last`` most recent (if given; at most 1,000 in any case)."""
        where, args = ["owner = %s"], [owner]
        if phases:
            where.append(f"phase IN ({marks(len(phases))})")
            args.extend(phases)
        if after is not None:
            where.append("created_at > %s")
            args.append(self.dialect.time_value(after))
        take = min(last, 1000) if last is not None else 1000

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM tap_jobs "
                           f"WHERE {' AND '.join(where)} ORDER BY created_at DESC, job_id "
                           f"LIMIT {int(take)}", args)
            return list(cursor.fetchall())

        return [_job(r) for r in reversed(self._run(work, write=False))]

    def run(self, job_id: str, owner: str, queue: int) -> TapJob:
        """PHASE=RUN: a PENDING job is queued (`BusyError` if the queue is full); a job in any
        other phase is left as it is (UWS: RUN is ignored once the job has left PENDING)."""
        def work(cursor: Any) -> None:
            cursor.execute("SELECT phase FROM tap_jobs WHERE job_id = %s AND owner = %s",
                           [job_id, owner])
            row = cursor.fetchone()
            if row is None or row[0] != "PENDING":
                return
            _refuse_if_full(cursor, queue)
            cursor.execute("UPDATE tap_jobs SET phase = 'QUEUED' WHERE job_id = %s "
                           "AND phase = 'PENDING'", [job_id])

        self._run(work)
        return self.get(job_id, owner)

    def abort(self, job_id: str, owner: str) -> TapJob:
        """PHASE=ABORT: a job not yet ended ends ABORTED; an ended one is left as it is."""
        self.get(job_id, owner)
        self._run(lambda cursor: cursor.execute(
            "UPDATE tap_jobs SET phase = 'ABORTED', finished_at = %s WHERE job_id = %s "
            "AND phase IN ('PENDING', 'QUEUED', 'EXECUTING')", [self._now(), job_id]))
        return self.get(job_id, owner)

    def update(self, job_id: str, owner: str, **values: Any) -> TapJob:
        """Change a PENDING job's parameters (columns of ``tap_jobs``); `PhaseError` once it
        has left PENDING."""
        unknown = set(values) - {"lang", "query", "response_format", "maxrec", "run_id",
                                 "params"}
        if unknown:
            raise ValueError(f"not a job parameter: {', '.join(sorted(unknown))}")
        job = self.get(job_id, owner)
        if not values:
            return job
        if "params" in values:
            values["params"] = json.dumps(values["params"], sort_keys=True) \
                if values["params"] else None
        sets = ", ".join(f"{k} = %s" for k in values)

        def work(cursor: Any) -> int:
            cursor.execute(f"UPDATE tap_jobs SET {sets} WHERE job_id = %s AND phase = 'PENDING'",
                           [*values.values(), job_id])
            return int(cursor.rowcount)

        if self._run(work) != 1:
            msg = f"job {job_id} is {job.phase}: only a PENDING job's parameters may change"
            raise PhaseError(msg)
        return self.get(job_id, owner)

    def set_times(self, job_id: str, owner: str, *, destruction: datetime | None = None,
                  execution_duration: int | None = None) -> TapJob:
        """A new destruction time or execution duration (the caller has bounded them)."""
        job = self.get(job_id, owner)
        if destruction is not None:
            self._run(lambda cursor: cursor.execute(
                "UPDATE tap_jobs SET destruction = %s WHERE job_id = %s",
                [self.dialect.time_value(destruction), job_id]))
        if execution_duration is not None:
            if job.phase not in ("PENDING", "QUEUED"):
                msg = f"job {job_id} is {job.phase}: its execution duration is fixed"
                raise PhaseError(msg)
            self._run(lambda cursor: cursor.execute(
                "UPDATE tap_jobs SET execution_duration = %s WHERE job_id = %s",
                [execution_duration, job_id]))
        return self.get(job_id, owner)

    def delete(self, job_id: str, owner: str | None) -> TapJob:
        """Delete a job (`NotFoundError` if it is not ``owner``'s); the job as it was."""
        job = self.get(job_id, owner)
        self._run(lambda cursor: cursor.execute("DELETE FROM tap_jobs WHERE job_id = %s",
                                                [job_id]))
        return job

    # -- the runners' side

    def claim(self, per_owner: int) -> TapJob | None:
        """The oldest queued job whose owner has fewer than ``per_owner`` executing, now
        EXECUTING (None if there is none); one claimant wins. The look is a plain read: an
        idle runner writes nothing (shard 0 is a SQLite file in the embedded mode)."""
        def look(cursor: Any) -> tuple | None:
            cursor.execute(
                "SELECT q.job_id, q.owner FROM tap_jobs q WHERE q.phase = 'QUEUED' AND "
                "(SELECT COUNT(*) FROM tap_jobs e WHERE e.owner = q.owner "
                "AND e.phase = 'EXECUTING') < %s ORDER BY q.created_at, q.job_id LIMIT 1",
                [per_owner])
            return cursor.fetchone()

        found = self._run(look, write=False)
        if found is None:
            return None

        def take(cursor: Any) -> bool:
            cursor.execute("SELECT COUNT(*) FROM tap_jobs WHERE owner = %s AND "
                           "phase = 'EXECUTING'", [found[1]])
            if int(cursor.fetchone()[0]) >= per_owner:
                return False  # another runner took one of the owner's meanwhile
            now = self._now()
            cursor.execute("UPDATE tap_jobs SET phase = 'EXECUTING', started_at = %s, "
                           "heartbeat_at = %s WHERE job_id = %s AND phase = 'QUEUED'",
                           [now, now, found[0]])
            return cursor.rowcount == 1

        return self.get(str(found[0]), None) if self._run(take) else None

    def heartbeat(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._run(lambda cursor: cursor.execute(
                f"UPDATE tap_jobs SET heartbeat_at = %s WHERE phase = 'EXECUTING' AND "
                f"job_id IN ({marks(len(job_ids))})", [self._now(), *job_ids]))

    def requeue_stale(self, stale_s: float = STALE_S) -> int:
        """Queue again the executing jobs whose process went quiet; how many."""
        before = self.dialect.time_value(self.clock() - timedelta(seconds=stale_s))

        def look(cursor: Any) -> int:
            cursor.execute("SELECT COUNT(*) FROM tap_jobs WHERE phase = 'EXECUTING' AND "
                           "heartbeat_at < %s", [before])
            return int(cursor.fetchone()[0])

        if not self._run(look, write=False):
            return 0

        def work(cursor: Any) -> int:
            cursor.execute("UPDATE tap_jobs SET phase = 'QUEUED', started_at = NULL WHERE "
                           "phase = 'EXECUTING' AND heartbeat_at < %s", [before])
            return int(cursor.rowcount)

        return self._run(work)

    def finish(self, job_id: str, phase: str, *, error: str | None = None,
               rows: int | None = None, overflow: bool | None = None,
               result_type: str | None = None) -> bool:
        """End an EXECUTING job; False if it had left EXECUTING (aborted, deleted, requeued)."""
        def work(cursor: Any) -> int:
            cursor.execute(
                "UPDATE tap_jobs SET phase = %s, error = %s, result_rows = %s, overflow = %s, "
                "result_type = %s, finished_at = %s WHERE job_id = %s AND phase = 'EXECUTING'",
                [phase, error, rows, overflow, result_type, self._now(), job_id])
            return int(cursor.rowcount)

        return self._run(work) == 1

    def expired(self) -> list[str]:
        """The jobs past their destruction time."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT job_id FROM tap_jobs WHERE destruction < %s LIMIT 1000",
                           [self._now()])
            return list(cursor.fetchall())

        return [str(r[0]) for r in self._run(work, write=False)]


def _refuse_if_full(cursor: Any, queue: int) -> None:
    cursor.execute("SELECT COUNT(*) FROM tap_jobs WHERE phase = 'QUEUED'")
    queued = int(cursor.fetchone()[0])
    if queued >= queue:
        raise BusyError(queued, retry_after_s=30)


class TapRunner:
    """Runs queued TAP jobs on ``workers`` threads until stopped, writes their results under
    ``results``, requeues stale jobs and deletes expired ones. ``jobs`` and ``engine`` give the
    store and the engine (made on first use)."""

    def __init__(self, jobs: Callable[[], TapJobStore], engine: Callable[[], Engine],
                 results: Path, *, workers: int, per_owner: int, poll_s: float = 1.0) -> None:
        self._jobs = jobs
        self.engine = engine
        self.results = results
        self.workers = workers
        self.per_owner = per_owner
        self.poll_s = poll_s
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(workers, 1), thread_name_prefix="lanner-tap-job")
        self._thread = threading.Thread(target=self._loop, name="lanner-tap-jobs", daemon=True)

    def start(self) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self._thread.join(30)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def jobs(self) -> TapJobStore:
        """The store (connected on first use: a runner starts while shard 0 is down)."""
        return self._jobs()

    def result_path(self, job_id: str) -> Path:
        return self.results / job_id

    def _loop(self) -> None:
        beat = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - beat > HEARTBEAT_S:
                    beat = time.monotonic()
                    self._housekeeping()
                claimed = False
                while self._free() and not self.stopping.is_set():
                    job = self.jobs.claim(self.per_owner)
                    if job is None:
                        break
                    claimed = True
                    with self._lock:
                        self._running.add(job.job_id)
                    self._pool.submit(self._execute, job)
                if not claimed:
                    self.wake.wait(self.poll_s)
                    self.wake.clear()
            except Exception as exc:  # the store is down: wait and try again
                log.warning("TAP job runner waits for its store", error=str(exc))
                self.stopping.wait(5.0)

    def _free(self) -> bool:
        with self._lock:
            return len(self._running) < self.workers

    def _housekeeping(self) -> None:
        with self._lock:
            running = list(self._running)
        self.jobs.heartbeat(running)
        requeued = self.jobs.requeue_stale()
        if requeued:
            log.info("TAP jobs queued again: their process went quiet", jobs=requeued)
        for job_id in self.jobs.expired():
            with contextlib.suppress(NotFoundError):
                self.jobs.delete(job_id, None)
            forget(self.results.parent.parent, job_id)

    def _execute(self, job: TapJob) -> None:
        started = time.monotonic()
        path = self.result_path(job.job_id)
        partial = path.with_name(f".{job.job_id}.{os.getpid()}.part")
        try:
            if job.lang.upper() not in LANGUAGES:
                raise ADQLError(f"LANG={job.lang} is not supported: use ADQL")
            engine = self.engine()
            uploads = []
            if job.params.get("upload"):  # checked against the owner's limit when made
                uploads = read_uploads(job.params["upload"],
                                       kept_uploads(self.results.parent.parent, job.job_id),
                                       max_bytes=2**62)
            described = engine.tap.with_tables(u.table for u in uploads) if uploads \
                else engine.tap
            checked = check(job.query, described)
            answer = engine.run(checked, job.maxrec, seconds=float(job.execution_duration),
                                uploads=uploads)
            writer = writer_for(job.response_format)
            with partial.open("wb") as out:
                for block in encode(answer, writer):
                    out.write(block)
            os.replace(partial, path)
            if not self.jobs.finish(job.job_id, "COMPLETED", rows=answer.table.num_rows,
                                    overflow=answer.overflow, result_type=MEDIA[writer]):
                path.unlink(missing_ok=True)  # aborted or deleted meanwhile
            log.info("TAP job done", job_id=job.job_id, rows=answer.table.num_rows,
                     seconds=round(time.monotonic() - started, 3))
        except (ADQLError, StatementTimeoutError, ValueError) as exc:
            self.jobs.finish(job.job_id, "ERROR", error=str(exc))
        except CatalogReloadedError as exc:
            self.jobs.finish(job.job_id, "ERROR", error=f"{exc}: the catalog was reloaded "
                             "while the query read it; submit the job again")
        except Exception as exc:  # a job must not take its worker down: record, go on
            log.error("TAP job failed", job_id=job.job_id,
                      error=traceback.format_exception_only(exc)[-1].strip())
            with contextlib.suppress(Exception):
                self.jobs.finish(job.job_id, "ERROR",
                                 error=f"the query failed: {type(exc).__name__}: {exc}"[:2000])
        finally:
            partial.unlink(missing_ok=True)
            with self._lock:
                self._running.discard(job.job_id)
            self.wake.set()
