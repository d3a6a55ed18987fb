"""``/api/v1/watchlists``: users' lists of cones, and the alerts found in them.

A watchlist is uploaded as CSV (``Content-Type: text/csv``: a header naming ``ra``, ``dec``,
``name`` and optionally ``radius`` in arcsec) or JSON (``application/json``: a list of
``{"ra", "dec", "name", "radius"?}``, or ``{"cones": [...]}``), with its name, visibility and
default radius as query parameters. The body is read in pieces and refused with 413 as soon as
it passes the caller's tier's upload limit (a ``Content-Length`` above it is refused before
anything is read). Every bad row is reported by line and reason (422), and nothing is kept of
an upload with one. Another user's private watchlist answers 404, never 403.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.auth import Authenticated, CallerDep
from api.dependencies import LazyStores, get_stores
from api.errors import UNAVAILABLE, RefusedError
from api.models import ErrorOut
from broker.domain.watchlists import MAX_RADIUS_ARCSEC, Cones, UploadError, parse_cones
from broker.storage.watchlists import Watchlist

router = APIRouter(prefix="/api/v1", tags=["watchlists"])
Stores = Annotated[LazyStores, Depends(get_stores)]

_Responses = dict[int | str, dict[str, Any]]
_WRITE: _Responses = {
    401: {"model": ErrorOut, "description": "No token, or a token that is not accepted."},
    404: {"model": ErrorOut, "description": "No such watchlist of yours."},
    409: {"model": ErrorOut, "description": "You have a watchlist of that name."},
    413: {"model": ErrorOut, "description": "The body is larger than your tier allows."},
    415: {"model": ErrorOut, "description": "The body is neither CSV nor JSON."},
    422: {"model": ErrorOut, "description": "Bad rows (every one listed in `errors`) or "
                                            "parameters."},
    **UNAVAILABLE}
_READ: _Responses = {404: {"model": ErrorOut, "description": "No such watchlist you may read."},
                     **UNAVAILABLE}

_FORMATS = {"text/csv": "csv", "application/csv": "csv", "application/json": "json"}


class WatchlistOut(BaseModel):
    """A watchlist (its cones apart)."""

    watchlist_id: int = Field(description="Its id.")
    owner: str
    name: str
    visibility: str = Field(description="private or public.")
    default_radius_arcsec: float
    cones: int = Field(description="How many cones it holds.")
    version: int = Field(description="1, then one more at each replacement of its cones.")
    created_at: datetime
    updated_at: datetime
    retro_job_id: int | None = Field(
        None, description="The job matching this version against the archive "
        "(`/api/v1/jobs/{id}`), in the answer that made or replaced it.")

    @classmethod
    def of(cls, found: Watchlist, job_id: int | None = None) -> WatchlistOut:
        return cls(watchlist_id=found.watchlist_id, owner=found.owner, name=found.name,
                   visibility=found.visibility,
                   default_radius_arcsec=found.default_radius_arcsec, cones=found.cones,
                   version=found.version, created_at=found.created_at,
                   updated_at=found.updated_at, retro_job_id=job_id)


class HitOut(BaseModel):
    """An alert that fell in one of the watchlist's cones."""

    cone_id: int
    cone_name: str
    alert_id: int
    object_id: str
    separation_arcsec: float = Field(description="From the cone's centre to the object.")
    mjd: float = Field(description="Time of the alert.")
    live: bool = Field(description="Found as the alert arrived (true) or in the archive later.")
    found_at: datetime


class HitsOut(BaseModel):
    """One page of hits, newest alert first."""

    hits: list[HitOut]
    next: str | None = Field(description="Pass as `after` for the next page; null at the end.")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail=f"the body is {int(declared):,} bytes, more "
                            f"than the {limit:,} your tier allows")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise HTTPException(status_code=413, detail=f"the body is more than the {limit:,} "
                                "bytes your tier allows")
        parts.append(part)
    return b"".join(parts)


