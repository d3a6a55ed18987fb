"""IVOA TAP 1.1 at ``/tap``: synchronous ADQL queries, and the VOSI resources that describe
the service (``/tap/capabilities``, ``/tap/availability``, ``/tap/tables``).

Parameters are read here, not by FastAPI: DALI makes their names case-insensitive and lets
them come in the query string or a form body, and even a malformed request must get a VOTable
error document (``QUERY_STATUS`` ``ERROR``, HTTP 400). A query is checked
(`broker.tap.adql.check`), run (`broker.tap.execute.Engine`) in the thread pool, and its rows
stream out as a BINARY2 VOTable (`broker.votable`, the default), TABLEDATA, CSV or TSV.

MAXREC: a caller's tier gives the most rows an answer holds (anonymous callers and users
10,000; docs/api.md): that is the default and the hard limit; an answer cut there says
``OVERFLOW``. Asynchronous queries (UWS) are not here yet.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Annotated
from xml.sax.saxutils import escape, quoteattr

import pyarrow as pa
import pyarrow.csv as pacsv
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from api.auth import CallerDep
from api.dependencies import LazyStores, get_stores
from broker.exceptions import TransientError
from broker.tap.adql import ADQLError, check
from broker.tap.execute import Answer
from broker.votable import binary2, tabledata

router = APIRouter(prefix="/tap", tags=["IVOA"])
Stores = Annotated[LazyStores, Depends(get_stores)]

VOTABLE = "application/x-votable+xml"
#: RESPONSEFORMAT values (and their MIME types) → writer name.
FORMATS = {"votable": "binary2", VOTABLE: "binary2", "text/xml": "binary2",
           f"{VOTABLE};serialization=binary2": "binary2",
           f"{VOTABLE};serialization=tabledata": "tabledata", "votable/td": "tabledata",
           "csv": "csv", "text/csv": "csv", "text/csv;header=present": "csv",
           "tsv": "tsv", "text/tab-separated-values": "tsv"}
_MEDIA = {"binary2": VOTABLE, "tabledata": VOTABLE, "csv": "text/csv;header=present",
          "tsv": "text/tab-separated-values"}


class _RefusedError(Exception):
    """A request DALI says to answer with an error document."""


async def _params(request: Request) -> dict[str, str]:
    """The request's parameters, names lower-cased (DALI), from the query and a form body."""
    params = {k.lower(): v for k, v in request.query_params.items()}
    if request.method == "POST":
        form = await request.form()
        for key, value in form.multi_items():
            if isinstance(value, str):
                params[key.lower()] = value
    return params


def _error(message: str, status: int = 400) -> Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n'
            '<RESOURCE type="results">\n<INFO name="QUERY_STATUS" value="ERROR">'
            f"{escape(message)}</INFO>\n</RESOURCE>\n</VOTABLE>\n")
    return Response(body, status_code=status, media_type=VOTABLE)


def _maxrec(params: dict[str, str], hard: int) -> int:
    raw = params.get("maxrec")
    if raw is None or raw == "":
        return hard
    try:
        value = int(raw)
    except ValueError:
        raise _RefusedError(f"MAXREC must be a whole number, not {raw!r}") from None
    if value < 0:
        raise _RefusedError("MAXREC must not be negative")
    return min(value, hard)


def _format(params: dict[str, str]) -> str:
    wanted = (params.get("responseformat") or params.get("format") or "votable").strip()
    writer = FORMATS.get(wanted.lower().replace(" ", ""))
    if writer is None:
        raise _RefusedError(f"RESPONSEFORMAT {wanted!r} is not one of votable, csv, tsv "
                       f"(or {', '.join(sorted(k for k in FORMATS if '/' in k))})")
    return writer


def _rows(answer: Answer, writer: str) -> Iterator[bytes]:
    status = [("QUERY_STATUS", "OK")]
    trailer = [("QUERY_STATUS", "OVERFLOW")] if answer.overflow else []
    batches = answer.table.to_batches(max_chunksize=65_536)
    if writer == "binary2":
        yield from binary2(answer.fields, batches, infos=status, trailer=trailer)
    elif writer == "tabledata":
        yield from tabledata(answer.fields, batches, infos=status, trailer=trailer)
    else:
        buffer = io.BytesIO()
        options = pacsv.WriteOptions(delimiter="\t" if writer == "tsv" else ",")
        table = answer.table.rename_columns([f.name for f in answer.fields])
        pacsv.write_csv(table if table.num_columns else pa.table({}), buffer, options)
        yield buffer.getvalue()


_SYNC = ("TAP 1.1 synchronous query: LANG=ADQL, QUERY, and optionally MAXREC and "
         "RESPONSEFORMAT (votable, csv, tsv). docs/tap.md.")


@router.get("/sync", summary="Run an ADQL query", description=_SYNC, operation_id="tap_sync_get")
@router.post("/sync", summary="Run an ADQL query", description=_SYNC,
             operation_id="tap_sync_post")
