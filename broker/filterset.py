"""The enabled filters of a filters process, compiled, kept current, run on a batch.

`FilterSet` reads every filter's (version, state) every ``poll_s`` seconds (one small query on
shard 0) and, when any changed, reloads the enabled ones and compiles each against its
owner's current scope (`broker.filtering.scope_for`). A change made over the API is therefore
live in every filters process within ``poll_s`` plus one batch; a poll is cheaper than a change
topic for the few thousand rows this is, and cannot miss a change. The same poll reads who owns
which watchlists and watchmaps and who may see them (``scopes_changed``): when that changes,
every filter is compiled again, and one that no longer compiles (it names a watchlist deleted
or made private since) is suspended with the reason.

`FilterSet.run` runs every filter on a batch (`broker.domain.filters.run`), timing each: a
filter over its time bound, or one that fails (an integer overflow), is suspended with a
reason its owner sees (``GET /api/v1/filters/{id}``), for the version that overran, so a fixed
version saved meanwhile is not suspended by mistake. The batch's passing alerts of a filter
that overran are still published: they are correct, only late.

Daily caps: each process keeps the day's counts of its filters, read from ``filter_days`` at
each reload and added to after each batch (`room`, `counted`); past a filter's cap, its
further alerts that day are dropped and counted. Several processes each read the others'
counts at their next reload, so the cap may be passed by up to one poll's worth of their
alerts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from broker.domain.alerts import CUTOUT_KINDS, flux_to_mag, mag_err
from broker.domain.filters import (
    AlertBatch,
    FilterError,
    FilterRuntimeError,
    Plan,
    Scope,
    Selection,
    compile_filter,
    run,
)
from broker.storage.filters import Filter, FilterStore
from broker.storage.stores import LightCurveArchive
from broker.streaming import lanner_schemas

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Passed:
    """A filter's passing alerts in one batch, and how long it took."""

    filter: Filter
    plan: Plan
    selection: Selection
    seconds: float


@dataclass(slots=True)
class _Day:
    day: str = ""
    counts: dict[int, tuple[int, int]] = field(default_factory=dict)


