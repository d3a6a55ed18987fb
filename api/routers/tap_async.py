"""``/tap/async``: asynchronous ADQL queries as UWS 1.1 jobs (`broker.tap.jobs`).

POST ``/tap/async`` makes a job (PENDING, or QUEUED with ``PHASE=RUN``) and answers 303 with
its URL. The job's resources: ``phase`` (``PHASE=RUN`` queues it, ``PHASE=ABORT`` ends it),
``executionduration`` and ``destruction`` (a caller may shorten them, never lengthen them past
the service's), ``parameters`` (changed only while PENDING), ``error`` (the error VOTable, HTTP
200), ``quote``, ``owner``, ``results`` and ``results/result`` (the result, ``id="result"``, as
pyvo reads it). GET on the job blocks with ``WAIT=n`` (seconds, -1 for the service's longest,
60 s) while the job is in an active phase (or in the ``PHASE`` given). DELETE on the job (or
POST ``ACTION=DELETE``) deletes it and its result and answers 303 to the caller's job list,
which holds only the caller's own jobs (filters ``PHASE``, ``AFTER``, ``LAST``).

A job belongs to its caller (``user:NAME``, or ``anon:ADDRESS`` without a token): anyone else
gets 404 for it (the store's `NotFoundError`, answered by `api.errors`). A queue holding
``tap_queue`` jobs refuses more with 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from api.auth import Caller, CallerDep
from api.dependencies import LazyStores, get_stores
from api.routers.tap import (
    RefusedError,
    error_response,
    format_of,
    maxrec_of,
    read_params,
    read_request,
    upload_limit,
    uploads_of,
)
from broker.exceptions import TransientError
from broker.tap.adql import ADQLError
from broker.tap.jobs import (
    ACTIVE,
    PHASES,
    BusyError,
    PhaseError,
    TapJob,
    forget,
    keep_uploads,
    new_job_id,
    results_dir,
)
from broker.tap.output import error_document
from broker.tap.upload import fetch as fetch_upload
from broker.tap.upload import resolve as resolve_uploads

router = APIRouter(prefix="/tap/async", tags=["IVOA"])
Stores = Annotated[LazyStores, Depends(get_stores)]

UWS = ('xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
       'xmlns:xlink="http://www.w3.org/1999/xlink" '
       'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
#: The longest a blocking GET waits (WAIT=-1 waits this long).
MAX_WAIT_S = 60.0
XML = "text/xml"


def _time(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _element(name: str, value: str | None) -> str:
    if value is None or value == "":
        return f'<uws:{name} xsi:nil="true"/>'
    return f"<uws:{name}>{escape(value)}</uws:{name}>"


def _owner_id(owner: str) -> str | None:
    return owner.split(":", 1)[1] if owner.startswith("user:") else None


def _parameters(job: TapJob) -> str:
    return "<uws:parameters>" + "".join(
        f"<uws:parameter id={quoteattr(k)}>{escape(v)}</uws:parameter>"
        for k, v in job.parameters.items()) + "</uws:parameters>"


def _results(job: TapJob, base: str) -> str:
    if job.phase != "COMPLETED":
        return "<uws:results/>"
    href = f"{base}/{job.job_id}/results/result"
    return ('<uws:results><uws:result id="result" '
            f'xlink:type="simple" xlink:href={quoteattr(href)}'
            f' mime-type={quoteattr(job.result_type or "")}/></uws:results>')


def _job_xml(job: TapJob, base: str) -> str:
    error = ""
    if job.phase == "ERROR":
        error = ('<uws:errorSummary type="fatal" hasDetail="true">'
                 f"<uws:message>{escape(job.error or 'the query failed')}</uws:message>"
                 "</uws:errorSummary>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<uws:job {UWS} version="1.1">'
            f"<uws:jobId>{escape(job.job_id)}</uws:jobId>"
            + (f"<uws:runId>{escape(job.run_id)}</uws:runId>" if job.run_id else "")
            + _element("ownerId", _owner_id(job.owner))
            + f"<uws:phase>{job.phase}</uws:phase>"
            + '<uws:quote xsi:nil="true"/>'
            + f"<uws:creationTime>{_time(job.created_at)}</uws:creationTime>"
            + _element("startTime", _time(job.started_at))
            + _element("endTime", _time(job.finished_at))
            + f"<uws:executionDuration>{job.execution_duration}</uws:executionDuration>"
            + f"<uws:destruction>{_time(job.destruction)}</uws:destruction>"
            + _parameters(job) + _results(job, base) + error + "</uws:job>\n")


def _base(request: Request) -> str:
    return str(request.url_for("tap_async_list"))


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _busy(exc: BusyError) -> Response:
    return error_response(str(exc), status=503,
                          headers={"Retry-After": str(exc.retry_after_s)})


def _wake(request: Request) -> None:
    runner = getattr(request.app.state, "tap_runner", None)
    if runner is not None:
        runner.wake.set()


async def _job(stores: LazyStores, job_id: str, caller: Caller) -> TapJob:
    return await run_in_threadpool(stores.tap_jobs.get, job_id, caller.subject)


def _seconds(raw: str, what: str) -> int:
    try:
        value = int(float(raw))
    except ValueError:
        raise RefusedError(f"{what} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise RefusedError(f"{what} must be positive")
    return value


def _moment(raw: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RefusedError(f"{what} must be an ISO 8601 time, not {raw!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _job_values(params: dict[str, str], caller: Caller) -> dict[str, object]:
    """The job columns the request's parameters give (only those it names)."""
    values: dict[str, object] = {}
    if "lang" in params:  # checked when the job runs: a job with a bad LANG ends in ERROR
        values["lang"] = params["lang"][:16]
    if "query" in params:
        values["query"] = params["query"]
    if "responseformat" in params or "format" in params:
        values["response_format"] = format_of(params)
    if "maxrec" in params:
        values["maxrec"] = maxrec_of(params, caller.limits.max_rows)
    if "runid" in params:
        values["run_id"] = params["runid"][:64] or None
    return values