async def sync(request: Request, caller: CallerDep, stores: Stores) -> Response:
    try:
        params = await _params(request)
        if params.get("request", "doQuery").lower() != "doquery":
            raise _RefusedError(f"REQUEST={params['request']} is not supported: use doQuery")
        lang = params.get("lang")
        if not lang:
            raise _RefusedError("LANG is required (LANG=ADQL)")
        if lang.upper() not in ("ADQL", "ADQL-2.0", "ADQL-2.1"):
            raise _RefusedError(f"LANG={lang} is not supported: use ADQL")
        query = params.get("query")
        if not query or not query.strip():
            raise _RefusedError("QUERY is required")
        maxrec = _maxrec(params, caller.limits.max_rows)
        writer = _format(params)
        engine = stores.tap
        checked = await run_in_threadpool(check, query, engine.tap)
        answer = await run_in_threadpool(engine.run, checked, maxrec)
    except (_RefusedError, ADQLError) as exc:
        return _error(str(exc))
    except TransientError as exc:
        return _error(f"the archive is unavailable: {exc}", status=503)
    return StreamingResponse(_rows(answer, writer), media_type=_MEDIA[writer])


@router.get("/availability", summary="VOSI availability")
async def availability() -> Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">'
            "<vosi:available>true</vosi:available></vosi:availability>\n")
    return Response(body, media_type="text/xml")


@router.get("/capabilities", summary="VOSI capabilities with TAPRegExt")
async def capabilities(request: Request, caller: CallerDep) -> Response:
    base = str(request.url_for("sync")).rsplit("/sync", 1)[0]
    formats = "".join(
        f"<outputFormat><mime>{escape(mime)}</mime>"
        f"{''.join(f'<alias>{a}</alias>' for a in aliases)}</outputFormat>"
        for mime, aliases in ((f"{VOTABLE};serialization=binary2", ["votable"]),
                              (f"{VOTABLE};serialization=tabledata", ["votable/td"]),
                              ("text/csv;header=present", ["csv"]),
                              ("text/tab-separated-values", ["tsv"])))
    geometry = "".join(
        f'<feature><form>{name}</form></feature>' for name in (
            "POINT", "CIRCLE", "BOX", "POLYGON", "CONTAINS", "INTERSECTS", "DISTANCE", "AREA",
            "CENTROID", "COORD1", "COORD2", "COORDSYS"))
    limit = caller.limits.max_rows
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
        'xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">'
        '<capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">'
        f'<interface xsi:type="vs:ParamHTTP" role="std" version="1.1">'
        f"<accessURL use=\"base\">{escape(base)}</accessURL></interface>"
        '<language><name>ADQL</name><version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0'
        '</version><version ivo-id="ivo://ivoa.net/std/ADQL#v2.1">2.1</version>'
        "<description>ADQL over the archive's chunked tables and TAP_SCHEMA</description>"
        '<languageFeatures type="ivo://ivoa.net/std/TAPRegExt#features-adqlgeo">'
        f"{geometry}</languageFeatures></language>"
        f"{formats}"
        f'<outputLimit><default unit="row">{limit}</default>'
        f'<hard unit="row">{limit}</hard></outputLimit>'
        "</capability>"
        '<capability standardID="ivo://ivoa.net/std/VOSI#capabilities">'
        f'<interface xsi:type="vs:ParamHTTP"><accessURL use="full">{escape(base)}/capabilities'
        "</accessURL></interface></capability>"
        '<capability standardID="ivo://ivoa.net/std/VOSI#availability">'
        f'<interface xsi:type="vs:ParamHTTP"><accessURL use="full">{escape(base)}/availability'
        "</accessURL></interface></capability>"
        '<capability standardID="ivo://ivoa.net/std/VOSI#tables-1.1">'
        f'<interface xsi:type="vs:ParamHTTP" version="1.1"><accessURL use="full">'
        f"{escape(base)}/tables</accessURL></interface></capability>"
        "</vosi:capabilities>\n")
    return Response(body, media_type="text/xml")


@router.get("/tables", summary="VOSI tables: TAP_SCHEMA as VODataService")
async def tables(stores: Stores) -> Response:
    tap = stores.tap.tap
    schemas: dict[str, list[str]] = {}
    for table in tap:
        columns = "".join(
            "<column" + (' std="true"' if c.std else "") + ">"
            f"<name>{escape(c.name)}</name>"
            + (f"<description>{escape(c.description)}</description>" if c.description else "")
            + (f"<unit>{escape(c.unit)}</unit>" if c.unit else "")
            + (f"<ucd>{escape(c.ucd)}</ucd>" if c.ucd else "")
            + '<dataType xsi:type="vs:VOTableType"'
            + (f" arraysize={quoteattr(c.arraysize)}" if c.arraysize else "")
            + f">{escape(c.datatype)}</dataType>"
            + ("<flag>indexed</flag>" if c.indexed else "")
            + ("<flag>primary</flag>" if c.principal else "")
            + "</column>" for c in table.columns)
        described = (f"<description>{escape(table.description)}</description>"
                     if table.description else "")
        schemas.setdefault(table.schema, []).append(
            f'<table type="table"><name>{escape(table.name)}</name>{described}{columns}</table>')
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">'
        + "".join(f"<schema><name>{escape(name)}</name>{''.join(items)}</schema>"
                  for name, items in schemas.items())
        + "</vosi:tableset>\n")
    return Response(body, media_type="text/xml")
