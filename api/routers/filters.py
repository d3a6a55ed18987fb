"""``/api/v1/filters``: users' filters (docs/filters.md), checked, versioned, tested, enabled.

Every text is compiled (`broker.domain.filters.compile_filter`) against what its owner may
name before anything is stored: a bad filter is 422 with the message and, where there is one,
the line and column. A test run reads the newest archived alerts of a window, at most the
caller's tier's row cap. Enabling a filter (or changing an enabled filter's text) runs it over
the reference window first and refuses it (422, the share in the message) if it would pass
more than the configured share of alerts. Another user's private filter answers 404, never
403; a public filter can be read by anyone and changed only by its owner.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field, model_validator

from api.auth import Authenticated, Caller, CallerDep
from api.dependencies import LazyStores, get_stores
from api.errors import UNAVAILABLE, RefusedError
from api.models import ErrorOut
from api.routers.jobs import JobOut
from broker.domain.filters import FilterError, FilterRuntimeError, Plan, compile_filter
from broker.domain.filters.language import MAX_TEXT
from broker.filtering import TooBroadError, Trial, archived_alerts, check_share, scope_for, trial
from broker.notify import check_webhook
from broker.storage.filters import ATTACHMENTS, MAX_DESCRIPTION, Filter

router = APIRouter(prefix="/api/v1", tags=["filters"])
Stores = Annotated[LazyStores, Depends(get_stores)]

_Responses = dict[int | str, dict[str, Any]]
_REFUSED = {"model": ErrorOut, "description": "The filter is not valid (the message, with its "
            "`line` and `column`), or passes too many alerts to be enabled."}
_WRITE: _Responses = {
    401: {"model": ErrorOut, "description": "No token, or a token that is not accepted."},
    404: {"model": ErrorOut, "description": "No such filter of yours."},
    409: {"model": ErrorOut, "description": "You have a filter of that name."},
    422: _REFUSED, **UNAVAILABLE}
_READ: _Responses = {404: {"model": ErrorOut, "description": "No such filter you may read."},
                     **UNAVAILABLE}


Attachment = Literal["lightcurve", "cutouts"]
_ATTACH = ("What each published record carries besides the filter's columns: the object's "
           "light curve and forced photometry (lightcurve), the alert's three cutouts "
           "(cutouts), or both.")


class FilterIn(BaseModel):
    """A new filter."""

    name: str = Field(min_length=1, max_length=64,
                      description="Lower-case letters, digits, _ and -: it names your topic.")
    text: str = Field(max_length=MAX_TEXT, description="SELECT ... WHERE ... (docs/filters.md).")
    description: str = Field("", max_length=MAX_DESCRIPTION)
    visibility: Literal["private", "public"] = "private"
    attach: list[Attachment] = Field([], max_length=2, description=_ATTACH)


class FilterChange(BaseModel):
    """Changes to a filter: only what is given changes; a new text is a new version."""

    text: str | None = Field(None, max_length=MAX_TEXT)
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    visibility: Literal["private", "public"] | None = None
    attach: list[Attachment] | None = Field(None, max_length=2, description=_ATTACH)


class TextIn(BaseModel):
    text: str = Field(max_length=MAX_TEXT)


class WindowIn(BaseModel):
    """A window of archived alerts: ``since_mjd`` and ``until_mjd``, or the last ``days`` up
    to the newest archived alert (1 day when nothing is given)."""

    since_mjd: float | None = Field(None, allow_inf_nan=False)
    until_mjd: float | None = Field(None, allow_inf_nan=False)
    days: float | None = Field(None, gt=0, le=366, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_way(self) -> WindowIn:
        given = (self.since_mjd is not None, self.until_mjd is not None)
        if any(given) and not all(given):
            msg = "give both since_mjd and until_mjd, or neither"
            raise ValueError(msg)
        if all(given) and self.days is not None:
            msg = "give since_mjd and until_mjd, or days, not both"
            raise ValueError(msg)
        if all(given) and not self.since_mjd < self.until_mjd:  # type: ignore[operator]
            msg = "since_mjd must be before until_mjd"
            raise ValueError(msg)
        return self


class OutputColumn(BaseModel):
    name: str
    type: str


class PlanOut(BaseModel):
    """What a valid filter outputs and reads."""

    valid: bool = True
    output: list[OutputColumn] = Field(description="Its output columns, after the alert's ids, "
                                                   "time and position.")
    columns: list[str] = Field(description="The alert columns it reads.")
    catalogs: list[str]
    watchlists: list[int]
    watchmaps: list[int]

    @classmethod
    def of(cls, plan: Plan) -> PlanOut:
        return cls(output=[OutputColumn(name=n, type=node.type or "null")
                           for n, node in plan.select],
                   columns=sorted(plan.columns), catalogs=sorted(plan.catalogs),
                   watchlists=sorted(plan.watchlists), watchmaps=sorted(plan.watchmaps))


class FilterOut(BaseModel):
    """A filter."""

    filter_id: int
    owner: str
    name: str
    description: str
    visibility: str
    text: str
    version: int = Field(description="1, then one more at each change of its text.")
    state: str = Field(description="disabled, enabled or suspended.")
    reason: str | None = Field(description="Why it is suspended, or was refused.")
    daily_cap: int = Field(description="Most alerts it publishes in one UTC day.")
    topic: str = Field(description="The Kafka topic of its passing alerts.")
    created_at: datetime
    updated_at: datetime
    webhook_url: str | None = Field(None, description="Its webhook (shown to its owner only).")
    email: str | None = Field(None, description="Where its daily digest goes (owner only).")
    attach: list[str] = Field(description=_ATTACH)

    @classmethod
    def of(cls, found: Filter, caller: str | None = None) -> FilterOut:
        mine = caller == found.owner
        return cls(filter_id=found.filter_id, owner=found.owner, name=found.name,
                   description=found.description, visibility=found.visibility,
                   text=found.text, version=found.version, state=found.state,
                   reason=found.reason, daily_cap=found.daily_cap, topic=found.topic,
                   created_at=found.created_at, updated_at=found.updated_at,
                   webhook_url=found.webhook_url if mine else None,
                   email=found.email if mine else None,
                   attach=[a for a in ATTACHMENTS if a in found.attach])


class NotificationsIn(BaseModel):
    """Where a filter notifies; null (or absent) turns one off."""

    webhook_url: str | None = Field(None, max_length=512,
                                    description="An http(s) address to POST summaries to.")
    email: str | None = Field(None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
                              description="An address for the daily digest.")


class NotificationsOut(BaseModel):
    webhook_url: str | None
    webhook_secret: str | None = Field(description="The key its summaries are signed with "
                                       "(HMAC-SHA256 of the body, header X-Lanner-Signature). "
                                       "Keep it: a new address gets a new one.")
    email: str | None


class VersionOut(BaseModel):
    version: int
    text: str
    created_at: datetime


class TrialOut(BaseModel):
    """A filter's run over archived alerts."""

    since_mjd: float
    until_mjd: float
    read: int = Field(description="Archived alerts read: the newest of the window, at most "
                                  "your tier's row cap.")
    passed: int
    share: float = Field(description="passed / read.")
    alerts: list[dict[str, Any]] = Field(description="The first 100 passing alerts.")

    @classmethod
    def of(cls, result: Trial) -> TrialOut:
        return cls(since_mjd=result.since_mjd, until_mjd=result.until_mjd, read=result.read,
                   passed=result.passed, share=result.share, alerts=result.alerts)


