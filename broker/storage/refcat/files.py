"""Reading a reference catalog from a file: Parquet or CSV, streamed as record batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from broker.exceptions import RefCatalogError


class _CountingReader:
    """A binary file that counts the bytes read from it (progress of a streamed CSV)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        self.bytes_read = 0
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._file.close()
        self.closed = True


@dataclass
class CatalogInput:
    """Record batches of a Parquet or CSV file, and how far through the file they are.

    ``total`` and ``position()`` are rows for Parquet (from the file metadata) and bytes for CSV
    (streamed, so the row count is not known in advance); ``unit`` says which.
    """

    batches: Iterable[pa.RecordBatch]
    total: int
    unit: str
    position: Callable[[], int]
    close: Callable[[], None]


def open_catalog_file(path: Path, batch_rows: int = 100_000) -> CatalogInput:
    """Stream a Parquet (``.parquet``, ``.pq``) or CSV (``.csv``, ``.csv.gz``) file as batches."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - only the loader needs it

    path = Path(path)
    if not path.is_file():
        msg = f"{path} is not a file"
        raise RefCatalogError(msg)
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            parquet = pq.ParquetFile(path)
            done = [0]

            def parquet_batches() -> Iterable[pa.RecordBatch]:
                for batch in parquet.iter_batches(batch_size=batch_rows):
                    yield batch
                    done[0] += batch.num_rows

            return CatalogInput(parquet_batches(), parquet.metadata.num_rows, "rows",
                                lambda: done[0], parquet.close)
        if path.suffix.lower() == ".csv" or suffix == ".csv.gz":
            if suffix == ".csv.gz":
                source: Any = pa.CompressedInputStream(pa.OSFile(str(path)), "gzip")
                counter = None
            else:
                counter = _CountingReader(path)
                source = counter
            # Column types are inferred from the first block: a large one makes a late
            # "-135.7" in a column of integers far less likely to end the load.
            reader = pacsv.open_csv(source, read_options=pacsv.ReadOptions(
                block_size=max(32 << 20, batch_rows * 200)))
            size = path.stat().st_size

            def csv_batches() -> Iterable[pa.RecordBatch]:
                for block in reader:
                    for start in range(0, block.num_rows, batch_rows):
                        yield block.slice(start, batch_rows)

            return CatalogInput(csv_batches(), size, "bytes",
                                (lambda: counter.bytes_read) if counter else (lambda: 0),
                                source.close)
    except (pa.ArrowException, OSError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise RefCatalogError(msg) from exc
    msg = f"{path}: unknown format (give a .parquet or .csv file)"
    raise RefCatalogError(msg)
