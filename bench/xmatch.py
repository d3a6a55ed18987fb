"""Cross-match benchmark: alert positions against a synthetic all-sky catalog, nearest within r.

A uniform all-sky catalog of ``--rows`` rows is chunked (Chunker(85, 12), 1 arcmin overlap) into an
in-memory chunk source (``prepare_seconds``, not part of ``seconds``). ``--positions`` alert
positions (half within 0.5 arcsec of catalog rows, half uniform) are matched with
``CrossMatcher.match(..., mode="nearest")`` on a COLD cache: loading and every per-chunk
structure are included, as for an ingest batch hitting cold chunks (``seconds``). The same arrays
go through astropy ``SkyCoord.match_to_catalog_sky`` (which builds its KD-tree on each new
catalog SkyCoord, included) followed by the radius cut (``astropy_seconds``). ``agree`` is true
when the matched (position, catalog id) sets are identical.

Prints human lines, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from astropy import units as u  # noqa: E402
from astropy.coordinates import SkyCoord  # noqa: E402

from broker.domain.crossmatch import ChunkCache, CrossMatcher, InMemoryChunkSource  # noqa: E402
from broker.domain.sky import Chunker  # noqa: E402

OVERLAP_DEG = 1.0 / 60.0


def _sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0.0, 360.0, n), np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))


def _near(rng: np.random.Generator, ra: np.ndarray, dec: np.ndarray,
          max_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    rho = np.radians(rng.uniform(0.0, max_arcsec, len(ra)) / 3600.0)
    theta = rng.uniform(0.0, 2 * np.pi, len(ra))
    d0, a0 = np.radians(dec), np.radians(ra)
    d1 = np.arcsin(np.sin(d0) * np.cos(rho) + np.cos(d0) * np.sin(rho) * np.cos(theta))
    a1 = a0 + np.arctan2(np.sin(theta) * np.sin(rho) * np.cos(d0),
                         np.cos(rho) - np.sin(d0) * np.sin(d1))
    return np.mod(np.degrees(a1), 360.0), np.degrees(d1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--radius", type=float, default=1.0, help="arcsec")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--stripes", type=int, default=85)
    parser.add_argument("--sub-stripes", type=int, default=12)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    chunker = Chunker(args.stripes, args.sub_stripes)
    ra, dec = _sphere(rng, args.rows)
    ids = np.arange(args.rows, dtype=np.int64) * 10 + 7
    half = args.positions // 2
    picked = rng.choice(args.rows, half, replace=False)
    near_ra, near_dec = _near(rng, ra[picked], dec[picked], 0.5)
    rand_ra, rand_dec = _sphere(rng, args.positions - half)
    p_ra = np.concatenate([near_ra, rand_ra])
    p_dec = np.concatenate([near_dec, rand_dec])
    print(f"catalog {args.rows:,} rows, {args.positions:,} positions, radius {args.radius}\", "
          f"chunker {args.stripes}/{args.sub_stripes}, overlap 1', cores {os.cpu_count()}")

    t0 = time.perf_counter()
    source = InMemoryChunkSource.from_arrays({"cat": (ids, ra, dec)}, chunker, OVERLAP_DEG)
    prepare = time.perf_counter() - t0
    print(f"prepare (chunking with overlap): {prepare:.2f} s")

    matcher = CrossMatcher(source, chunker, ChunkCache(max_rows=4 * args.rows), OVERLAP_DEG)
    t0 = time.perf_counter()
    got = matcher.match(p_ra, p_dec, ["cat"], args.radius, mode="nearest")["cat"]
    seconds = time.perf_counter() - t0
    print(f"CrossMatcher cold: {seconds:.3f} s, {len(got):,} matches, "
          f"{matcher.cache.misses:,} chunks in {matcher.cache.loads} load call(s)")
    t0 = time.perf_counter()
    warm = matcher.match(p_ra, p_dec, ["cat"], args.radius, mode="nearest")["cat"]
    warm_seconds = time.perf_counter() - t0
    print(f"CrossMatcher warm (same batch again): {warm_seconds:.3f} s")

    t0 = time.perf_counter()
    catalog = SkyCoord(ra * u.deg, dec * u.deg)
    idx, sep, _ = SkyCoord(p_ra * u.deg, p_dec * u.deg).match_to_catalog_sky(catalog)
    ok = sep.arcsec <= args.radius
    ref_pos, ref_ids = np.flatnonzero(ok), ids[idx[ok]]
    astropy_seconds = time.perf_counter() - t0
    print(f"astropy match_to_catalog_sky: {astropy_seconds:.3f} s, {len(ref_pos):,} matches")

    agree = (set(zip(got.index.tolist(), got.ids.tolist(), strict=True))
             == set(zip(ref_pos.tolist(), ref_ids.tolist(), strict=True)))
    agree_warm = bool(np.array_equal(warm.index, got.index)
                      and np.array_equal(warm.ids, got.ids))
    max_dist_diff = (float(np.max(np.abs(got.distance_arcsec - sep.arcsec[ok])))
                     if agree and len(got) else None)
    speedup = astropy_seconds / seconds
    print(f"agree: {agree}, speedup vs astropy: {speedup:.1f}x")
    print(json.dumps({
        "seconds": round(seconds, 4),
        "speedup_vs_astropy": round(speedup, 2),
        "agree": bool(agree and agree_warm),
        "rows": args.rows,
        "positions": args.positions,
        "radius_arcsec": args.radius,
        "matches": len(got),
        "astropy_seconds": round(astropy_seconds, 4),
        "warm_seconds": round(warm_seconds, 4),
        "prepare_seconds": round(prepare, 3),
        "chunker": f"{args.stripes}/{args.sub_stripes}",
        "chunks_loaded": matcher.cache.misses,
        "load_calls": matcher.cache.loads,
        "max_distance_diff_arcsec": max_dist_diff,
    }))


if __name__ == "__main__":
    main()
