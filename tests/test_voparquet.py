"""`broker.voparquet`: a VOParquet file holds every value and NULL of the batches, and its
VOTable metadata, as the IVOA Note lays it out, read by astropy.

How astropy reads it: its `parquet.votable` reader is two steps, the embedded VOTable parsed
by `astropy.io.votable` (for the FIELDs) and the data read by pyarrow. The tests take those two
steps themselves: astropy 8.0.2's reader itself needs pandas (not a dependency here), and it
cannot read NULLs as the Note's Parquet has them (its Parquet reader takes the length of every
string, NULL included, drops Arrow's validity, and cannot stack a ``char`` of
``arraysize="*"``, read as objects, over Parquet's strings).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse

from broker.voparquet import voparquet
from broker.votable import Field, VOTableError, field_of
from tests.support.stilts import votlint
from tests.test_votable_writer import _described, _mixed

CONTENT = b"IVOA.VOTable-Parquet.content"


def _metadata(data: bytes) -> dict[bytes, bytes]:
    return pq.ParquetFile(io.BytesIO(data)).metadata.metadata


def _votable(data: bytes) -> Any:
    return parse(io.BytesIO(_metadata(data)[CONTENT]))


def test_every_value_and_null_reads_back_a_row_group_a_batch() -> None:
    first, second = _mixed(500, 1), _mixed(333, 2)
    batches = [pa.RecordBatch.from_pydict(first), pa.RecordBatch.from_pydict(second)]
    fields = [field_of(f.name, f.type) for f in batches[0].schema]
    chunks = list(voparquet(fields, batches))
    assert len(chunks) == 3  # each row group as it is written, then the footer
    read = pq.read_table(io.BytesIO(b"".join(chunks)))
    assert pq.ParquetFile(io.BytesIO(b"".join(chunks))).num_row_groups == 2
    for name in first:
        want = pa.concat_arrays([first[name], second[name]])
        assert read[name].type == want.type, name
        assert read[name].to_pylist() == want.to_pylist(), name  # NULLs as None


def test_the_votable_describes_each_column_in_order() -> None:
    batch = pa.RecordBatch.from_pydict(_mixed(50, 3))
    fields = _described(batch)
    fields[0] = Field("alert_id", "long", ucd="meta.id;meta.main", xtype="ivoa:identifier",
                      description="The alert")
    data = b"".join(voparquet(fields, [batch], name="lanner.alert_rows",
                              trailer=[("QUERY_STATUS", "OVERFLOW")], description="Ωmega"))
    metadata = _metadata(data)
    assert metadata[b"IVOA.VOTable-Parquet.version"] == b"1.0"
    votable = _votable(data)
    resource = votable.resources[0]
    assert resource.type == "results"
    assert [(i.name, i.value) for i in resource.infos] == [
        ("QUERY_STATUS", "OK"), ("QUERY_STATUS", "OVERFLOW")]
    table = resource.tables[0]
    assert (table.name, table.description) == ("lanner.alert_rows", "Ωmega")
    assert b"<DATA" not in metadata[CONTENT]  # the Note: a TABLE without DATA
    got = [(f.name, f.datatype, f.ucd, f.unit and str(f.unit), f.xtype, f.description)
           for f in table.fields]
    assert got == [(f.name, f.datatype, f.ucd, f.unit, f.xtype, f.description) for f in fields]
    # The N'th FIELD, as astropy types it, is the N'th Parquet column (the Note's "one-to-one
    # mapping"): names in order, and numbers of the same numpy type.
    empty = table.to_table()
    schema = pq.read_schema(io.BytesIO(data))
    assert empty.colnames == schema.names
    for column in schema:
        if not pa.types.is_string(column.type):
            assert empty[column.name].dtype == np.dtype(column.type.to_pandas_dtype()), column


def test_columns_take_the_type_of_their_field() -> None:
    """A TAP_SCHEMA ``int`` or ``short`` over the database's 64-bit integers is written as
    such; a value that does not fit is refused, not wrapped."""
    batch = pa.RecordBatch.from_pydict({"ndet": pa.array([1, None, 3], pa.int64()),
                                        "code": pa.array([7, 8, None], pa.int64())})
    fields = [Field("ndet", "int"), Field("code", "short")]
    read = pq.read_table(io.BytesIO(b"".join(voparquet(fields, [batch]))))
    assert (read["ndet"].type, read["code"].type) == (pa.int32(), pa.int16())
    assert read["ndet"].to_pylist() == [1, None, 3]
    big = pa.RecordBatch.from_pydict({"ndet": pa.array([2**40], pa.int64()),
                                      "code": pa.array([1], pa.int64())})
    with pytest.raises(VOTableError, match="ndet"):
        b"".join(voparquet(fields, [big]))
    with pytest.raises(VOTableError, match="not written yet"):
        b"".join(voparquet([Field("when", "double", arraysize="2")], []))


def test_no_rows_is_a_file_with_the_fields() -> None:
    batch = pa.RecordBatch.from_pydict(_mixed(20, 3))
    fields = [field_of(f.name, f.type) for f in batch.schema]
    for batches in ([], [batch.slice(0, 0)]):
        data = b"".join(voparquet(fields, batches))
        read = pq.read_table(io.BytesIO(data))
        assert read.num_rows == 0
        assert read.schema.names == [f.name for f in fields]
        assert len(_votable(data).resources[0].tables[0].fields) == len(fields)


def test_unicode_text_is_written_as_parquet_strings() -> None:
    values = ["Bételgeuse", None, "", "東京", "star \N{GLOWING STAR}"]
    batch = pa.RecordBatch.from_pydict({"name": pa.array(values)})
    data = b"".join(voparquet([Field("name", "unicodeChar", arraysize="*")], [batch]))
    assert pq.read_table(io.BytesIO(data))["name"].to_pylist() == values


def test_votlint_finds_nothing_in_the_embedded_votable(tmp_path) -> None:
    batch = pa.RecordBatch.from_pydict(_mixed(50, 3))
    data = b"".join(voparquet(_described(batch), [batch],
                              trailer=[("QUERY_STATUS", "OVERFLOW")]))
    assert votlint(_metadata(data)[CONTENT], tmp_path) == []
