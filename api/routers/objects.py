"""``/api/v1/objects/{object_id}``: an object, its light curve and its cutouts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from api.dependencies import Archive
from api.errors import NOT_FOUND, UNAVAILABLE
from api.models import DetectionOut, ForcedOut, LightCurveOut, ObjectLinks, ObjectOut
from api.services import CutoutKind

router = APIRouter(prefix="/api/v1/objects", tags=["objects"])

ObjectId = Annotated[str, Path(min_length=1, max_length=64,
                               description="Rubin diaObjectId (as text) or ZTF objectId.")]


@router.get(
    "/{object_id}", response_model=ObjectOut, name="get_object",
    summary="One object",
    description="The stored object row (position, first/last detection, counts and the latest "
                "flux per band), its latest AB magnitude per band (zero point 31.4 for nJy) and "
                "links to its light curve and cutouts.",
    responses={**NOT_FOUND, **UNAVAILABLE},
)
def get_object(object_id: ObjectId, archive: Archive, request: Request) -> ObjectOut:
    row = archive.get_object(object_id)
    links = ObjectLinks(
        self=str(request.url_for("get_object", object_id=object_id)),
        lightcurve=str(request.url_for("get_lightcurve", object_id=object_id)),
        cutouts={kind.value: str(request.url_for("get_cutout", object_id=object_id,
                                                 kind=kind.value))
                 for kind in CutoutKind},
    )
    return ObjectOut.from_row(row, links)


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
    cutout = archive.cutout(object_id, kind.value, source_id)
    return Response(
        content=cutout.data, media_type=cutout.media_type,
        headers={"Content-Disposition": f'inline; filename="{cutout.filename}"',
                 "X-Lanner-Source-Id": str(cutout.source_id)},
    )
