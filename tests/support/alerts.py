"""Simulated Rubin packets moved to chosen places on the sky."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from broker.simulator import AlertSimulator
from broker.streaming import wire


def offset(ra: float, dec: float, east_arcsec: float, north_arcsec: float) -> tuple[float, float]:
    """A point offset on the tangent plane (small offsets)."""
    dec2 = dec + north_arcsec / 3600.0
    ra2 = (ra + east_arcsec / 3600.0 / math.cos(math.radians(dec))) % 360.0
    return ra2, dec2


def placed(record: dict[str, Any], object_id: int, ra: float, dec: float) -> dict[str, Any]:
    """A simulated Rubin packet moved to (ra, dec) with a new object id."""
    moved = copy.deepcopy(record)
    for source in [moved["diaSource"], *(moved["prvDiaSources"] or []),
                   *(moved["prvDiaForcedSources"] or [])]:
        source["ra"], source["dec"] = ra, dec
        if "diaObjectId" in source:
            source["diaObjectId"] = object_id
    moved["diaObject"]["ra"], moved["diaObject"]["dec"] = ra, dec
    moved["diaObject"]["diaObjectId"] = object_id
    return moved


def scattered(count: int, seed: int) -> list[tuple[float, float]]:
    """``count`` places anywhere between declinations -60 and 60."""
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(0, 360)), float(rng.uniform(-60, 60))) for _ in range(count)]


def produce_placed(harness: Any, places: Sequence[tuple[float, float]], *, first_id: int,
                   seed: int, cutouts: bool = False) -> list[int]:
    """One simulated packet (schema 11.1) per place, each of a new object numbered from
    ``first_id``, produced on the harness's LSST topic; the object ids."""
    packets = AlertSimulator(schema="11.1", seed=seed, cutouts=cutouts).packets(len(places))
    ids = []
    for i, (record, (ra, dec)) in enumerate(zip(packets, places, strict=True)):
        object_id = first_id + i
        harness.produce(harness.topics.lsst, wire.encode(placed(record, object_id, ra, dec),
                                                         1101), key=str(object_id).encode())
        ids.append(object_id)
    return ids
