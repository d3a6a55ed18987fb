"""IVOA TAP 1.1 at ``/tap``: synchronous ADQL queries, and the VOSI resources that describe
the service (``/tap/capabilities``, ``/tap/availability``, ``/tap/tables``).

Parameters are read here, not by FastAPI: DALI makes their names case-insensitive and lets
them come in the query string or a form body, and even a malformed request must get a VOTable
error document (``QUERY_STATUS`` ``ERROR``, HTTP 400). A query is checked
(`broker.tap.adql.check`), run (`broker.tap.execute.Engine`) in the thread pool, and its rows
stream out as a BINARY2 VOTable (`broker.votable`, the default), TABLEDATA, CSV or TSV.

MAXREC: a caller's tier gives the most rows an answer holds (anonymous callers and users
10,000; docs/api.md): that is the default and the hard limit; an answer cut there says
``OVERFLOW``. Each statement of a query is stopped by its database after ``tap_sync_seconds``.
Asynchronous queries (UWS) are at ``/tap/async`` (`api.routers.tap_async`).
"""

from __future__ import annotations

from typing import Annotated
from xml.sax.saxutils import escape, quoteattr

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from api.auth import Caller, CallerDep
from api.dependencies import LazyStores, get_stores
from broker.config import Settings
from broker.exceptions import CatalogReloadedError, StatementTimeoutError, TransientError
from broker.tap.adql import LANGUAGES, ADQLError, check
from broker.tap.output import (
    DECLARED,
    MEDIA,
    VOTABLE,
    FormatError,
    encode,
    error_document,
    writer_for,
)
from broker.tap.tapschema import delimited
from broker.tap.upload import Upload
from broker.tap.upload import fetch as fetch_upload
from broker.tap.upload import read as read_uploads

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/tap", tags=["IVOA"])
Stores = Annotated[LazyStores, Depends(get_stores)]


class RefusedError(Exception):
    """A request DALI says to answer with an error document."""


async def read_params(request: Request) -> dict[str, str]:
    """The request's parameters, names lower-cased (DALI), from the query and a form body."""
    params, _ = await read_request(request)
    return params


async def read_request(request: Request) -> tuple[dict[str, str], dict[str, bytes]]:
    """The request's parameters (names lower-cased) and the files of a multipart body by
    part name (the tables ``UPLOAD=name,param:part`` names)."""
    params = {k.lower(): v for k, v in request.query_params.items()}
    parts: dict[str, bytes] = {}
    if request.method == "POST":
        form = await request.form()
        for key, value in form.multi_items():
            if isinstance(value, str):
                params[key.lower()] = value
            else:
                parts[key] = await value.read()
    return params, parts


def upload_limit(caller: Caller, settings: Settings) -> int:
    """The most bytes the caller may upload with a query."""
    return caller.limits.max_upload_bytes if caller.user is not None \
        else settings.tap_anonymous_upload_bytes


def uploads_of(params: dict[str, str], parts: dict[str, bytes], caller: Caller,
               settings: Settings) -> list[Upload]:
    spec = params.get("upload")
    if not spec:
        return []
    return read_uploads(spec, parts, upload_limit(caller, settings),
                        fetch=fetch_upload if settings.tap_upload_urls else None)


def error_response(message: str, status: int = 400,
                   headers: dict[str, str] | None = None) -> Response:
    return Response(error_document(message), status_code=status, media_type=VOTABLE,
                    headers=headers)


def maxrec_of(params: dict[str, str], hard: int) -> int:
    """MAXREC, at most ``hard`` (the caller's tier's rows) and ``hard`` when not given."""
    raw = params.get("maxrec")
    if raw is None or raw == "":
        return hard
    try:
        value = int(raw)
    except ValueError:
        raise RefusedError(f"MAXREC must be a whole number, not {raw!r}") from None
    if value < 0:
        raise RefusedError("MAXREC must not be negative")
    return min(value, hard)


def format_of(params: dict[str, str]) -> str:
    """RESPONSEFORMAT (or FORMAT) as given, once it is known to be one this service writes."""
    wanted = (params.get("responseformat") or params.get("format") or "votable").strip()
    try:
        writer_for(wanted)
    except FormatError as exc:
        raise RefusedError(str(exc)) from None
    return wanted


def lang_of(params: dict[str, str], *, required: bool = True) -> str:
    lang = params.get("lang")
    if not lang:
        if required:
            raise RefusedError("LANG is required (LANG=ADQL)")
        return "ADQL"
    if lang.upper() not in LANGUAGES:
        raise RefusedError(f"LANG={lang} is not supported: use ADQL")
    return lang


_SYNC = ("TAP 1.1 synchronous query: LANG=ADQL, QUERY, and optionally MAXREC and "
         "RESPONSEFORMAT (votable, votable/td, csv, tsv, parquet). docs/tap.md.")