# -- the job list


@router.get("", summary="Your asynchronous TAP jobs (UWS job list)", name="tap_async_list")
async def job_list(request: Request, caller: CallerDep, stores: Stores) -> Response:
    try:
        phases = [p.upper() for k, p in request.query_params.multi_items()
                  if k.lower() == "phase"]
        unknown = [p for p in phases if p not in (*PHASES, "UNKNOWN", "HELD", "SUSPENDED",
                                                  "ARCHIVED")]
        if unknown:
            raise RefusedError(f"PHASE={unknown[0]} is not a UWS phase")
        params = {k.lower(): v for k, v in request.query_params.items()}
        after = _moment(params["after"], "AFTER") if "after" in params else None
        last = None
        if "last" in params:
            last = int(params["last"]) if params["last"].isdigit() else -1
            if last < 0:
                raise RefusedError(f"LAST must be a whole number, not {params['last']!r}")
        jobs = await run_in_threadpool(stores.tap_jobs.of, caller.subject, phases=phases,
                                       after=after, last=last)
    except RefusedError as exc:
        return error_response(str(exc))
    except TransientError as exc:
        return error_response(f"the archive is unavailable: {exc}", status=503)
    base = _base(request)
    refs = "".join(
        f'<uws:jobref id={quoteattr(j.job_id)} xlink:href={quoteattr(f"{base}/{j.job_id}")}>'
        f"<uws:phase>{j.phase}</uws:phase>"
        + (f"<uws:runId>{escape(j.run_id)}</uws:runId>" if j.run_id else "")
        + _element("ownerId", _owner_id(j.owner))
        + f"<uws:creationTime>{_time(j.created_at)}</uws:creationTime></uws:jobref>"
        for j in jobs)
    return Response(f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:jobs {UWS} version="1.1">'
                    f"{refs}</uws:jobs>\n", media_type=XML)