def _compile(text: str, owner: str, stores: LazyStores) -> Plan:
    scope = scope_for(owner, refcats=stores.refcats, watchlists=stores.watchlists,
                      watchmaps=stores.watchmaps, annotations=stores.annotations)
    try:
        return compile_filter(text, scope)
    except FilterError as exc:
        raise RefusedError(str(exc), message=exc.message, line=exc.line,
                           column=exc.column) from None


def _window(window: WindowIn, stores: LazyStores) -> tuple[float, float]:
    if window.since_mjd is not None and window.until_mjd is not None:
        return window.since_mjd, window.until_mjd
    newest = stores.catalog.newest_alert_mjd()
    if newest is None:
        return 0.0, 0.0
    return newest - (window.days or 1.0), newest + 1e-6


def _trial(plan: Plan, since: float, until: float, limit: int, stores: LazyStores) -> Trial:
    records = archived_alerts(plan, since, until, limit, catalog=stores.catalog,
                              watchlists=stores.watchlists, watchmaps=stores.watchmaps,
                              annotations=stores.annotations)
    try:
        return trial(plan, records, since, until)
    except FilterRuntimeError as exc:
        raise HTTPException(status_code=422, detail=f"the filter failed: {exc}") from None


def _checked_for_enable(plan: Plan, stores: LazyStores) -> None:
    settings = stores.factory.settings
    since, until = _window(WindowIn(days=settings.filter_reference_days), stores)
    result = _trial(plan, since, until, settings.filter_reference_rows, stores)
    try:
        check_share(result, settings.filter_max_share)
    except TooBroadError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def _owner(caller: Caller) -> str:
    assert caller.name is not None
    return caller.name


