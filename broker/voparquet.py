"""VOParquet (IVOA Note "Parquet in the VO", version 1.0): a TAP answer as a Parquet file that
carries its VOTable metadata, streamed.

The convention: a plain Parquet file whose file-level key-value metadata holds
``IVOA.VOTable-Parquet.version`` = ``1.0`` and ``IVOA.VOTable-Parquet.content``, a VOTable
document whose first TABLE has no DATA and one FIELD per Parquet column, in order, with the same
name (`broker.votable.dataless`: the same RESOURCE, INFOs, FIELDs, units, UCDs, xtypes and
descriptions as the BINARY2 answer). Readers take the data and its types from Parquet and the
rest from the FIELDs, so each column is cast to the Arrow type of its FIELD's datatype first
(`_ARROW`): the N'th FIELD then describes the N'th column exactly, as the Note asks.

Why this streams: Parquet puts its footer (the schema, the row groups' offsets and the key-value
metadata) after the data, so each row group's bytes can leave as soon as pyarrow has written
them, and the VOTable goes into the footer last, when the trailer INFOs (an ``OVERFLOW`` known
only once the rows are out) are known too. `_Drain` is the file pyarrow writes to: it hands
over what was written and keeps nothing. A row group is one incoming batch (at most
``row_group_rows`` rows), so memory is bounded by the caller's batch size.

pyarrow reads every value and NULL back, astropy's VOTable parser the metadata, and STILTS's
votlint finds nothing in the embedded document (tests/test_voparquet.py, which also says why
astropy's own ``parquet.votable`` reader is not the check: it loses Parquet's NULLs).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from broker.votable import Field, VOTableError, dataless

#: MIME type of Parquet (IANA, 2024), which a TAP RESPONSEFORMAT names for VOParquet.
MEDIA_TYPE = "application/vnd.apache.parquet"
VERSION = "1.0"
#: The Arrow type a column is written as, by its FIELD's datatype.
_ARROW = {"boolean": pa.bool_(), "unsignedByte": pa.uint8(), "short": pa.int16(),
          "int": pa.int32(), "long": pa.int64(), "float": pa.float32(), "double": pa.float64(),
          "char": pa.string(), "unicodeChar": pa.string()}
ROW_GROUP_ROWS = 1_048_576


class _Drain(io.RawIOBase):
    """A write-only file that keeps what is written until `take` hands it over."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        taken = b"".join(self._parts)
        self._parts.clear()
        return taken


def schema(fields: Sequence[Field]) -> pa.Schema:
    """The Parquet file's Arrow schema: each FIELD's name and the type of its datatype."""
    types = []
    for field in fields:
        arrow = _ARROW.get(field.datatype)
        if arrow is None or (field.arraysize and field.datatype not in ("char", "unicodeChar")):
            msg = (f"column {field.name!r}: datatype {field.datatype}"
                   f"{f'[{field.arraysize}]' if field.arraysize else ''} is not written yet")
            raise VOTableError(msg)
        types.append(pa.field(field.name, arrow))
    return pa.schema(types)


def _cast(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for column, field in zip(batch.columns, target, strict=True):
        try:
            arrays.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            msg = f"column {field.name!r}: {exc}"
            raise VOTableError(msg) from exc
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def voparquet(fields: Sequence[Field], batches: Iterable[pa.RecordBatch], *,
              name: str = "result",
              infos: Sequence[tuple[str, str]] = (("QUERY_STATUS", "OK"),),
              trailer: Sequence[tuple[str, str]] = (), description: str = "",
              row_group_rows: int = ROW_GROUP_ROWS) -> Iterator[bytes]:
    """A VOParquet file with the batches' rows, as chunks of bytes: one chunk per row group,
    then the footer with the VOTable metadata (``infos`` before the table, ``trailer`` after
    it, as `broker.votable.binary2` writes them)."""
    target = schema(fields)
    drain = _Drain()
    writer = pq.ParquetWriter(drain, target)
    try:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(_cast(batch, target), row_group_size=row_group_rows)
                yield drain.take()
        writer.add_key_value_metadata({
            "IVOA.VOTable-Parquet.version": VERSION,
            "IVOA.VOTable-Parquet.content": dataless(fields, name=name, infos=infos,
                                                     trailer=trailer, description=description),
        })
    finally:
        writer.close()
    yield drain.take()