async def _cones(request: Request, caller: Authenticated, default_radius: float) -> Cones:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = _FORMATS.get(kind)
    if fmt is None:
        raise HTTPException(status_code=415, detail=f"the body is {kind or 'untyped'}: send "
                            "text/csv or application/json")
    body = await read_body(request, caller.limits.max_upload_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(status_code=422, detail=f"the body is not UTF-8 text (byte "
                            f"{exc.start})") from None
    try:
        return await run_in_threadpool(parse_cones, text, fmt,
                                       default_radius_arcsec=default_radius,
                                       max_rows=caller.limits.max_watchlist_rows)
    except UploadError as exc:
        raise RefusedError(str(exc), errors=[{"line": e.line, "reason": e.reason}
                                             for e in exc.errors]) from None


_Name = Annotated[str, Query(min_length=1, max_length=64, description="The watchlist's name.")]
_Visibility = Annotated[str, Query(pattern="^(private|public)$",
                                   description="private (default) or public.")]
_Radius = Annotated[float, Query(gt=0.0, le=MAX_RADIUS_ARCSEC, allow_inf_nan=False,
                                 description="Radius of cones given without one, arcsec.")]


@router.post("/watchlists", response_model=WatchlistOut, status_code=201,
             summary="Upload a watchlist", responses=_WRITE)
async def create_watchlist(request: Request, caller: Authenticated, stores: Stores,
                           name: _Name, visibility: _Visibility = "private",
                           default_radius: _Radius = 2.0) -> WatchlistOut:
    cones = await _cones(request, caller, default_radius)
    assert caller.name is not None
    try:
        made = await run_in_threadpool(stores.watchlists.create, caller.name, name, cones,
                                       visibility=visibility,
                                       default_radius_arcsec=default_radius)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    job = await run_in_threadpool(stores.jobs.queue, caller.name, "watchlist_retro",
                                  made.watchlist_id, made.version)
    return WatchlistOut.of(made, job.job_id)


@router.put("/watchlists/{watchlist_id}", response_model=WatchlistOut,
            summary="Replace a watchlist's cones", responses=_WRITE)
async def replace_watchlist(watchlist_id: int, request: Request, caller: Authenticated,
                            stores: Stores, visibility: _Visibility | None = None,
                            default_radius: _Radius | None = None) -> WatchlistOut:
    assert caller.name is not None
    current = await run_in_threadpool(stores.watchlists.owned, watchlist_id, caller.name)
    radius = current.default_radius_arcsec if default_radius is None else default_radius
    cones = await _cones(request, caller, radius)
    replaced = await run_in_threadpool(stores.watchlists.replace, watchlist_id, caller.name,
                                       cones, visibility=visibility,
                                       default_radius_arcsec=radius)
    job = await run_in_threadpool(stores.jobs.queue, caller.name, "watchlist_retro",
                                  replaced.watchlist_id, replaced.version)
    return WatchlistOut.of(replaced, job.job_id)


@router.get("/watchlists", response_model=list[WatchlistOut], summary="Watchlists",
            description="Yours, and everyone's public ones.", responses=UNAVAILABLE)
def list_watchlists(caller: CallerDep, stores: Stores) -> list[WatchlistOut]:
    return [WatchlistOut.of(w) for w in stores.watchlists.visible(caller.name)]


@router.get("/watchlists/{watchlist_id}", response_model=WatchlistOut,
            summary="One watchlist", responses=_READ)
def get_watchlist(watchlist_id: int, caller: CallerDep, stores: Stores) -> WatchlistOut:
    return WatchlistOut.of(stores.watchlists.get(watchlist_id, caller.name))


@router.delete("/watchlists/{watchlist_id}", status_code=204, summary="Delete a watchlist",
               responses=_WRITE)
def delete_watchlist(watchlist_id: int, caller: Authenticated, stores: Stores) -> Response:
    assert caller.name is not None
    stores.watchlists.delete(watchlist_id, caller.name)
    return Response(status_code=204)


@router.get("/watchlists/{watchlist_id}/hits", response_model=HitsOut,
            summary="A watchlist's hits", responses=_READ)
def watchlist_hits(
    watchlist_id: int, caller: CallerDep, stores: Stores,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Hits per page.")] = 100,
    after: Annotated[str | None, Query(pattern=r"^-?[0-9.e+-]+,[0-9]+,-?[0-9]+$",
                                       description="`next` of the previous page.")] = None,
) -> HitsOut:
    cursor = None
    if after is not None:
        mjd, cone, alert = after.split(",")
        cursor = (float(mjd), int(cone), int(alert))
    limit = min(limit, caller.limits.max_rows)
    hits = stores.watchlists.hits(watchlist_id, caller.name, limit=limit, after=cursor)
    last = hits[-1] if len(hits) == limit else None
    following = (f"{last['mjd']!r},{last['cone_id']},{last['alert_id']}" if last else None)
    return HitsOut(hits=[HitOut(**h) for h in hits], next=following)
