"""``/api/v1/objects/{object_id}``: an object, its light curve and its cutouts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from api.auth import CallerDep
from api.dependencies import Archive
from api.errors import INVALID, NOT_FOUND, UNAVAILABLE
from api.models import (
    CatalogConeRow,
    CatalogMatches,
    CrossMatchesOut,
    DetectionOut,
    ForcedOut,
    LightCurveOut,
    ObjectLinks,
    ObjectOut,
    WatchlistMembership,
    WatchmapMembership,
)
from api.routers.annotate import annotation_out
from broker.queries import CutoutKind

router = APIRouter(prefix="/api/v1/objects", tags=["objects"])

ObjectId = Annotated[str, Path(min_length=1, max_length=64,
                               description="Rubin diaObjectId (as text) or ZTF objectId.")]


@router.get(
    "/{object_id}", response_model=ObjectOut, name="get_object",
    summary="One object",
    description="The stored object row (position, first/last detection, counts and the latest "
                "flux per band), its latest AB magnitude per band (zero point 31.4 for nJy), its "
                "context, counterparts in the reference catalogs and features (from the enrich "
                "stage) and "
                "links to its light curve and cutouts.",
    responses={**NOT_FOUND, **UNAVAILABLE},
)
def get_object(object_id: ObjectId, archive: Archive, request: Request,
               caller: CallerDep) -> ObjectOut:
    row = archive.get_object(object_id)
    links = ObjectLinks(
        self=str(request.url_for("get_object", object_id=object_id)),
        lightcurve=str(request.url_for("get_lightcurve", object_id=object_id)),
        cutouts={kind.value: str(request.url_for("get_cutout", object_id=object_id,
                                                 kind=kind.value))
                 for kind in CutoutKind},
        crossmatches=str(request.url_for("get_crossmatches", object_id=object_id)),
    )
    context, matches, features = archive.enrichment(object_id)
    out = ObjectOut.from_row(row, links, context, matches, features)
    lists, maps = archive.memberships(object_id, caller.name)
    out.watchlists = [WatchlistMembership(**m) for m in lists]
    out.watchmaps = [WatchmapMembership(**m) for m in maps]
    newest = archive.annotations(object_id)
    out.annotations = [annotation_out(a) for a in newest]
    return out


@router.get(
    "/{object_id}/lightcurve", response_model=LightCurveOut, name="get_lightcurve",
    summary="Light curve of an object",
    description="Every stored detection (with its AB magnitude) and forced measurement of the "
                "object, oldest first. Fluxes are difference-image PSF fluxes in nJy.",
    responses={**NOT_FOUND, **UNAVAILABLE},
)
def get_lightcurve(object_id: ObjectId, archive: Archive) -> LightCurveOut:
    curve = archive.lightcurve(object_id)
    return LightCurveOut(
        object_id=object_id,
        detections=[DetectionOut.from_row(row) for row in curve.detections],
        forced_photometry=[ForcedOut.from_row(row) for row in curve.forced],
    )


@router.get(
    "/{object_id}/cutouts/{kind}", name="get_cutout", response_class=Response,
    summary="A cutout of an alert of an object",
    description="The stored FITS stamp, byte for byte: `application/fits` for Rubin, "
                "`application/gzip` (gzip-compressed FITS, `.fits.gz`) for ZTF, which ships its "
                "stamps compressed. Without `source_id`, the object's latest alert (largest MJD).",
    responses={
        200: {"content": {"application/fits": {}, "application/gzip": {}},
              "description": "The cutout bytes."},
        **NOT_FOUND, **UNAVAILABLE,
    },
)
def get_cutout(
    object_id: ObjectId,
    kind: Annotated[CutoutKind, Path(description="science, template or difference.")],
    archive: Archive,
    source_id: Annotated[int | None, Query(
        ge=1, description="The alert (source id) of the object; default: its latest.")] = None,
) -> Response:
    cutout = archive.cutout(object_id, kind, source_id)
    return Response(
        content=cutout.data, media_type=cutout.media_type,
        headers={"Content-Disposition": f'inline; filename="{cutout.filename}"',
                 "X-Lanner-Source-Id": str(cutout.source_id)},
    )


#: Largest cross-match radius, arcsec: an association, not a region (cone search goes to 1 deg).
MAX_MATCH_RADIUS_ARCSEC = 600.0
#: Most rows per catalog.
MAX_MATCH_LIMIT = 1000


@router.get(
    "/{object_id}/crossmatches", response_model=CrossMatchesOut, name="get_crossmatches",
    summary="Reference-catalog neighbours of an object",
    description="For each reference catalog (`catalog`, repeatable; default every loaded one), "
                "its rows within `radius` arcseconds of the object's position, nearest first, "
                "each with every column of the catalog and its `distance_arcsec`. A catalog "
                "with no row in the radius is listed with no rows.",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def get_crossmatches(
    object_id: ObjectId,
    archive: Archive,
    radius: Annotated[float, Query(gt=0.0, le=MAX_MATCH_RADIUS_ARCSEC, allow_inf_nan=False,
                                   description="Radius in ARCSECONDS, in (0, 600].")] = 5.0,
    catalog: Annotated[list[str] | None, Query(
        max_length=32, description="Reference catalogs to search (repeat the parameter).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_MATCH_LIMIT,
                                description="Most rows per catalog.")] = 10,
) -> CrossMatchesOut:
    row, found = archive.crossmatches(object_id, radius_arcsec=radius, catalogs=catalog or [],
                                      limit=limit)
    return CrossMatchesOut(
        object_id=object_id, ra=float(row["ra"]), dec=float(row["dec"]), radius_arcsec=radius,
        matches=[CatalogMatches(catalog=name, truncated=len(rows) > limit,
                                rows=[CatalogConeRow.from_row(r) for r in rows[:limit]])
                 for name, rows in found],
    )
