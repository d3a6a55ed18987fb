"""Survey cadence: when, and in which band, each object is visited; visit ids and times.

Nights are 1 to ~15 days apart (mean about 4.5), at night in Chile (MJD fraction 0-0.33); 60 % of
nights have a pair of visits 20-40 min apart in two bands (g+r, r+i, i+z, z+y, u+g, u+r, y+y), the
others one visit. The realistic profile's cadence (`plan_sequence`, `following_sequence`) has
closer nights of one to three back-to-back visits instead (`broker.simulator.profiles`). Visit
ids follow LSSTCam's ``dayObs * 100000 + seqNum``. Every draw comes from the caller's seeded
``random.Random``, in a fixed order.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from dataclasses import dataclass

from broker.constants import RUBIN_BANDS
from broker.simulator.instrument import BANDS

__all__ = ["MEAN_EXTRA_NIGHTS", "Visit", "VisitIds", "first_arrivals", "following",
           "following_sequence", "plan_night", "plan_sequence", "unix_micros"]

# Band pairs taken on the same night and how often each is scheduled.
_PAIRS = ((1, 2), (2, 3), (3, 4), (4, 5), (0, 1), (0, 2), (5, 5))
_PAIR_CUM = tuple(itertools.accumulate((0.17, 0.25, 0.22, 0.18, 0.05, 0.05, 0.08)))
_SINGLE_CUM = tuple(itertools.accumulate((0.06, 0.09, 0.22, 0.22, 0.20, 0.21)))
_PAIR_NIGHT_FRACTION = 0.6
#: Mean of the exponential number of nights skipped between two visited nights.
MEAN_EXTRA_NIGHTS = 4.0
_MJD_UNIX_EPOCH = 40587.0
_SEQ_EXPOSURE_S = 36.0
_FILTER_CHANGE_S = 120.0


@dataclass(slots=True)
class Visit:
    """One planned observation of one object."""

    mjd: float
    band: int
    reason: str
    second: tuple[float, int] | None  # the night's second visit, if any
    # The rest of the night's sequence, (mjd, band) in time order (realistic profile only).
    rest: tuple[tuple[float, int], ...] = ()


def plan_night(rng: random.Random, night_mjd: float) -> Visit:
    """The first visit of a night starting at ``night_mjd`` (a visit time)."""
    if rng.random() < _PAIR_NIGHT_FRACTION:
        first, second = rng.choices(_PAIRS, cum_weights=_PAIR_CUM)[0]
        later = night_mjd + rng.uniform(20.0, 40.0) / 1440.0
        pair = RUBIN_BANDS[first] + RUBIN_BANDS[second]
        return Visit(night_mjd, first, f"pairs_{pair}", (later, second))
    band = rng.choices(range(BANDS), cum_weights=_SINGLE_CUM)[0]
    return Visit(night_mjd, band, f"singles_{RUBIN_BANDS[band]}", None)


def following(rng: random.Random, visit: Visit) -> Visit:
    """The visit after ``visit``: the night's second one, or the first of a later night."""
    if visit.second is not None:
        mjd, band = visit.second
        return Visit(mjd, band, visit.reason, None)
    nights = 1 + int(rng.expovariate(1.0 / MEAN_EXTRA_NIGHTS))
    return plan_night(rng, math.floor(visit.mjd) + nights + rng.uniform(0.0, 0.3))


def plan_sequence(rng: random.Random, night_mjd: float, mean_visits: float) -> Visit:
    """The first visit of a night's sequence (realistic profile), the others in ``rest``.

    1 to ``2 mean_visits - 1`` visits (uniform), the first half in one band and the rest in the
    second band of a drawn pair, back to back (an exposure and its readout apart, two minutes for
    the filter change).
    """
    first, second = rng.choices(_PAIRS, cum_weights=_PAIR_CUM)[0]
    count = rng.randint(1, max(1, round(2.0 * mean_visits) - 1))
    switch = (count + 1) // 2
    visits = []
    mjd = night_mjd
    for index in range(count):
        if index == switch:
            mjd += _FILTER_CHANGE_S / 86400.0
        visits.append((mjd, first if index < switch else second))
        mjd += (_SEQ_EXPOSURE_S + rng.uniform(0.0, 4.0)) / 86400.0
    bands = RUBIN_BANDS[first] + (RUBIN_BANDS[second] if count > switch else "")
    mjd, band = visits[0]
    return Visit(mjd, band, f"sequence_{bands}", None, tuple(visits[1:]))


def following_sequence(rng: random.Random, visit: Visit, mean_visits: float,
                       mean_extra_nights: float) -> Visit:
    """The visit after ``visit`` in the realistic profile's cadence."""
    if visit.rest:
        (mjd, band), *rest = visit.rest
        return Visit(mjd, band, visit.reason, None, tuple(rest))
    nights = 1 + int(rng.expovariate(1.0 / mean_extra_nights))
    return plan_sequence(rng, math.floor(visit.mjd) + nights + rng.uniform(0.0, 0.3), mean_visits)


def first_arrivals(rng: random.Random, count: int, start_mjd: float,
                   mean_extra_nights: float = MEAN_EXTRA_NIGHTS) -> list[float]:
    """First in-stream visit times of an initial population of ``count`` objects, sorted.

    They spread over one revisit interval, so the stream looks stationary from its start.
    """
    window = 1.0 + mean_extra_nights
    arrivals = []
    for _ in range(count):
        night = math.floor(start_mjd) + rng.randrange(int(window) + 1)
        mjd = night + rng.uniform(0.0, 0.3)
        if mjd < start_mjd:
            mjd += window
        arrivals.append(mjd)
    arrivals.sort()
    return arrivals


class VisitIds:
    """LSSTCam visit ids: dayObs (the date twelve hours before, UTC) * 100000 + sequence number."""

    def __init__(self) -> None:
        self._day_obs: dict[int, int] = {}

    def __call__(self, mjd: float) -> int:
        shifted = mjd - 0.5
        day = math.floor(shifted)
        day_obs = self._day_obs.get(day)
        if day_obs is None:
            date = dt.date(1858, 11, 17) + dt.timedelta(days=day)
            day_obs = date.year * 10000 + date.month * 100 + date.day
            self._day_obs[day] = day_obs
        seq = max(1, int((shifted - day - 0.4) * 86400.0 / _SEQ_EXPOSURE_S))
        return day_obs * 100000 + seq


def unix_micros(mjd: float) -> int:
    """Microseconds since the Unix epoch of a MJD (for the timestamp fields of old schemas)."""
    return round((mjd - _MJD_UNIX_EPOCH) * 86400e6)
