"""Benchmark: VOTable BINARY2 writing, `broker.votable` against astropy's writer.

``--rows`` rows (default 1,000,000) of ten columns as a TAP answer over the archive has them:
an alert id (long), an object id (char, 10 to 19 digits), the survey (char), MJD, RA and Dec
(double), the band (char, one letter), a PSF flux (float, a fifth NULL), the number of
detections (int, a tenth NULL) and a flag (boolean, a tenth NULL). Both writers
write the same table to memory as BINARY2; the time is the median of ``--repeats`` runs of ours
and one of astropy's (from an astropy Table built beforehand, not timed). Our document is read
back by astropy and compared value for value before any figure is printed.

The last line of output is one JSON object::

    {"rows": ..., "columns": 10, "binary2_rows_per_s": ..., "astropy_rows_per_s": ...,
     "ratio_to_astropy": ..., "bytes": ...}

Run: ``python bench/votable.py [--rows N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.votable import binary2, field_of


def _text(values: np.ndarray) -> pa.Array:
    """A string column (pyarrow hands large numpy text back in chunks)."""
    made = pa.array(values, pa.string())
    return made.combine_chunks() if isinstance(made, pa.ChunkedArray) else made


def table(rows: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)

    def nulls(share: float) -> np.ndarray:
        return rng.random(rows) < share

    object_ids = rng.integers(10**9, 10**18, rows).astype(str)
    flux = rng.lognormal(7, 1.5, rows).astype(np.float32)
    return pa.RecordBatch.from_pydict({
        "alert_id": pa.array(rng.integers(0, 2**62, rows), pa.int64()),
        "object_id": _text(object_ids),
        "survey": _text(np.where(rng.random(rows) < 0.9, "lsst", "ztf")),
        "mjd": pa.array(rng.uniform(60_000, 61_000, rows)),
        "ra": pa.array(rng.uniform(0, 360, rows)),
        "dec": pa.array(rng.uniform(-90, 30, rows)),
        "band": _text(rng.choice(list("ugrizy"), rows)),
        "psf_flux": pa.array(flux, mask=nulls(0.2)),
        "ndet": pa.array(rng.integers(1, 500, rows).astype(np.int32), mask=nulls(0.1)),
        "flagged": pa.array(rng.random(rows) < 0.05, mask=nulls(0.1)),
    })


def _zero(arrow: pa.DataType) -> object:
    """What stands in for NULL where a value is needed (masked anyway)."""
    if pa.types.is_string(arrow):
        return ""
    return False if pa.types.is_boolean(arrow) else 0


def check(document: bytes, batch: pa.RecordBatch) -> None:
    """astropy reads our document back, value for value (NULLs as NULLs)."""
    from astropy.io.votable import parse_single_table  # noqa: PLC0415

    read = parse_single_table(io.BytesIO(document)).to_table()
    for name in batch.schema.names:
        want = batch.column(name)
        got = read[name]
        mask = np.ma.getmaskarray(got)
        nulls = want.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(want.type):
            assert np.array_equal(np.isnan(np.asarray(got, dtype=np.float64)) | mask, nulls)
        elif not pa.types.is_string(want.type):  # astropy reads a NULL char as "" (its #8995)
            assert np.array_equal(mask, nulls), name
        values = np.asarray(got.filled(_zero(want.type)) if hasattr(got, "filled") else got)
        expected = want.fill_null(_zero(want.type)).to_numpy(zero_copy_only=False)
        keep = ~nulls | pa.types.is_string(want.type)
        assert np.array_equal(values[keep].astype(expected.dtype), expected[keep]), name


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    batch = table(args.rows, args.seed)
    fields = [field_of(f.name, f.type) for f in batch.schema]
    times = []
    document = b""
    for _ in range(args.repeats):
        started = time.perf_counter()
        document = b"".join(binary2(fields, [batch]))
        times.append(time.perf_counter() - started)
    ours = statistics.median(times)
    check(document, batch)

    from astropy.io.votable import from_table  # noqa: PLC0415
    from astropy.table import Table  # noqa: PLC0415

    astropy_table = Table([np.ma.masked_invalid(c.to_numpy(zero_copy_only=False))
                           if pa.types.is_floating(c.type) else
                           np.ma.array(c.fill_null(_zero(c.type)).to_numpy(zero_copy_only=False),
                                       mask=c.is_null().to_numpy(zero_copy_only=False))
                           for c in batch.columns], names=batch.schema.names)
    votable = from_table(astropy_table)
    started = time.perf_counter()
    votable.to_xml(io.BytesIO(), tabledata_format="binary2")
    theirs = time.perf_counter() - started
    result = {"rows": args.rows, "columns": len(fields),
              "binary2_rows_per_s": round(args.rows / ours),
              "astropy_rows_per_s": round(args.rows / theirs),
              "ratio_to_astropy": round(theirs / ours, 1), "bytes": len(document)}
    print(f"BINARY2, {args.rows:,} rows x {len(fields)} columns: ours {ours:.2f} s "
          f"({result['binary2_rows_per_s']:,} rows/s), astropy {theirs:.1f} s "
          f"({result['astropy_rows_per_s']:,} rows/s): {result['ratio_to_astropy']}x",
          flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
