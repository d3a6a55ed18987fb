"""IVOA Simple Cone Search 1.03 at ``/scs/{catalog}``: RA, DEC, SR in degrees, VOTable out.

Per SCS 1.03: the table has one field of each of the UCDs ``ID_MAIN``, ``POS_EQ_RA_MAIN`` and
``POS_EQ_DEC_MAIN``; ``SR=0`` answers the metadata (the fields, no rows); errors are VOTables
with ``<INFO name="Error">`` (HTTP 200, as SCS clients expect). Parameters are parsed here rather
than by FastAPI so that even a malformed request gets a VOTable error.

The optional ``VERB`` of SCS 1.03 is supported: 1 gives the id and position only, 2 (the
default) the id, position, distance and the main columns, 3 every column. A cone holding more
than `MAX_ROWS` rows answers the nearest `MAX_ROWS` and says so with
``<INFO name="QUERY_STATUS" value="OVERFLOW">`` (DALI), never a silently partial table.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api import votable
from api.dependencies import Archive
from broker.exceptions import NotFoundError, TransientError
from broker.queries import OBJECTS
from broker.storage import schema
from broker.storage.archive import OBJECT_COLUMNS as STORED_OBJECT_COLUMNS

router = APIRouter(tags=["IVOA"])

#: Largest SR, degrees (wider cones belong to TAP).
MAX_SR_DEG = 1.0
#: Most rows a cone answers.
MAX_ROWS = 10_000

#: The three fields SCS requires, in every answer (``VERB=1`` gives only these).
POSITION_COLUMNS = (
    votable.Column("id", "char", "ID_MAIN", description="Object id (Rubin diaObjectId, ZTF "
                   "objectId)."),
    votable.Column("ra", "double", "POS_EQ_RA_MAIN", "deg", "Right ascension (ICRS)."),
    votable.Column("dec", "double", "POS_EQ_DEC_MAIN", "deg", "Declination (ICRS)."),
)
DISTANCE = votable.Column("distance", "double", None, "deg", "Distance from the cone centre.")


def _felis_columns(names: tuple[str, ...]) -> tuple[votable.Column, ...]:
    """VOTable fields of object columns, as the felis schema describes them."""
    docs = schema.column_docs("objects")
    return tuple(votable.Column(n, docs[n].votable_datatype, docs[n].ucd, docs[n].unit,
                                docs[n].description) for n in names)


#: ``VERB=2`` on objects: the position, the distance and a summary of the object.
_SUMMARY = ("survey", "first_mjd", "last_mjd", "n_detections")
OBJECT_COLUMNS = (*POSITION_COLUMNS, DISTANCE, *_felis_columns(_SUMMARY))
#: ``VERB=3`` on objects: every column of the object row as well.
OBJECT_ALL_COLUMNS = (*OBJECT_COLUMNS, *_felis_columns(tuple(
    c for c in STORED_OBJECT_COLUMNS if c not in ("object_id", "ra", "dec", *_SUMMARY))))


def _answer(body: bytes) -> Response:
    return Response(content=body, media_type=votable.MEDIA_TYPE)


def _values(request: Request, name: str) -> list[str]:
    # SCS parameter names are upper case; accept any case, as most services do.
    values = [v for k, v in request.query_params.multi_items() if k.upper() == name]
    if len(values) > 1:
        raise ValueError(f"parameter {name} given {len(values)} times")
    return values


def _verbosity(request: Request) -> int:
    values = _values(request, "VERB")
    if not values:
        return 2
    if values[0].strip() not in ("1", "2", "3"):
        raise ValueError(f"VERB={values[0]!r} is not 1, 2 or 3")
    return int(values[0])


def _parameter(request: Request, name: str) -> float:
    values = _values(request, name)
    if not values:
        raise ValueError(f"missing parameter {name}")
    try:
        value = float(values[0])
    except ValueError:
        raise ValueError(f"{name}={values[0]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {values[0]}")
    return value


@router.get(
    "/scs/{catalog}", summary="IVOA Simple Cone Search 1.03",
    description="`RA`, `DEC` and `SR` in decimal degrees (ICRS); answers a VOTable. `SR=0` "
                "returns the table's fields without rows. Errors are VOTables with an "
                "`INFO name=\"Error\"` element.",
    response_class=Response,
    responses={200: {"content": {votable.MEDIA_TYPE: {}}}},
)
def simple_cone_search(catalog: str, request: Request, archive: Archive) -> Response:
    try:
        ra = _parameter(request, "RA")
        dec = _parameter(request, "DEC")
        sr = _parameter(request, "SR")
        if not 0.0 <= ra <= 360.0:
            raise ValueError(f"RA={ra} is outside [0, 360]")
        if not -90.0 <= dec <= 90.0:
            raise ValueError(f"DEC={dec} is outside [-90, 90]")
        if sr < 0.0:
            raise ValueError(f"SR={sr} is negative")
        if sr > MAX_SR_DEG:
            raise ValueError(f"SR={sr} is larger than {MAX_SR_DEG} degree (use TAP)")
        verbosity = _verbosity(request)
    except ValueError as exc:
        return _answer(votable.error(str(exc)))
    try:
        archive.check_catalog(catalog)
        # One row more than the limit tells a full cone from one that was cut.
        rows = [] if sr == 0.0 else archive.cone(ra=ra % 360.0, dec=dec, radius_arcsec=sr * 3600,
                                                 catalog=catalog, limit=MAX_ROWS + 1)
        columns = _columns(archive, catalog, verbosity)
    except NotFoundError as exc:
        return _answer(votable.error(str(exc)))
    except TransientError as exc:
        return _answer(votable.error(f"service unavailable: {exc}"))
    overflow = len(rows) > MAX_ROWS
    out = [{**r, "id": str(r["object_id" if catalog == OBJECTS else "id"]),
            "distance": r["distance_arcsec"] / 3600.0} for r in rows[:MAX_ROWS]]
    return _answer(votable.table(columns, out, name=catalog, overflow=overflow,
                                 description=f"Cone RA={ra} DEC={dec} SR={sr} on {catalog}"))


def _columns(archive: Archive, catalog: str, verbosity: int) -> tuple[votable.Column, ...]:
    if verbosity == 1:
        return POSITION_COLUMNS
    if catalog == OBJECTS:
        return OBJECT_COLUMNS if verbosity == 2 else OBJECT_ALL_COLUMNS
    # A reference catalog's columns are those of its file: 2 and 3 both give them all.
    return _catalog_columns(archive, catalog)


_DATATYPES = {"int64": "long", "float64": "double", "text": "char", "bool": "boolean"}
_UCDS = {"id": "ID_MAIN", "ra": "POS_EQ_RA_MAIN", "dec": "POS_EQ_DEC_MAIN"}


def _catalog_columns(archive: Archive, catalog: str) -> tuple[votable.Column, ...]:
    """The fields of a reference catalog: its id (as text), position, every column, distance."""
    entry = archive.describe_catalog(catalog)
    columns = []
    for name, kind in entry["columns"]:
        datatype = "char" if name == "id" else _DATATYPES.get(kind, "char")
        unit = "deg" if name in ("ra", "dec") else None
        columns.append(votable.Column(name, datatype, _UCDS.get(name), unit))
    columns.append(votable.Column("distance", "double", None, "deg",
                                  "Distance from the cone centre."))
    return tuple(columns)
