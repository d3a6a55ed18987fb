"""``/api/v1/jobs``: the caller's background jobs (retroactive matches) and their progress."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.auth import Authenticated
from api.dependencies import LazyStores, get_stores
from api.errors import NOT_FOUND, UNAVAILABLE
from broker.retro import Job

router = APIRouter(prefix="/api/v1", tags=["jobs"])
Stores = Annotated[LazyStores, Depends(get_stores)]


class JobOut(BaseModel):
    """A background job."""

    job_id: int
    kind: str = Field(description="watchlist_retro or watchmap_retro.")
    target_id: int = Field(description="The watchlist or watchmap it matches.")
    target_version: int
    state: str = Field(description="queued, running, done or failed.")
    done: int = Field(description="Archived objects matched so far.")
    total: int = Field(description="Archived objects to match.")
    progress: float = Field(description="done / total, 1 when done.")
    hits: int = Field(description="Hits found so far.")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(job_id=job.job_id, kind=job.kind, target_id=job.target_id,
                   target_version=job.target_version, state=job.state, done=job.done,
                   total=job.total, progress=round(job.progress, 4), hits=job.hits,
                   error=job.error, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at)


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
