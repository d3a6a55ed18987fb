"""Reference catalogs for tests: the real Hipparcos 2 file, or a synthetic stand-in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.data import shared_data_or_none

SIRIUS = (32349, 101.28854, -16.71314)
VEGA = (91262, 279.23411, 38.78299)  # Hipparcos epoch J1991.25


def hipparcos_file(tmp_path: Path) -> Path:
    """The real Hipparcos 2 catalogue, or a synthetic stand-in holding Sirius and Vega."""
    path = shared_data_or_none() / "catalogs" / "hipparcos2.parquet"
    if path.is_file():
        return path
    rng = np.random.default_rng(1)
    n = 20_000
    hip = np.arange(1, n + 1, dtype=np.int32)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    for hip_id, r, d in (SIRIUS, VEGA):
        hip[hip_id % n], ra[hip_id % n], dec[hip_id % n] = hip_id, r, d
    # Neighbours of Vega so that the cone test has something to compare.
    ra[:50] = VEGA[1] + rng.normal(0, 0.5, 50)
    dec[:50] = VEGA[2] + rng.normal(0, 0.5, 50)
    fake = tmp_path / "hipparcos2.parquet"
    pq.write_table(pa.table({"hip": hip, "ra": ra, "dec": dec,
                             "hpmag": rng.normal(8, 1, n).astype(np.float32)}), fake)
    return fake