@router.get("/sync", summary="Run an ADQL query", description=_SYNC, operation_id="tap_sync_get")
@router.post("/sync", summary="Run an ADQL query", description=_SYNC,
             operation_id="tap_sync_post")
async def sync(request: Request, caller: CallerDep, stores: Stores) -> Response:
    try:
        params, parts = await read_request(request)
        if params.get("request", "doQuery").lower() != "doquery":
            raise RefusedError(f"REQUEST={params['request']} is not supported: use doQuery")
        lang_of(params)
        query = params.get("query")
        if not query or not query.strip():
            raise RefusedError("QUERY is required")
        maxrec = maxrec_of(params, caller.limits.max_rows)
        writer = writer_for(format_of(params))
        engine = stores.tap
        uploads = await run_in_threadpool(uploads_of, params, parts, caller, stores.settings)
        described = engine.tap.with_tables(u.table for u in uploads) if uploads else engine.tap
        checked = await run_in_threadpool(check, query, described)
        answer = await run_in_threadpool(engine.run, checked, maxrec,
                                         seconds=stores.settings.tap_sync_seconds,
                                         uploads=uploads)
    except (RefusedError, ADQLError, StatementTimeoutError) as exc:
        return error_response(str(exc))
    except CatalogReloadedError as exc:
        return error_response(reloaded(exc), status=503)
    except TransientError as exc:
        return error_response(f"the archive is unavailable: {exc}", status=503)
    except Exception as exc:  # still an error document, as DALI asks; the trace is logged
        log.exception("TAP query failed")
        return error_response(f"the query failed: {type(exc).__name__}", status=500)
    return StreamingResponse(encode(answer, writer), media_type=MEDIA[writer])


def reloaded(exc: CatalogReloadedError) -> str:
    """The answer to a query that read a reference catalog while it was reloaded."""
    return (f"reference catalog {exc.name} was reloaded while the query read it (version "
            f"{exc.version} is gone): send the query again")


@router.get("/availability", summary="VOSI availability")
async def availability() -> Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">'
            "<vosi:available>true</vosi:available></vosi:availability>\n")
    return Response(body, media_type="text/xml")


@router.get("/capabilities", summary="VOSI capabilities with TAPRegExt")
async def capabilities(request: Request, caller: CallerDep, stores: Stores) -> Response:
    base = str(request.url_for("sync")).rsplit("/sync", 1)[0]
    formats = "".join(
        f"<outputFormat><mime>{escape(mime)}</mime>"
        f"{''.join(f'<alias>{a}</alias>' for a in aliases)}</outputFormat>"
        for mime, aliases in DECLARED)
    geometry = "".join(
        f'<feature><form>{name}</form></feature>' for name in (
            "POINT", "CIRCLE", "BOX", "POLYGON", "CONTAINS", "INTERSECTS", "DISTANCE", "AREA",
            "CENTROID", "COORD1", "COORD2", "COORDSYS"))
    limit = caller.limits.max_rows
    uploads = upload_limit(caller, stores.settings)
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
        '<uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-inline"/>'
        + ('<uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-http"/>'
           '<uploadMethod ivo-id="ivo://ivoa.net/std/TAPRegExt#upload-https"/>'
           if stores.settings.tap_upload_urls else "")
        +
        f'<retentionPeriod><default>{int(stores.settings.tap_retention_days * 86400)}'
        f'</default><hard>{int(stores.settings.tap_retention_days * 86400)}</hard>'
        "</retentionPeriod>"
        f"<executionDuration><default>{stores.settings.tap_async_seconds}</default>"
        f"<hard>{stores.settings.tap_async_seconds}</hard></executionDuration>"
        f'<outputLimit><default unit="row">{limit}</default>'
        f'<hard unit="row">{limit}</hard></outputLimit>'
        f'<uploadLimit><hard unit="byte">{uploads}</hard></uploadLimit>'
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
            f"<name>{escape(delimited(c.name))}</name>"
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
        keys = "".join(
            f"<foreignKey><targetTable>{escape(key.target)}</targetTable>"
            + "".join(f"<fkColumn><fromColumn>{escape(f)}</fromColumn>"
                      f"<targetColumn>{escape(t)}</targetColumn></fkColumn>"
                      for f, t in key.columns)
            + (f"<description>{escape(key.description)}</description>"
               if key.description else "")
            + "</foreignKey>" for key in table.keys)
        schemas.setdefault(table.schema, []).append(
            f'<table type="table"><name>{escape(table.name)}</name>{described}{columns}{keys}'
            "</table>")
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1">'
        + "".join(f"<schema><name>{escape(name)}</name>{''.join(items)}</schema>"
                  for name, items in schemas.items())
        + "</vosi:tableset>\n")
    return Response(body, media_type="text/xml")
