"""The stream: a population of objects observed visit by visit, in time order, into alerts.

Visits of all objects are processed in time order (one heap of every object's next visit), so a
stream of packets has non-decreasing ``midpointMjdTai`` and revisits objects as their histories
grow. Objects are created lazily as their first in-stream visit comes up; the initial population
also gets up to ``history_days`` of observations before ``start_mjd`` (as if the stream started
mid-survey), so long-lived objects carry full histories from the first packet. A supernova
retires after its decline and a new one takes its place. Positions are uniform on the sphere
inside a declination band: ``dec = asin(U(sin(dmin), sin(dmax)))``.

The packet profile (`broker.simulator.profiles`) chooses the cadence, how much history and
which stamps a packet carries. In the realistic profile, before each alert a draw decides
whether it is a solar-system alert instead (`broker.simulator.solar`): an asteroid of a small
pool, seen at the time of the latest visit, replaced when it is too close to the Sun or outside
the declination band.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from broker.simulator import cadence, solar
from broker.simulator.cadence import Visit, VisitIds, unix_micros
from broker.simulator.cutouts import ccd_cutout_images, cutout_images
from broker.simulator.lightcurves import SN, draw_kind, init_model
from broker.simulator.measure import Measurement, detect, forced_values, measure
from broker.simulator.objects import HISTORY_DAYS, SimObject
from broker.simulator.profiles import PacketProfile, Profile, profile_named
from broker.simulator.schema import schema_plan
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion

__all__ = ["AlertSimulator"]

# Galactic north pole (J2000), to tell the plane from high latitudes for target names.
_NGP = (-0.8676661490, -0.1980763734, 0.4559837762)
_MAX_IDLE_VISITS = 1_000_000
_MAX_SOLAR_TRIES = 10_000
#: Rubin observes no closer to the Sun than this (degrees of solar elongation).
_MIN_ELONGATION = 60.0


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
        ``max(1, count // 5)`` (``count // 10`` in the realistic profile).
    start_mjd
        TAI MJD at which the stream starts.
    cutouts
        Whether packets carry the three FITS cutouts (``None`` otherwise).
    history_days
        How far before ``start_mjd`` the initial population has already been observed (0 gives
        every object an empty history at the start of the stream).
    dec_range
        Declination band of the population, degrees.
    profile
        Packet profile (`broker.simulator.profiles`): ``"small"`` (the default, the simulator's
        original packets, about 37 kB) or ``"realistic"`` (sized on Rubin's April-2026 packets,
        about 176 kB with history, and solar-system alerts), or a `Profile` of one's own.
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
        profile: Profile | PacketProfile | str = PacketProfile.small,
    ) -> None:
        self.schema = SchemaVersion.parse(schema) if isinstance(schema, str) else schema
        self.profile = profile_named(profile)
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
        self._dec_range = (low, high)
        sequences = self.profile.sequences
        self._plan_night: Callable[[random.Random, float], Visit]
        self._following: Callable[[random.Random, Visit], Visit]
        if sequences is None:
            self._plan_night, self._following = cadence.plan_night, cadence.following
            self._extra_nights = cadence.MEAN_EXTRA_NIGHTS
        else:
            self._plan_night = functools.partial(
                cadence.plan_sequence, mean_visits=sequences.mean_visits_per_night
            )
            self._following = functools.partial(
                cadence.following_sequence,
                mean_visits=sequences.mean_visits_per_night,
                mean_extra_nights=sequences.mean_extra_nights,
            )
            self._extra_nights = sequences.mean_extra_nights
        # Time of the latest visit observed in the stream (a solar-system alert's time).
        self._now = self._start_mjd
        self._asteroids: list[solar.Asteroid] = []

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
            yield _key(record), wire.encode(self._plan.hinted(record), self.schema_id)

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
            self._n_objects = max(1, count // self.profile.packets_per_object)
        self._arrivals = cadence.first_arrivals(
            self._rng, self._n_objects, self._start_mjd, self._extra_nights
        )

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
        obj = SimObject(self._next_id(), kind, ra, dec, self.profile.max_prv_sources)
        cos_dec = math.cos(math.radians(dec))
        xyz = (cos_dec * math.cos(math.radians(ra)), cos_dec * math.sin(math.radians(ra)))
        sin_b = _NGP[0] * xyz[0] + _NGP[1] * xyz[1] + _NGP[2] * math.sin(math.radians(dec))
        plane = abs(sin_b) < math.sin(math.radians(15.0))
        obj.target_name = "galactic_plane" if plane else "lowdust"
        birth = init_model(rng, obj, first_mjd, past=past)
        if not past:
            return obj
        if kind != SN:
            if self.profile.full_window:
                birth = first_mjd - self._history_days
            else:
                birth = first_mjd - rng.uniform(0.0, self._history_days)
        birth = max(birth, first_mjd - self._history_days)
        if birth < first_mjd:
            visit = self._plan_night(rng, math.floor(birth) + rng.uniform(0.0, 0.3))
            while visit.mjd < first_mjd:
                self._observe(obj, visit, emit=False)
                visit = self._following(rng, visit)
        return obj

    def _next_record(self, *, share: bool) -> dict[str, Any]:
        assert self._arrivals is not None
        rng = self._rng
        fraction = self.profile.solar_system_fraction
        if fraction > 0.0 and rng.random() < fraction:
            return self._solar_record()
        for _ in range(_MAX_IDLE_VISITS):
            arrivals = self._arrivals
            if self._next_arrival < len(arrivals) and (
                not self._queue or arrivals[self._next_arrival] <= self._queue[0][0]
            ):
                mjd = arrivals[self._next_arrival]
                self._next_arrival += 1
                kind = draw_kind(rng, self.profile.class_shares)
                obj = self._new_object(kind, mjd, past=True)
                self._push(obj, self._plan_night(rng, mjd))
                continue
            _, _, obj, visit = heapq.heappop(self._queue)
            self._now = visit.mjd
            record = self._observe(obj, visit, emit=True)
            following = self._following(rng, visit)
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
        obj.forget_before(visit.mjd - HISTORY_DAYS, visit.mjd - self.profile.forced_days)
        previous_forced = [r for _, r in obj.forced] if emit else []
        obj.forced.append((visit.mjd, forced_record))
        if not m.detected:
            return None

        values = detect(self._rng, obj, m, self._next_id())
        source = self._plan.source.build(values)
        record: dict[str, Any] | None = None
        if emit:
            cutouts = self._cutout_images(obj, values, m)
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

    def _cutout_images(self, obj: SimObject, values: dict[str, Any],
                       m: Measurement) -> tuple[bytes | None, ...]:
        if not self._cutouts:
            return (None, None, None)
        layout = self.profile.cutouts
        if layout.variance:
            return ccd_cutout_images(self._images, obj, values, m, layout)
        return cutout_images(self._images, obj, values, m)

    def _solar_record(self) -> dict[str, Any]:
        """A solar-system alert at the stream's current time (`broker.simulator.solar`)."""
        rng = self._rng
        pool = self._asteroids
        if not pool:
            # A quarter as many asteroids as live objects: each is seen a few times.
            assert self._n_objects is not None
            epoch = float(math.floor(self._start_mjd))
            size = max(1, self._n_objects // 4)
            pool.extend(solar.draw_asteroid(rng, epoch) for _ in range(size))
        low, high = self._dec_range
        for _ in range(_MAX_SOLAR_TRIES):
            index = rng.randrange(len(pool))
            asteroid = pool[index]
            visit = cadence.plan_night(rng, self._now)
            eph = solar.ephemeris(asteroid, visit.mjd)
            if eph.elongation < _MIN_ELONGATION or not low <= eph.dec <= high:
                # Out of reach for the rest of the stream: another asteroid takes its place.
                pool[index] = solar.draw_asteroid(rng, asteroid.epoch_mjd)
                continue
            # The orbit predicts the position to a fraction of an arcsecond.
            offset = rng.gauss(0.0, 0.15), rng.gauss(0.0, 0.15)
            dec = max(-90.0, min(90.0, eph.dec + offset[1] / 3600.0))
            ra = (eph.ra + offset[0] / 3600.0 / max(math.cos(math.radians(dec)), 1e-6)) % 360.0
            stand_in = SimObject(0, solar.MOVING, ra, dec, max_sources=1)
            m = measure(rng, stand_in, visit, self._visit_id(visit.mjd),
                        true_diff=solar.band_flux(eph, visit.band))
            if not m.detected:
                continue
            values = detect(rng, stand_in, m, self._next_id())
            length, angle = solar.trail(eph, visit.band)
            values.update(diaObjectId=None, ssObjectId=asteroid.ss_object_id,
                          trailLength=length * rng.uniform(0.9, 1.1), trailAngle=angle)
            gal_lat = solar.galactic(values["ra"], values["dec"])[1]
            return self._plan.alert.build(
                {
                    "diaSourceId": values["diaSourceId"],
                    "observation_reason": visit.reason,
                    "target_name": "galactic_plane" if abs(gal_lat) < 15.0 else "lowdust",
                    "diaSource": self._plan.source.build(values),
                    "ssSource": self._plan.ss_source.build(
                        solar.ss_source_values(asteroid, eph, values)
                    ),
                    "mpc_orbits": self._plan.mpc_orbits.build(
                        solar.mpc_orbit_values(rng, asteroid, unix_micros(asteroid.epoch_mjd))
                    ),
                    **dict(zip(_CUTOUT_FIELDS, self._cutout_images(stand_in, values, m),
                               strict=True)),
                }
            )
        msg = f"no solar-system detection in {_MAX_SOLAR_TRIES} tries"
        raise RuntimeError(msg)


_CUTOUT_FIELDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


def _key(record: dict[str, Any]) -> bytes:
    """The Kafka key: the diaObjectId, or a solar-system alert's ssObjectId, as ASCII digits."""
    dia_object = record["diaObject"]
    if dia_object is not None:
        return str(dia_object["diaObjectId"]).encode("ascii")
    return str(record["diaSource"]["ssObjectId"]).encode("ascii")


def _copy_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of an alert that shares nothing mutable with the simulator's history."""
    out = dict(record)
    for key, value in record.items():
        if isinstance(value, dict):
            out[key] = dict(value)
        elif isinstance(value, list):
            out[key] = [dict(v) if isinstance(v, dict) else v for v in value]
    return out
