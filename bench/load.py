"""Bulk-load rate of a reference catalog into the MariaDB shards, overlap included.

A synthetic uniform all-sky catalog (id, ra, dec, mag and two float columns) is generated as
pyarrow batches and loaded through `ChunkedRefCatalogs.load` (chunk and HEALPix indices, the
1-arcmin overlap halos, the director index, LOAD DATA per shard) into a fresh database
``bench_load_<random>`` on the configured shards, dropped at the end. Generation is timed apart
and not counted: the figure is what the loader sustains.

    python bench/load.py [--rows 10000000] [--batch-rows 500000] [--overlap-arcmin 1]

Prints human lines, then one JSON object with ``rows``, ``rows_per_s``, ``seconds``,
``overlap_rows`` and ``shards`` as the last line.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.config import Settings
from broker.domain.sky import Chunker
from broker.storage.refcat import ChunkedRefCatalogs
from broker.storage.shards import MariaDBShards


def synthetic(rows: int, batch_rows: int, seed: int) -> list[pa.RecordBatch]:
    """Uniform points on the sphere with a magnitude and two float columns."""
    rng = np.random.default_rng(seed)
    batches = []
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        ra = rng.uniform(0.0, 360.0, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
        batches.append(pa.RecordBatch.from_arrays(
            [pa.array(np.arange(start, start + n, dtype=np.int64) + 1_000_000_000),
             pa.array(ra), pa.array(dec),
             pa.array(rng.normal(18.0, 2.0, n).astype(np.float32)),
             pa.array(rng.normal(0.0, 5.0, n)), pa.array(rng.normal(0.0, 5.0, n))],
            names=["source_id", "ra", "dec", "mag", "pmra", "pmdec"]))
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batch-rows", type=int, default=500_000)
    parser.add_argument("--overlap-arcmin", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    settings = Settings()
    shards = MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                      password=settings.mariadb_password.get_secret_value(),
                      database=f"bench_load_{secrets.token_hex(4)}")
    chunker = Chunker(settings.chunk_stripes, settings.chunk_sub_stripes)
    started = time.perf_counter()
    batches = synthetic(args.rows, args.batch_rows, args.seed)
    print(f"generated {args.rows:,} rows in {time.perf_counter() - started:.1f} s "
          f"({len(batches)} batches of up to {args.batch_rows:,})")
    catalogs = ChunkedRefCatalogs(shards, chunker, args.overlap_arcmin / 60.0)
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n

    def feed() -> Iterator[pa.RecordBatch]:
        while batches:  # hand batches over and let go of them: memory stays bounded
            yield batches.pop(0)

    try:
        report = catalogs.load("bench", feed(), "source_id", "ra", "dec", progress)
        loaded = catalogs.list()[0]["rows"]
    finally:
        catalogs.close()
        shards.drop_database()
    rate = report.rows / report.seconds
    print(f"loaded {report.rows:,} rows (+{report.overlap_rows:,} overlap rows, "
          f"{args.overlap_arcmin} arcmin) into {len(shards)} shards in {report.seconds:.1f} s: "
          f"{rate:,.0f} rows/s (registry says {loaded:,} rows)")
    print(json.dumps({"rows": report.rows, "rows_per_s": round(rate), "seconds":
                      round(report.seconds, 2), "overlap_rows": report.overlap_rows,
                      "shards": len(shards), "batch_rows": args.batch_rows,
                      "overlap_arcmin": args.overlap_arcmin,
                      "chunking": [chunker.num_stripes, chunker.num_sub_stripes]}))


if __name__ == "__main__":
    main()
