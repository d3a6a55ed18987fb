"""``/api/v1/watchmaps``: users' sky areas (MOCs), and the alerts found in them.

A watchmap is uploaded as a MOC (``kind=moc``: FITS as ``application/fits``, JSON as
``application/json``, ASCII as ``text/plain``) or as a HEALPix probability skymap
(``kind=skymap``, FITS, multi-order or flat) with the credible level whose region is kept
(``credible_level``, in (0, 1], 0.9 by default). Bodies are read as for watchlists (413 past the
tier's upload limit), and another user's private watchmap answers 404 on every route.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from mocpy import MOC
from pydantic import BaseModel, Field

from api.auth import Authenticated, CallerDep
from api.dependencies import LazyStores, get_stores
from api.errors import UNAVAILABLE
from api.models import ErrorOut
from api.routers.watchlists import read_body
from broker.domain.watchmaps import WatchmapError, moc_from_skymap, parse_moc
from broker.storage.watchmaps import Watchmap

router = APIRouter(prefix="/api/v1", tags=["watchmaps"])
Stores = Annotated[LazyStores, Depends(get_stores)]

_Responses = dict[int | str, dict[str, Any]]
_WRITE: _Responses = {
    401: {"model": ErrorOut, "description": "No token, or a token that is not accepted."},
    404: {"model": ErrorOut, "description": "No such watchmap of yours."},
    409: {"model": ErrorOut, "description": "You have a watchmap of that name."},
    413: {"model": ErrorOut, "description": "The body is larger than your tier allows."},
    415: {"model": ErrorOut, "description": "A content type the kind does not take."},
    422: {"model": ErrorOut, "description": "A MOC or skymap that does not parse, or a bad "
                                            "parameter."},
    **UNAVAILABLE}
_READ: _Responses = {404: {"model": ErrorOut, "description": "No such watchmap you may read."},
                     **UNAVAILABLE}

_MOC_FORMATS = {"application/fits": "fits", "image/fits": "fits",
                "application/octet-stream": "fits", "application/json": "json",
                "text/plain": "ascii"}


class WatchmapOut(BaseModel):
    """A watchmap."""

    watchmap_id: int
    owner: str
    name: str
    visibility: str = Field(description="private or public.")
    source: str = Field(description="moc or skymap.")
    credible_level: float | None = Field(description="For a skymap, the share of its "
                                                     "probability the area holds.")
    area_sq_deg: float = Field(description="The area, square degrees.")
    version: int
    created_at: datetime
    updated_at: datetime
    moc: str | None = Field(None, description="The MOC (ASCII), with `moc=true`.")
    retro_job_id: int | None = Field(
        None, description="The job matching this version against the archive "
        "(`/api/v1/jobs/{id}`), in the answer that made or replaced it.")

    @classmethod
    def of(cls, found: Watchmap, moc: str | None = None,
           job_id: int | None = None) -> WatchmapOut:
        return cls(watchmap_id=found.watchmap_id, owner=found.owner, name=found.name,
                   visibility=found.visibility, source=found.source,
                   credible_level=found.credible_level, area_sq_deg=found.area_sq_deg,
                   version=found.version, created_at=found.created_at,
                   updated_at=found.updated_at, moc=moc, retro_job_id=job_id)


class MapHitOut(BaseModel):
    """An alert whose object lay in the watchmap."""

    alert_id: int
    object_id: str
    ra: float
    dec: float
    mjd: float
    live: bool
    found_at: datetime


class MapHitsOut(BaseModel):
    """One page of hits, newest alert first."""

    hits: list[MapHitOut]
    next: str | None = Field(description="Pass as `after` for the next page; null at the end.")


_Kind = Annotated[str, Query(pattern="^(moc|skymap)$", description="moc or skymap.")]
_Level = Annotated[float, Query(gt=0.0, le=1.0, allow_inf_nan=False,
                                description="For a skymap: the credible level, in (0, 1].")]
_Visibility = Annotated[str, Query(pattern="^(private|public)$",
                                   description="private (default) or public.")]


async def _area(request: Request, caller: Authenticated, kind: str,
                level: float) -> tuple[MOC, float | None]:
    content = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fmt = _MOC_FORMATS.get(content)
    if fmt is None or (kind == "skymap" and fmt != "fits"):
        wanted = ("application/fits" if kind == "skymap"
                  else "application/fits, application/json or text/plain")
        raise HTTPException(status_code=415, detail=f"a {kind} is sent as {wanted}, not "
                            f"{content or 'untyped'}")
    body = await read_body(request, caller.limits.max_upload_bytes)
    try:
        if kind == "skymap":
            return await run_in_threadpool(moc_from_skymap, body, level), level
        return await run_in_threadpool(parse_moc, body, fmt), None
    except WatchmapError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


@router.post("/watchmaps", response_model=WatchmapOut, status_code=201,
             summary="Upload a watchmap", responses=_WRITE)
async def create_watchmap(
        request: Request, caller: Authenticated, stores: Stores,
        name: Annotated[str, Query(min_length=1, max_length=64)], kind: _Kind = "moc",
        credible_level: _Level = 0.9, visibility: _Visibility = "private") -> WatchmapOut:
    moc, level = await _area(request, caller, kind, credible_level)
    assert caller.name is not None
    try:
        made = await run_in_threadpool(stores.watchmaps.create, caller.name, name, moc,
                                       source=kind, credible_level=level,
                                       visibility=visibility)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    job = await run_in_threadpool(stores.jobs.queue, caller.name, "watchmap_retro",
                                  made.watchmap_id, made.version)
    return WatchmapOut.of(made, job_id=job.job_id)


@router.put("/watchmaps/{watchmap_id}", response_model=WatchmapOut,
            summary="Replace a watchmap's area", responses=_WRITE)
async def replace_watchmap(watchmap_id: int, request: Request, caller: Authenticated,
                           stores: Stores, kind: _Kind = "moc", credible_level: _Level = 0.9,
                           visibility: _Visibility | None = None) -> WatchmapOut:
    assert caller.name is not None
    # Owned, checked before the body is read: nobody else's upload is parsed.
    await run_in_threadpool(stores.watchmaps.owned, watchmap_id, caller.name)
    moc, level = await _area(request, caller, kind, credible_level)
    replaced = await run_in_threadpool(stores.watchmaps.replace, watchmap_id, caller.name, moc,
                                       source=kind, credible_level=level,
                                       visibility=visibility)
    job = await run_in_threadpool(stores.jobs.queue, caller.name, "watchmap_retro",
                                  replaced.watchmap_id, replaced.version)
    return WatchmapOut.of(replaced, job_id=job.job_id)


@router.get("/watchmaps", response_model=list[WatchmapOut], summary="Watchmaps",
            description="Yours, and everyone's public ones.", responses=UNAVAILABLE)
def list_watchmaps(caller: CallerDep, stores: Stores) -> list[WatchmapOut]:
    return [WatchmapOut.of(m) for m in stores.watchmaps.visible(caller.name)]


@router.get("/watchmaps/{watchmap_id}", response_model=WatchmapOut, summary="One watchmap",
            responses=_READ)
def get_watchmap(watchmap_id: int, caller: CallerDep, stores: Stores,
                 moc: Annotated[bool, Query(description="Include the MOC.")] = False,
                 ) -> WatchmapOut:
    found = stores.watchmaps.get(watchmap_id, caller.name)
    return WatchmapOut.of(found, stores.watchmaps.moc(watchmap_id) if moc else None)


@router.delete("/watchmaps/{watchmap_id}", status_code=204, summary="Delete a watchmap",
               responses=_WRITE)
def delete_watchmap(watchmap_id: int, caller: Authenticated, stores: Stores) -> Response:
    assert caller.name is not None
    stores.watchmaps.delete(watchmap_id, caller.name)
    return Response(status_code=204)


@router.get("/watchmaps/{watchmap_id}/hits", response_model=MapHitsOut,
            summary="A watchmap's hits", responses=_READ)
def watchmap_hits(
    watchmap_id: int, caller: CallerDep, stores: Stores,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Hits per page.")] = 100,
    after: Annotated[str | None, Query(pattern=r"^-?[0-9.e+-]+,-?[0-9]+$",
                                       description="`next` of the previous page.")] = None,
) -> MapHitsOut:
    cursor = None
    if after is not None:
        mjd, alert = after.split(",")
        cursor = (float(mjd), int(alert))
    limit = min(limit, caller.limits.max_rows)
    hits = stores.watchmaps.hits(watchmap_id, caller.name, limit=limit, after=cursor)
    last = hits[-1] if len(hits) == limit else None
    return MapHitsOut(hits=[MapHitOut(**h) for h in hits],
                      next=f"{last['mjd']!r},{last['alert_id']}" if last else None)
