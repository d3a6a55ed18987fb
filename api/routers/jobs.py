"""``/api/v1/jobs``: the caller's background jobs (retroactive matches of watchlists and
watchmaps, filters' backfills), their progress, and a file backfill's result."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from astropy.io.votable import from_table
from astropy.table import Table
from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api import votable
from api.auth import Authenticated
from api.dependencies import LazyStores, get_stores
from api.errors import NOT_FOUND, UNAVAILABLE
from api.models import ErrorOut
from broker.backfill import result_path
from broker.exceptions import NotFoundError
from broker.jobs import results_dir
from broker.retro import Job

router = APIRouter(prefix="/api/v1", tags=["jobs"])
Stores = Annotated[LazyStores, Depends(get_stores)]


class JobOut(BaseModel):
    """A background job."""

    job_id: int
    kind: str = Field(description="watchlist_retro, watchmap_retro or filter_backfill.")
    target_id: int = Field(description="The watchlist, watchmap or filter it runs.")
    target_version: int
    state: str = Field(description="queued, running, done or failed.")
    done: int = Field(description="Archived objects (a backfill: alerts) read so far.")
    total: int = Field(description="Archived objects (alerts) to read.")
    progress: float = Field(description="done / total, 1 when done.")
    hits: int = Field(description="Hits (a backfill: alerts delivered) so far.")
    error: str | None = Field(description="Why it failed, or why it stopped early.")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="A backfill's window and delivery.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(job_id=job.job_id, kind=job.kind, target_id=job.target_id,
                   target_version=job.target_version, state=job.state, done=job.done,
                   total=job.total, progress=round(job.progress, 4), hits=job.hits,
                   error=job.error, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at, params=job.params)


@router.get("/jobs", response_model=list[JobOut], summary="Your jobs",
            description="Your background jobs, newest first (the last 200).",
            responses=UNAVAILABLE)
def list_jobs(caller: Authenticated, stores: Stores) -> list[JobOut]:
    assert caller.name is not None
    return [JobOut.of(job) for job in stores.jobs.of(caller.name)]


@router.get("/jobs/{job_id}", response_model=JobOut, summary="One job",
            responses={**NOT_FOUND, **UNAVAILABLE})
def get_job(job_id: int, caller: Authenticated, stores: Stores) -> JobOut:
    return JobOut.of(stores.jobs.get(job_id, caller.name))


@router.get("/jobs/{job_id}/result", summary="A file backfill's result",
            description="The alerts a backfill delivered to a file: CSV (default) or VOTable.",
            responses={**NOT_FOUND, **UNAVAILABLE,
                       409: {"model": ErrorOut, "description": "The job has not finished."}})
def job_result(job_id: int, caller: Authenticated, stores: Stores,
               format: Annotated[Literal["csv", "votable"], Query()] = "csv",
               ) -> Response:
    job = stores.jobs.get(job_id, caller.name)
    if job.kind != "filter_backfill" or job.params.get("deliver") != "file":
        raise NotFoundError(f"job {job_id} has no result file (only a backfill to a file has)")
    if job.state != "done":
        raise HTTPException(status_code=409, detail=f"job {job_id} is {job.state}")
    path = result_path(results_dir(stores.settings), job_id)
    if not path.exists():
        raise NotFoundError(f"the result of job {job_id} is gone")
    if format == "csv":
        return FileResponse(path, media_type="text/csv",
                            filename=f"lanner-backfill-{job_id}.csv")
    table = Table.read(path, format="ascii.csv")
    return Response(votable.serialise(from_table(table)),
                    media_type="application/x-votable+xml")
