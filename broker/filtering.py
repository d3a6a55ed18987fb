"""Filters against the archive: what an owner may name, a test run, and the check on enable.

`scope_for` is what a filter's owner may name (loaded reference catalogs, their own and public
watchlists and watchmaps): a filter is compiled against it when it is saved, tested, enabled
and loaded by the filters stage, so a list made private or deleted since stops the filter.

`trial` runs a compiled filter over archived alerts: the newest of a time window, at most a
given number (the caller's tier's row cap, or `Settings.filter_reference_rows` for the check on
enable), as ``lanner.enriched``-shaped records built by `ObjectCatalog.alerts_between` with
their stored watchlist and watchmap hits. Objects keep only their newest features and context,
so an archived alert is judged with its object's features as they are now; the live stream
judges each alert with its object's features at that alert.

`check_share` is the check on enable: a filter that would pass more than
`Settings.filter_max_share` of the reference window's alerts is refused, with the share in the
message (Babamul refuses filters above 5 % of a night).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker.domain.filters import ALWAYS, COLUMNS, AlertBatch, Plan, Scope, run
from broker.exceptions import LannerError
from broker.storage.annotations import AnnotationStore
from broker.storage.stores import ObjectCatalog, ReferenceCatalogs
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import WatchmapStore

#: Passing alerts a test run answers with (its counts cover all it read).
SHOWN = 100


class TooBroadError(LannerError):
    """A filter that would pass too large a share of alerts to be enabled (422)."""


def scope_for(owner: str, *, refcats: ReferenceCatalogs, watchlists: WatchlistStore,
              watchmaps: WatchmapStore, annotations: AnnotationStore | None = None) -> Scope:
    """What ``owner``'s filters may name."""
    return Scope(catalogs=frozenset(str(c["name"]) for c in refcats.list()),
                 watchlists=frozenset(w.watchlist_id for w in watchlists.visible(owner)),
                 watchmaps=frozenset(m.watchmap_id for m in watchmaps.visible(owner)),
                 annotators=frozenset() if annotations is None else annotations.annotators())


@dataclass(frozen=True, slots=True)
class Trial:
    """A filter run over archived alerts: how many were read and passed, and the first
    `SHOWN` passing ones (ids, time, position and the filter's output columns)."""

    since_mjd: float
    until_mjd: float
    read: int
    passed: int
    alerts: list[dict[str, Any]]

    @property
    def share(self) -> float:
        return self.passed / self.read if self.read else 0.0


def archived_alerts(plan: Plan, since_mjd: float, until_mjd: float, limit: int, *,
                    catalog: ObjectCatalog, watchlists: WatchlistStore,
                    watchmaps: WatchmapStore, after: tuple[float, int] | None = None,
                    annotations: AnnotationStore | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` archived alerts of a window (or, after a cursor, the oldest after
    it), with what ``plan`` reads."""
    features = sorted(c for c in plan.columns if COLUMNS[c].group == "feature")
    records = catalog.alerts_between(since_mjd, until_mjd, limit, features=features,
                                     matches=bool(plan.catalogs), after=after)
    add_memberships(records, watchlists if plan.watchlists else None,
                    watchmaps if plan.watchmaps else None)
    if plan.annotators and records and annotations is not None:
        annotate(records, annotations)
    return records


def add_memberships(records: Sequence[dict[str, Any]], watchlists: WatchlistStore | None,
                    watchmaps: WatchmapStore | None) -> None:
    """Add to archived alerts the watchlist cones and watchmaps stored as their hits (from
    either store given)."""
    by_alert = {r["alert_id"]: r for r in records}
    if watchlists is not None and by_alert:
        for hit in watchlists.hits_for_alerts(list(by_alert)):
            by_alert[hit["alert_id"]]["watchlists"].append(hit)
    if watchmaps is not None and by_alert:
        for alert_id, watchmap_id in watchmaps.hits_for_alerts(list(by_alert)):
            by_alert[alert_id]["watchmaps"].append(watchmap_id)


def annotate(records: Sequence[dict[str, Any]], annotations: AnnotationStore) -> None:
    """Add to each record its object's newest annotation by each annotator (``annotations``,
    annotator → ``{"class", "score"}``), as filters read them."""
    newest = annotations.newest(r["object_id"] for r in records)
    for record in records:
        record["annotations"] = {name: {"class": a.cls, "score": a.score}
                                 for name, a in newest.get(record["object_id"], {}).items()}


def trial(plan: Plan, records: Sequence[dict[str, Any]], since_mjd: float,
          until_mjd: float) -> Trial:
    """Run ``plan`` over ``records``: the `Trial`."""
    selection = run(plan, AlertBatch(records))
    shown = selection.rows[:SHOWN].tolist()
    alerts = []
    for position, row in enumerate(shown):
        record = records[row]
        alert = {name: record[name] for name in ALWAYS}
        for name, values in selection.columns.items():
            alert[name] = values[position].as_py()
        alerts.append(alert)
    return Trial(since_mjd, until_mjd, len(records), int(selection.rows.size), alerts)


def check_share(result: Trial, max_share: float) -> None:
    """Refuse (`TooBroadError`) a filter that passed more than ``max_share`` of its trial."""
    if result.read and result.share > max_share:
        msg = (f"the filter would pass {result.share:.1%} of alerts ({result.passed:,} of the "
               f"newest {result.read:,} archived between MJD {result.since_mjd:.3f} and "
               f"{result.until_mjd:.3f}); a filter may pass at most {max_share:.1%}: narrow it")
        raise TooBroadError(msg)
