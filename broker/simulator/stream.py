"""The stream: a population of objects observed visit by visit, in time order, into alerts.

Visits of all objects are processed in time order (one heap of every object's next visit), so a
stream of packets has non-decreasing ``midpointMjdTai`` and revisits objects as their histories
grow. Objects are created lazily as their first in-stream visit comes up; the initial population
also gets up to ``history_days`` of observations before ``start_mjd`` (as if the stream started
mid-survey), so long-lived objects carry full histories from the first packet. A supernova
retires after its decline and a new one takes its place. Positions are uniform on the sphere
inside a declination band: ``dec = asin(U(sin(dmin), sin(dmax)))``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np

from broker.simulator import cadence
from broker.simulator.cadence import Visit, VisitIds
from broker.simulator.cutouts import cutout_images
from broker.simulator.lightcurves import SN, draw_kind, init_model
from broker.simulator.measure import detect, forced_values, measure
from broker.simulator.objects import HISTORY_DAYS, SimObject
from broker.simulator.schema import schema_plan
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion

__all__ = ["AlertSimulator"]

# Galactic north pole (J2000), to tell the plane from high latitudes for target names.
_NGP = (-0.8676661490, -0.1980763734, 0.4559837762)
_MAX_IDLE_VISITS = 1_000_000


class AlertSimulator:
    """A deterministic stream of synthetic Rubin alert packets.

    Parameters
    ----------
    schema
        Alert schema version of the records (``SchemaVersion`` or text such as ``"11.1"``).
    seed
        Seed of every random draw; ``None`` draws fresh entropy (see `seed_used`).
    n_objects
        Objects alive at any time; ``None`` fixes it on the first `packets` or `encoded` call to
        ``max(1, count // 5)``.
    start_mjd
        TAI MJD at which the stream starts.
    cutouts
        Whether packets carry the three FITS cutouts (``None`` otherwise).
    history_days
        How far before ``start_mjd`` the initial population has already been observed (0 gives
        every object an empty history at the start of the stream).
    dec_range
        Declination band of the population, degrees.
    """

    def __init__(
        self,
        *,
        schema: SchemaVersion | str,
        seed: int | None = None,
        n_objects: int | None = None,
        start_mjd: float = 61000.0,
        cutouts: bool = True,
        history_days: float = HISTORY_DAYS,
        dec_range: tuple[float, float] = (-90.0, 30.0),
    ) -> None:
        self.schema = SchemaVersion.parse(schema) if isinstance(schema, str) else schema
        self.schema_id = self.schema.schema_id
        self._plan = schema_plan(self.schema_id)
        if n_objects is not None and n_objects < 1:
            msg = f"n_objects must be at least 1, not {n_objects}"
            raise ValueError(msg)
        low, high = dec_range
        if not -90.0 <= low < high <= 90.0:
            msg = f"dec_range {dec_range} is not an increasing pair within [-90, 90]"
            raise ValueError(msg)
        if history_days < 0:
            msg = f"history_days must not be negative, not {history_days}"
            raise ValueError(msg)
        sequence = np.random.SeedSequence(seed)
        self.seed_used: int = int(sequence.entropy)  # type: ignore[arg-type]
        scalar_seed, image_seed, id_seed = sequence.generate_state(3, dtype=np.uint64)
        self._rng = random.Random(int(scalar_seed))
        self._images = np.random.default_rng(int(image_seed))
        self._id_prefix = (int(id_seed) % (2**21 - 1) + 1) << 41
        self._serial = 0
        self._n_objects = n_objects
        self._start_mjd = float(start_mjd)
        self._cutouts = cutouts
        self._history_days = float(history_days)
        self._sin_dec = (math.sin(math.radians(low)), math.sin(math.radians(high)))
        self._arrivals: list[float] | None = None
        self._next_arrival = 0
        self._queue: list[tuple[float, int, SimObject, Visit]] = []
        self._tiebreak = itertools.count()
        self._visit_id = VisitIds()

    # ---- public API ----------------------------------------------------------------------

    def packets(self, count: int) -> Iterator[dict[str, Any]]:
        """Yield the next ``count`` alert records of the stream, in time order."""
        self._start(count)
        for _ in range(count):
            yield self._next_record(share=False)

    def encoded(self, count: int) -> Iterator[tuple[bytes, bytes]]:
        """Yield the next ``count`` alerts as Kafka ``(key, value)`` pairs.

        The key is the ``diaObjectId`` as ASCII decimal digits (so one object's alerts share a
        partition); the value is the Confluent wire-format message (`broker.streaming.wire`).
        """
        self._start(count)
        for _ in range(count):
            record = self._next_record(share=True)
            key = str(record["diaObject"]["diaObjectId"]).encode("ascii")
            yield key, wire.encode(self._plan.hinted(record), self.schema_id)

    @property
    def n_objects(self) -> int | None:
        """Objects alive at any time (``None`` until the first call decides it)."""
        return self._n_objects

    # ---- population and scheduling ---------------------------------------------------------

    def _start(self, count: int) -> None:
        if count < 0:
            msg = f"count must not be negative, not {count}"
            raise ValueError(msg)
        if self._arrivals is not None:
            return
        if self._n_objects is None:
            self._n_objects = max(1, count // 5)
        self._arrivals = cadence.first_arrivals(self._rng, self._n_objects, self._start_mjd)

    def _next_id(self) -> int:
        self._serial += 1
        return self._id_prefix | self._serial

    def _push(self, obj: SimObject, visit: Visit) -> None:
        heapq.heappush(self._queue, (visit.mjd, next(self._tiebreak), obj, visit))

    def _new_object(self, kind: int, first_mjd: float, *, past: bool) -> SimObject:
        """Create an object whose first in-stream visit is at ``first_mjd``.

        With ``past``, it has also been observed (without alerts reaching this stream) since a
        drawn birth date up to ``history_days`` earlier.
        """
        rng = self._rng
        ra = rng.uniform(0.0, 360.0)
        low, high = self._sin_dec
        dec = math.degrees(math.asin(rng.uniform(low, high)))
        obj = SimObject(self._next_id(), kind, ra, dec)
        cos_dec = math.cos(math.radians(dec))
        xyz = (cos_dec * math.cos(math.radians(ra)), cos_dec * math.sin(math.radians(ra)))
        sin_b = _NGP[0] * xyz[0] + _NGP[1] * xyz[1] + _NGP[2] * math.sin(math.radians(dec))
        plane = abs(sin_b) < math.sin(math.radians(15.0))
        obj.target_name = "galactic_plane" if plane else "lowdust"
        birth = init_model(rng, obj, first_mjd, past=past)
        if not past:
            return obj
        if kind != SN:
            birth = first_mjd - rng.uniform(0.0, self._history_days)
        birth = max(birth, first_mjd - self._history_days)
        if birth < first_mjd:
            visit = cadence.plan_night(rng, math.floor(birth) + rng.uniform(0.0, 0.3))
            while visit.mjd < first_mjd:
                self._observe(obj, visit, emit=False)
                visit = cadence.following(rng, visit)
        return obj

    def _next_record(self, *, share: bool) -> dict[str, Any]:
        assert self._arrivals is not None
        rng = self._rng
        for _ in range(_MAX_IDLE_VISITS):
            arrivals = self._arrivals
            if self._next_arrival < len(arrivals) and (
                not self._queue or arrivals[self._next_arrival] <= self._queue[0][0]
            ):
                mjd = arrivals[self._next_arrival]
                self._next_arrival += 1
                kind = draw_kind(rng)
                obj = self._new_object(kind, mjd, past=True)
                self._push(obj, cadence.plan_night(rng, mjd))
                continue
            _, _, obj, visit = heapq.heappop(self._queue)
            record = self._observe(obj, visit, emit=True)
            following = cadence.following(rng, visit)
            if obj.retire_mjd is not None and following.mjd > obj.retire_mjd:
                replacement = self._new_object(obj.kind, following.mjd, past=False)
                self._push(replacement, following)
            else:
                self._push(obj, following)
            if record is not None:
                return record if share else _copy_record(record)
        msg = f"no detection in {_MAX_IDLE_VISITS} visits; the population cannot be detected"
        raise RuntimeError(msg)

    # ---- observing -----------------------------------------------------------------------------

    def _observe(self, obj: SimObject, visit: Visit, *, emit: bool) -> dict[str, Any] | None:
        """Measure one object at one visit; return its alert if detected and ``emit``."""
        m = measure(self._rng, obj, visit, self._visit_id(visit.mjd))
        forced_record = self._plan.forced.build(forced_values(obj, m, self._next_id()))
        obj.add_forced(visit.band, m.flux, m.err, m.science, m.sci_err)
        obj.forget_before(visit.mjd - HISTORY_DAYS)
        previous_forced = [r for _, r in obj.forced]
        obj.forced.append((visit.mjd, forced_record))
        if not m.detected:
            return None

        values = detect(self._rng, obj, m, self._next_id())
        source = self._plan.source.build(values)
        record: dict[str, Any] | None = None
        if emit:
            cutouts: tuple[bytes | None, ...] = (None, None, None)
            if self._cutouts:
                cutouts = cutout_images(self._images, obj, values, m)
            record = self._plan.alert.build(
                {
                    "diaSourceId": values["diaSourceId"],
                    "observation_reason": visit.reason,
                    "target_name": obj.target_name,
                    "diaSource": source,
                    "prvDiaSources": [r for _, r in obj.detections] or None,
                    "prvDiaForcedSources": previous_forced or None,
                    "diaObject": self._plan.dia_object.build(obj.summary(m.processed)),
                    "cutoutScience": cutouts[0],
                    "cutoutTemplate": cutouts[1],
                    "cutoutDifference": cutouts[2],
                }
            )
        obj.detections.append((visit.mjd, source))
        return record


def _copy_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of an alert that shares nothing mutable with the simulator's history."""
    out = dict(record)
    for key, value in record.items():
        if isinstance(value, dict):
            out[key] = dict(value)
        elif isinstance(value, list):
            out[key] = [dict(v) if isinstance(v, dict) else v for v in value]
    return out
