"""``/api/v1/cone``: objects around a position (JSON; the IVOA SCS flavour comes separately)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.dependencies import Archive
from api.errors import INVALID, NOT_FOUND, UNAVAILABLE
from api.models import CatalogConeRow, CatalogOut, CatalogsOut, ConeOut, ConeRow
from broker.queries import OBJECTS

router = APIRouter(prefix="/api/v1", tags=["cone search"])

#: Largest cone radius, arcsec (1 degree): wider cones belong to TAP queries.
MAX_RADIUS_ARCSEC = 3600.0
#: Most rows one cone answers.
MAX_LIMIT = 10_000


@router.get(
    "/cone", response_model=ConeOut, summary="Cone search",
    description="Rows of a catalog within `radius` arcseconds of (`ra`, `dec`), nearest first, "
                "each with its `distance_arcsec`: `catalog=objects` (the objects of the alert "
                "archive, the default) or a reference catalog (see `/api/v1/catalogs`).",
    responses={**NOT_FOUND, **INVALID, **UNAVAILABLE},
)
def cone(
    archive: Archive,
    ra: Annotated[float, Query(ge=0.0, lt=360.0, allow_inf_nan=False,
                               description="Right ascension of the centre (ICRS), degrees, "
                                           "in [0, 360).")],
    dec: Annotated[float, Query(ge=-90.0, le=90.0, allow_inf_nan=False,
                                description="Declination of the centre (ICRS), degrees, "
                                            "in [-90, 90].")],
    radius: Annotated[float, Query(gt=0.0, le=MAX_RADIUS_ARCSEC, allow_inf_nan=False,
                                   description="Radius in ARCSECONDS, in (0, 3600].")],
    catalog: Annotated[str, Query(max_length=64, description="Catalog to search.")] = "objects",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most rows to return.")] = 100,
) -> ConeOut:
    # One row more than asked tells a whole answer from one cut at the limit.
    rows = archive.cone(ra=ra, dec=dec, radius_arcsec=radius, catalog=catalog, limit=limit + 1)
    truncated = len(rows) > limit
    if catalog == OBJECTS:
        return ConeOut(rows=[ConeRow.from_row(row) for row in rows[:limit]], truncated=truncated)
    return ConeOut(rows=[CatalogConeRow.from_row(row) for row in rows[:limit]],
                   truncated=truncated)


@router.get(
    "/catalogs", response_model=CatalogsOut, summary="Catalogs",
    description="Every catalog a cone search can read: the archive's objects and the reference "
                "catalogs loaded with `lanner catalog load`.",
    responses={**UNAVAILABLE},
)
def catalogs(archive: Archive) -> CatalogsOut:
    return CatalogsOut(catalogs=[
        CatalogOut(**{**entry, "loaded_at": str(entry["loaded_at"])
                      if entry.get("loaded_at") is not None else None})
        for entry in archive.catalogs()
    ])