@router.post("", summary="Make an asynchronous TAP job", status_code=303)
async def create(request: Request, caller: CallerDep, stores: Stores) -> Response:
    settings = stores.settings
    try:
        params, parts = await read_request(request)
        values = _job_values(params, caller)
        if params.get("upload"):  # URLs fetched now; every table read, to refuse it at once
            params["upload"], parts = await run_in_threadpool(
                resolve_uploads, params["upload"], parts, upload_limit(caller, settings),
                fetch_upload if settings.tap_upload_urls else None)
            await run_in_threadpool(uploads_of, params, parts, caller, settings)
        phase = params.get("phase", "").upper()
        if phase not in ("", "RUN"):
            raise RefusedError(f"PHASE={phase} cannot make a job: use PHASE=RUN or none")
        maxrec = values.get("maxrec", caller.limits.max_rows)
        run_id = values.get("run_id")
        job_id = new_job_id()
        if params.get("upload"):
            await run_in_threadpool(keep_uploads, settings.state_dir, job_id, parts)
        try:
            job = await run_in_threadpool(
                lambda: stores.tap_jobs.create(
                    caller.subject, lang=str(values.get("lang", "ADQL")),
                    query=str(values.get("query", "")),
                    response_format=str(values.get("response_format", "votable")),
                    maxrec=maxrec if isinstance(maxrec, int) else caller.limits.max_rows,
                    run_id=run_id if isinstance(run_id, str) else None,
                    execution_duration=settings.tap_async_seconds,
                    retention=timedelta(days=settings.tap_retention_days),
                    params={"upload": params["upload"]} if params.get("upload") else None,
                    queue=settings.tap_queue if phase == "RUN" else None, job_id=job_id))
        except BaseException:
            forget(settings.state_dir, job_id)  # the uploads kept for it
            raise
    except (RefusedError, ADQLError) as exc:
        return error_response(str(exc))
    except BusyError as exc:
        return _busy(exc)
    except TransientError as exc:
        return error_response(f"the archive is unavailable: {exc}", status=503)
    if phase == "RUN":
        _wake(request)
    return _see(f"{_base(request)}/{job.job_id}")


# -- one job


@router.get("/{job_id}", summary="A job (UWS); WAIT blocks while it is active")
async def get_job(job_id: str, request: Request, caller: CallerDep, stores: Stores) -> Response:
    params = {k.lower(): v for k, v in request.query_params.items()}
    try:
        job = await _job(stores, job_id, caller)
        if "wait" in params:
            try:
                wait = float(params["wait"])
            except ValueError:
                raise RefusedError(f"WAIT must be a number of seconds, not "
                                   f"{params['wait']!r}") from None
            wait = MAX_WAIT_S if wait < 0 else min(wait, MAX_WAIT_S)
            watched = params.get("phase", "").upper()
            deadline = time.monotonic() + wait
            pause = 0.05
            # Blocks only in an active phase, and (given PHASE) only while the job is in it.
            while (job.phase in ACTIVE and (not watched or job.phase == watched)
                   and time.monotonic() < deadline):
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                pause = min(pause * 2, 0.5)
                job = await _job(stores, job_id, caller)
    except RefusedError as exc:
        return error_response(str(exc))
    return Response(_job_xml(job, _base(request)), media_type=XML)


async def _delete(job_id: str, request: Request, caller: Caller, stores: LazyStores) -> Response:
    await run_in_threadpool(stores.tap_jobs.delete, job_id, caller.subject)
    forget(stores.settings.state_dir, job_id)
    # The list the answer points to holds only the caller's own jobs: never a long list of
    # everyone's (pyvo follows this redirect after every delete).
    return _see(f"{_base(request)}?LAST=0")


@router.delete("/{job_id}", summary="Delete a job and its result", status_code=303)
async def delete_job(job_id: str, request: Request, caller: CallerDep,
                     stores: Stores) -> Response:
    return await _delete(job_id, request, caller, stores)


@router.post("/{job_id}", summary="ACTION=DELETE deletes the job", status_code=303)
async def post_job(job_id: str, request: Request, caller: CallerDep,
                   stores: Stores) -> Response:
    params = await read_params(request)
    if params.get("action", "").upper() == "DELETE":
        return await _delete(job_id, request, caller, stores)
    await _job(stores, job_id, caller)
    return error_response("POST to a job takes ACTION=DELETE; its phase, parameters and times "
                          "have their own resources")


