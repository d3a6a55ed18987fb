"""Simulated Rubin packets moved to chosen places on the sky, for tests of the enrich stage."""

from __future__ import annotations

import copy
import math
from typing import Any


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