def utc_day(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


class FilterSet:
    """The enabled filters, compiled and reloaded on change."""

    def __init__(self, store: FilterStore, scope: Callable[[str], Scope], *,
                 poll_s: float = 1.0, time_limit_s: float = 0.5,
                 clock: Callable[[], float] = time.time,
                 scopes_changed: Callable[[], Hashable] = lambda: None) -> None:
        self.store = store
        self.scope = scope
        #: Polled with the versions: a value that changes when what owners may name changes
        #: (watchlists and watchmaps made, deleted or made private), which recompiles them all.
        self.scopes_changed = scopes_changed
        self.poll_s = poll_s
        self.time_limit_s = time_limit_s
        self.clock = clock
        self.active: list[tuple[Filter, Plan]] = []
        self._seen: tuple[Any, Any] | None = None
        self._polled = -float("inf")
        self._day = _Day()

    def refresh(self, *, force: bool = False) -> bool:
        """Reload the enabled filters if any filter changed; whether it reloaded."""
        now = time.monotonic()
        if not force and now - self._polled < self.poll_s:
            return False
        self._polled = now
        versions = (self.store.versions(), self.scopes_changed())
        today = utc_day(self.clock())
        if today != self._day.day or force or versions != self._seen:
            self._day = _Day(today, self.store.day_counts(today))
        if not force and versions == self._seen:
            return False
        self._seen = versions
        scopes: dict[str, Scope] = {}
        active = []
        for found in self.store.enabled():
            if found.owner not in scopes:
                scopes[found.owner] = self.scope(found.owner)
            try:
                active.append((found, compile_filter(found.text, scopes[found.owner])))
            except FilterError as exc:
                self.suspend(found, f"it no longer compiles: {exc}")
        self.active = active
        log.info("filters loaded", enabled=len(active))
        return True

    def suspend(self, found: Filter, reason: str) -> None:
        if self.store.set_state(found.filter_id, "suspended", reason, version=found.version):
            log.warning("filter suspended", filter_id=found.filter_id, owner=found.owner,
                        reason=reason)
        self.active = [(f, p) for f, p in self.active if f.filter_id != found.filter_id]

    def run(self, batch: AlertBatch) -> list[Passed]:
        """Every active filter on a batch: what each passed."""
        passed = []
        for found, plan in list(self.active):
            started = time.perf_counter()
            try:
                selection = run(plan, batch)
            except FilterRuntimeError as exc:
                self.suspend(found, f"it failed on a batch: {exc}")
                continue
            seconds = time.perf_counter() - started
            if seconds > self.time_limit_s:
                self.suspend(found, f"it took {seconds * 1000:.0f} ms on a batch of "
                             f"{batch.size:,} alerts, more than the {self.time_limit_s * 1000:.0f}"
                             " ms a filter may take: simplify it and enable it again")
            if selection.rows.size:
                passed.append(Passed(found, plan, selection, seconds))
        return passed

    def room(self, found: Filter) -> int:
        """How many more alerts a filter may publish today."""
        published, _ = self._day.counts.get(found.filter_id, (0, 0))
        return max(0, found.daily_cap - published)

    def counted(self, counts: dict[int, tuple[int, int]]) -> None:
        """Add a batch's (published, dropped) per filter to the day's, once it is recorded."""
        for filter_id, (published, dropped) in counts.items():
            before = self._day.counts.get(filter_id, (0, 0))
            self._day.counts[filter_id] = (before[0] + published, before[1] + dropped)

    @property
    def day(self) -> str:
        return self._day.day


def filtered_records(passed: Passed, positions: Sequence[int],
                     records: Sequence[dict[str, Any]], published_ms: int, *,
                     backfill: bool = False,
                     attached: Mapping[int, dict[str, Any]] | None = None,
                     ) -> list[tuple[bytes, bytes]]:
    """The key and value of the ``lanner.filtered`` record of each chosen passing alert of a
    filter (``positions`` into its selection). ``attached`` (from `attachments`, by index
    into ``records``) gives the light curves and cutouts the filter attaches."""
    columns = {name: values.to_pylist() for name, values in passed.selection.columns.items()}
    rows = passed.selection.rows.tolist()
    attach = passed.filter.attach
    out = []
    for position in positions:
        record = records[rows[position]]
        extra = (attached or {}).get(rows[position], {}) if attach else {}
        value = lanner_schemas.encode("filtered", {
            "alert_id": record["alert_id"], "object_id": record["object_id"],
            "survey": record["survey"], "mjd": record["mjd"], "ra": record["ra"],
            "dec": record["dec"], "filter_id": passed.filter.filter_id,
            "filter_version": passed.filter.version, "backfill": backfill,
            "columns": {name: values[position] for name, values in columns.items()},
            "source_timestamp_ms": record.get("source_timestamp_ms"),
            "published_ms": published_ms,
            "lightcurve": extra.get("lightcurve") if "lightcurve" in attach else None,
            "forced": extra.get("forced") if "lightcurve" in attach else None,
            "cutouts": extra.get("cutouts") if "cutouts" in attach else None})
        out.append((record["object_id"].encode(), value))
    return out


def attachments(wanted: Mapping[int, frozenset[str]], records: Sequence[dict[str, Any]],
                lightcurves: LightCurveArchive) -> dict[int, dict[str, Any]]:
    """What the filters that passed records attach to them, read from the archive: for each
    index into ``records`` in ``wanted``, its object's light curve and forced photometry
    (oldest first; one read for all the objects) and its three cutouts, as asked."""
    objects = sorted({records[i]["object_id"] for i, what in wanted.items()
                      if "lightcurve" in what})
    histories = lightcurves.histories(objects) if objects else {}
    curves = {object_id: (_detections(h.detections), _forced(h.forced))
              for object_id, h in histories.items()}
    out: dict[int, dict[str, Any]] = {}
    for i, what in wanted.items():
        record = records[i]
        extra: dict[str, Any] = {}
        if "lightcurve" in what:
            extra["lightcurve"], extra["forced"] = curves.get(record["object_id"], ([], []))
        if "cutouts" in what:
            extra["cutouts"] = {kind: lightcurves.cutout(int(record["alert_id"]), kind)
                                for kind in CUTOUT_KINDS}
        out[i] = extra
    return out


def _detections(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(rows, key=lambda r: (r["mjd"], r["source_id"]))
    return [{"source_id": int(r["source_id"]), "mjd": float(r["mjd"]), "band": str(r["band"]),
             "ra": float(r["ra"]), "dec": float(r["dec"]), "psf_flux": r["psf_flux"],
             "psf_flux_err": r["psf_flux_err"], "mag": flux_to_mag(r["psf_flux"]),
             "mag_err": mag_err(r["psf_flux"], r["psf_flux_err"])} for r in ordered]


def _forced(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(rows, key=lambda r: (r["mjd"], r["forced_id"]))
    return [{"forced_id": int(r["forced_id"]), "mjd": float(r["mjd"]), "band": str(r["band"]),
             "psf_flux": r["psf_flux"], "psf_flux_err": r["psf_flux_err"]} for r in ordered]