@router.post("/filters/validate", response_model=PlanOut, summary="Check a filter",
             description="Compile a filter without saving or running it.", responses=_WRITE)
def validate_filter(body: TextIn, caller: Authenticated, stores: Stores) -> PlanOut:
    return PlanOut.of(_compile(body.text, _owner(caller), stores))


@router.post("/filters", response_model=FilterOut, status_code=201, summary="Make a filter",
             description="Saved disabled, at version 1; enable it to run it on the stream.",
             responses=_WRITE)
def create_filter(body: FilterIn, caller: Authenticated, stores: Stores) -> FilterOut:
    owner = _owner(caller)
    _compile(body.text, owner, stores)
    try:
        made = stores.filters.create(owner, body.name, body.text, description=body.description,
                                     visibility=body.visibility,
                                     daily_cap=stores.factory.settings.filter_daily_cap,
                                     attach=body.attach)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return FilterOut.of(made, owner)


@router.get("/filters", response_model=list[FilterOut], summary="Filters",
            description="Yours, and everyone's public ones.", responses=UNAVAILABLE)
def list_filters(caller: CallerDep, stores: Stores) -> list[FilterOut]:
    return [FilterOut.of(f, caller.name) for f in stores.filters.visible(caller.name)]


@router.get("/filters/{filter_id}", response_model=FilterOut, summary="One filter",
            responses=_READ)
def get_filter(filter_id: int, caller: CallerDep, stores: Stores) -> FilterOut:
    return FilterOut.of(stores.filters.get(filter_id, caller.name), caller.name)


@router.get("/filters/{filter_id}/versions", response_model=list[VersionOut],
            summary="A filter's versions", responses=_READ)
def filter_versions(filter_id: int, caller: CallerDep, stores: Stores) -> list[VersionOut]:
    return [VersionOut(**v) for v in stores.filters.history(filter_id, caller.name)]


@router.patch("/filters/{filter_id}", response_model=FilterOut, summary="Change a filter",
              description="A new text is checked (and, for an enabled filter, run over the "
              "reference window) before it is saved as a new version.", responses=_WRITE)
def change_filter(filter_id: int, body: FilterChange, caller: Authenticated,
                  stores: Stores) -> FilterOut:
    owner = _owner(caller)
    current = stores.filters.owned(filter_id, owner)
    if body.text is not None and body.text != current.text:
        plan = _compile(body.text, owner, stores)
        if current.state == "enabled":
            _checked_for_enable(plan, stores)
    try:
        changed = stores.filters.change(filter_id, owner, text=body.text,
                                        description=body.description,
                                        visibility=body.visibility, attach=body.attach)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return FilterOut.of(changed, owner)


@router.delete("/filters/{filter_id}", status_code=204, summary="Delete a filter",
               responses=_WRITE)
def delete_filter(filter_id: int, caller: Authenticated, stores: Stores) -> Response:
    stores.filters.delete(filter_id, _owner(caller))
    return Response(status_code=204)