@router.get("/{job_id}/phase", summary="The job's phase")
async def get_phase(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    return PlainTextResponse(job.phase)


@router.post("/{job_id}/phase", summary="PHASE=RUN queues the job, PHASE=ABORT ends it",
             status_code=303)
async def post_phase(job_id: str, request: Request, caller: CallerDep,
                     stores: Stores) -> Response:
    params = await read_params(request)
    phase = params.get("phase", "").upper()
    store = stores.tap_jobs
    try:
        if phase == "RUN":
            await run_in_threadpool(store.run, job_id, caller.subject, stores.settings.tap_queue)
            _wake(request)
        elif phase == "ABORT":
            await run_in_threadpool(store.abort, job_id, caller.subject)
        else:
            await _job(stores, job_id, caller)
            raise RefusedError(f"PHASE must be RUN or ABORT, not {phase or 'missing'}")
    except BusyError as exc:
        return _busy(exc)
    except RefusedError as exc:
        return error_response(str(exc))
    return _see(f"{_base(request)}/{job_id}")


@router.get("/{job_id}/executionduration", summary="The job's longest run, in seconds")
async def get_duration(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    return PlainTextResponse(str(job.execution_duration))


@router.post("/{job_id}/executionduration", summary="Shorten the job's longest run",
             status_code=303)
async def post_duration(job_id: str, request: Request, caller: CallerDep,
                        stores: Stores) -> Response:
    params = await read_params(request)
    try:
        seconds = _seconds(params.get("executionduration", ""), "EXECUTIONDURATION")
        seconds = min(seconds, stores.settings.tap_async_seconds)
        await run_in_threadpool(lambda: stores.tap_jobs.set_times(
            job_id, caller.subject, execution_duration=seconds))
    except (RefusedError, PhaseError) as exc:
        return error_response(str(exc))
    return _see(f"{_base(request)}/{job_id}")


@router.get("/{job_id}/destruction", summary="When the job is deleted")
async def get_destruction(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    return PlainTextResponse(_time(job.destruction))


@router.post("/{job_id}/destruction", summary="Delete the job sooner", status_code=303)
async def post_destruction(job_id: str, request: Request, caller: CallerDep,
                           stores: Stores) -> Response:
    params = await read_params(request)
    try:
        wanted = _moment(params.get("destruction", ""), "DESTRUCTION")
        job = await _job(stores, job_id, caller)
        latest = job.created_at + timedelta(days=stores.settings.tap_retention_days)
        await run_in_threadpool(lambda: stores.tap_jobs.set_times(
            job_id, caller.subject, destruction=min(wanted, latest)))
    except RefusedError as exc:
        return error_response(str(exc))
    return _see(f"{_base(request)}/{job_id}")


@router.get("/{job_id}/error", summary="Why the job failed (an error VOTable)")
async def get_error(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    if job.phase != "ERROR":
        return PlainTextResponse(f"job {job_id} is {job.phase}, not in error", status_code=404)
    return Response(error_document(job.error or "the query failed"),
                    media_type="application/x-votable+xml")


@router.get("/{job_id}/quote", summary="When the job is expected to end (not estimated)")
async def get_quote(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    await _job(stores, job_id, caller)
    return PlainTextResponse("")


@router.get("/{job_id}/owner", summary="The job's owner")
async def get_owner(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    return PlainTextResponse(_owner_id(job.owner) or "")


@router.get("/{job_id}/parameters", summary="The job's parameters")
async def get_parameters(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    return Response(f'<?xml version="1.0" encoding="UTF-8"?>\n{_parameters(job)}'
                    .replace("<uws:parameters>", f"<uws:parameters {UWS}>", 1),
                    media_type=XML)


@router.post("/{job_id}/parameters", summary="Change a PENDING job's parameters",
             status_code=303)
async def post_parameters(job_id: str, request: Request, caller: CallerDep,
                          stores: Stores) -> Response:
    try:
        params = await read_params(request)
        values = _job_values(params, caller)
        if "upload" in params:
            raise RefusedError("UPLOAD is given when the job is made")
        await run_in_threadpool(lambda: stores.tap_jobs.update(job_id, caller.subject,
                                                               **values))
    except (RefusedError, PhaseError) as exc:
        return error_response(str(exc))
    return _see(f"{_base(request)}/{job_id}")


@router.get("/{job_id}/results", summary="The job's results (one, id result)")
async def get_results(job_id: str, request: Request, caller: CallerDep,
                      stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    body = _results(job, _base(request))
    return Response('<?xml version="1.0" encoding="UTF-8"?>\n'
                    + body.replace("<uws:results", f"<uws:results {UWS}", 1), media_type=XML)


@router.get("/{job_id}/results/result", summary="The job's result")
async def get_result(job_id: str, caller: CallerDep, stores: Stores) -> Response:
    job = await _job(stores, job_id, caller)
    path = results_dir(stores.settings.state_dir) / job_id
    if job.phase != "COMPLETED" or not path.exists():
        return PlainTextResponse(f"job {job_id} is {job.phase}: it has no result",
                                 status_code=404)
    return FileResponse(path, media_type=job.result_type or "application/octet-stream")
