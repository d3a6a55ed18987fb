"""What the enrich stage decides about an object, as it is stored and published.

`ObjectEnrichment` is the result for one object at one alert: its counterparts in the reference
catalogs (`Match`, nearest first per catalog) and the context they put it in (rules in
`broker.domain.context`, docs/context.md). The archive keeps one per object, replaced only by
the enrichment of a newer alert (`newest_per_object`, and the store's own check against what
it holds), so a batch delivered twice, or out of order, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The context labels, in the order docs/context.md explains them.
CONTEXTS = ("variable_star", "nuclear", "supernova_like", "agn", "orphan", "unclear",
            "solar_system")


@dataclass(frozen=True, slots=True)
class Match:
    """One counterpart of an object in a reference catalog."""

    catalog: str
    source_id: str
    separation_arcsec: float
    rank: int  # 1 for the nearest in its catalog


@dataclass(frozen=True, slots=True)
class WatchMatch:
    """An alert's object inside one cone of a user's watchlist."""

    watchlist_id: int
    cone_id: int
    cone_name: str
    separation_arcsec: float


@dataclass(frozen=True, slots=True)
class ObjectEnrichment:
    """The context and counterparts of one object, decided at one alert."""

    object_id: str
    chunk_id: int
    hpx29: int
    ra: float
    dec: float
    alert_id: int
    alert_mjd: float
    context: str
    catalog: str | None = None
    source_id: str | None = None
    separation_arcsec: float | None = None
    offset_semimajor: float | None = None
    reason: str = ""
    matches: tuple[Match, ...] = ()
    #: The object's features (`broker.domain.features.FEATURES`) from its whole history up to
    #: this alert; empty when they were not computed.
    features: Mapping[str, int | float | None] = field(default_factory=dict)
    #: The watchlists' cones the object's position lies in at this alert.
    watches: tuple[WatchMatch, ...] = ()
    #: The watchmaps (their ids) the object's position lies in at this alert.
    maps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            msg = f"context {self.context!r} is not one of {', '.join(CONTEXTS)}"
            raise ValueError(msg)

    @property
    def epoch(self) -> tuple[float, int]:
        """What orders two enrichments of one object: the alert's time, then its id."""
        return self.alert_mjd, self.alert_id


def newest_per_object(results: Iterable[ObjectEnrichment]) -> list[ObjectEnrichment]:
    """The enrichment of each object's newest alert, by (alert_mjd, alert_id)."""
    newest: dict[str, ObjectEnrichment] = {}
    for result in results:
        current = newest.get(result.object_id)
        if current is None or result.epoch > current.epoch:
            newest[result.object_id] = result
    return list(newest.values())