@router.post("/filters/{filter_id}/test", response_model=TrialOut, summary="Test a filter",
             description="Run a filter (yours or a public one) over the newest archived alerts "
             "of a window, at most your tier's row cap, without publishing anything.",
             responses=_WRITE)
def test_filter(filter_id: int, window: WindowIn, caller: Authenticated,
                stores: Stores) -> TrialOut:
    found = stores.filters.get(filter_id, caller.name)
    plan = _compile(found.text, found.owner, stores)
    since, until = _window(window, stores)
    return TrialOut.of(_trial(plan, since, until, caller.limits.max_rows, stores))


class BackfillIn(BaseModel):
    """A backfill: the window of archived alerts, and where its passing alerts go."""

    since_mjd: float = Field(allow_inf_nan=False)
    until_mjd: float = Field(allow_inf_nan=False)
    deliver: Literal["topic", "file"] = Field(
        "topic", description="topic: on the filter's topic, flagged backfill; file: a CSV or "
        "VOTable file of the job (`GET /api/v1/jobs/{id}/result`).")

    @model_validator(mode="after")
    def _ordered(self) -> BackfillIn:
        if not self.since_mjd < self.until_mjd:
            msg = "since_mjd must be before until_mjd"
            raise ValueError(msg)
        return self


@router.post("/filters/{filter_id}/backfill", response_model=JobOut, status_code=202,
             summary="Backfill a filter",
             description="Queue a job that runs the filter's current version over the archived "
             "alerts of a window and delivers what passes; follow it at /api/v1/jobs/{id}.",
             responses=_WRITE)
def backfill_filter(filter_id: int, body: BackfillIn, caller: Authenticated,
                    stores: Stores) -> JobOut:
    owner = _owner(caller)
    found = stores.filters.owned(filter_id, owner)
    _compile(found.text, owner, stores)
    if body.deliver == "topic":
        stores.factory.create_topics([found.topic])
    job = stores.jobs.queue(owner, "filter_backfill", filter_id, found.version, {
        "since_mjd": body.since_mjd, "until_mjd": body.until_mjd, "deliver": body.deliver})
    return JobOut.of(job)


@router.put("/filters/{filter_id}/notifications", response_model=NotificationsOut,
            summary="Set a filter's notifications",
            description="A webhook gets a signed JSON summary of each batch of alerts the filter "
            "publishes; an email address gets a digest of each UTC day.", responses=_WRITE)
def set_notifications(filter_id: int, body: NotificationsIn, caller: Authenticated,
                      stores: Stores) -> NotificationsOut:
    owner = _owner(caller)
    stores.filters.owned(filter_id, owner)
    if body.webhook_url is not None:
        try:
            check_webhook(body.webhook_url,
                          allow_private=stores.settings.webhook_allow_private)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
    changed = stores.filters.set_notifications(filter_id, owner, webhook_url=body.webhook_url,
                                               email=body.email)
    return NotificationsOut(webhook_url=changed.webhook_url,
                            webhook_secret=changed.webhook_secret, email=changed.email)


@router.post("/filters/{filter_id}/enable", response_model=FilterOut, summary="Enable a filter",
             description="Run it over the reference window and, unless it passes too large a "
             "share of alerts, run it on every enriched alert from now on.", responses=_WRITE)
def enable_filter(filter_id: int, caller: Authenticated, stores: Stores) -> FilterOut:
    owner = _owner(caller)
    found = stores.filters.owned(filter_id, owner)
    _checked_for_enable(_compile(found.text, owner, stores), stores)
    stores.factory.create_topics([found.topic])
    stores.filters.set_state(filter_id, "enabled", caller=owner)
    return FilterOut.of(stores.filters.get(filter_id, owner), owner)


@router.post("/filters/{filter_id}/disable", response_model=FilterOut,
             summary="Disable a filter", responses=_WRITE)
def disable_filter(filter_id: int, caller: Authenticated, stores: Stores) -> FilterOut:
    owner = _owner(caller)
    stores.filters.set_state(filter_id, "disabled", caller=owner)
    return FilterOut.of(stores.filters.get(filter_id, owner), owner)
