"""`broker.votable`: astropy reads back, value for value and NULL for NULL, every table the
writer writes as BINARY2 and as TABLEDATA, across block and batch boundaries; and STILTS's
votlint reports nothing on either, nor on the TAP route's error document (where STILTS is
missing, those tests fail under CI and are skipped elsewhere: tests/support/stilts.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from astropy.io.votable import parse, parse_single_table

from broker.tap.output import error_document
from broker.votable import Field, VOTableError, binary2, binary2_rows, field_of, tabledata
from tests.support.stilts import votlint


def _mixed(n: int, seed: int) -> dict[str, pa.Array]:
    rng = np.random.default_rng(seed)

    def maybe(value: Any, share: float = 0.2) -> Any:
        return None if rng.random() < share else value

    return {
        "alert_id": pa.array(rng.integers(-(2**62), 2**62, n), pa.int64()),
        "ra": pa.array([maybe(float(rng.uniform(0, 360))) for _ in range(n)]),
        "mag": pa.array([maybe(float(rng.uniform(15, 25))) for _ in range(n)], pa.float32()),
        "ndet": pa.array([maybe(int(rng.integers(-2**31, 2**31))) for _ in range(n)],
                         pa.int32()),
        "code": pa.array([maybe(int(rng.integers(-300, 300))) for _ in range(n)], pa.int16()),
        "tiny": pa.array([maybe(int(rng.integers(0, 256))) for _ in range(n)], pa.uint8()),
        "flagged": pa.array([maybe(bool(rng.random() < 0.5)) for _ in range(n)]),
        "object_id": pa.array([maybe("ZTF" + "x" * int(rng.integers(0, 15)), 0.1)
                               for _ in range(n)]),
        "band": pa.array([str(rng.choice(list("ugrizy"))) for _ in range(n)]),
        "note": pa.array([maybe("<a & 'b'>\"", 0.5) for _ in range(n)]),
    }


def _read(document: bytes) -> Any:
    return parse_single_table(io.BytesIO(document)).to_table()


def _assert_same(table: Any, columns: dict[str, pa.Array]) -> None:
    assert list(table.colnames) == list(columns)
    for name, column in columns.items():
        got = table[name]
        mask = np.ma.getmaskarray(got)
        for i, want in enumerate(column.to_pylist()):
            if want is None and pa.types.is_string(column.type):
                # astropy ignores the NULL flag of char fields (its issue 8995): "" it is.
                # test_null_flags_are_set checks the flags themselves.
                assert got[i] == "", (name, i)
            elif want is None:
                value = got[i]
                assert mask[i] or (isinstance(value, float) and np.isnan(value)), (name, i)
            else:
                assert not mask[i], (name, i)
                expected = np.float32(want) if pa.types.is_float32(column.type) else want
                assert got[i] == expected, (name, i, got[i], want)


@pytest.mark.parametrize("writer", [
    lambda fields, batches: binary2(fields, batches, block_rows=97), tabledata],
    ids=["binary2", "tabledata"])
def test_every_value_and_null_reads_back(writer: Callable[..., Any]) -> None:
    first, second = _mixed(500, 1), _mixed(333, 2)
    batches = [pa.RecordBatch.from_pydict(first), pa.RecordBatch.from_pydict(second)]
    fields = [field_of(f.name, f.type) for f in batches[0].schema]
    document = b"".join(writer(fields, batches))
    both = {k: pa.concat_arrays([first[k], second[k]]) for k in first}
    _assert_same(_read(document), both)


def test_the_document_carries_its_status_fields_and_trailer() -> None:
    batch = pa.RecordBatch.from_pydict({"id": pa.array([1, 2], pa.int64())})
    fields = [field_of("id", pa.int64(), ucd="meta.id;meta.main", unit=None,
                       description="An id & more")]
    document = b"".join(binary2(fields, [batch], infos=[("QUERY_STATUS", "OK")],
                                trailer=[("QUERY_STATUS", "OVERFLOW")]))
    votable = parse(io.BytesIO(document))
    resource = votable.resources[0]
    assert resource.type == "results"
    assert [(i.name, i.value) for i in resource.infos] == [
        ("QUERY_STATUS", "OK"), ("QUERY_STATUS", "OVERFLOW")]
    field = resource.tables[0].fields[0]
    assert (field.ucd, field.description) == ("meta.id;meta.main", "An id & more")


def test_no_rows_and_only_null_text_read_back() -> None:
    empty = pa.RecordBatch.from_pydict({"id": pa.array([], pa.int64()),
                                        "name": pa.array([], pa.string())})
    fields = [field_of(f.name, f.type) for f in empty.schema]
    assert len(_read(b"".join(binary2(fields, [empty])))) == 0
    nulls = {"name": pa.array([None, None, None], pa.string()),
             "id": pa.array([1, None, 3], pa.int64())}
    batch = pa.RecordBatch.from_pydict(nulls)
    fields = [field_of(f.name, f.type) for f in batch.schema]
    _assert_same(_read(b"".join(binary2(fields, [batch]))), nulls)


def test_null_flags_are_set() -> None:
    """Each row starts with one bit per field, most significant first, set for NULL (here ten
    fields: two bytes), string fields included."""
    columns = {f"c{i}": pa.array([None if (row + i) % 3 == 0 else ("x" if i % 2 else 7)
                                  for row in range(6)], pa.string() if i % 2 else pa.int64())
               for i in range(10)}
    batch = pa.RecordBatch.from_pydict(columns)
    fields = [field_of(f.name, f.type) for f in batch.schema]
    raw = binary2_rows(fields, batch).tobytes()
    at = 0
    for row in range(6):
        bits = int.from_bytes(raw[at:at + 2], "big")
        assert [bool(bits >> (15 - i) & 1) for i in range(10)] == [
            (row + i) % 3 == 0 for i in range(10)], row
        at += 2
        for i in range(10):  # step over the fields: an int64, or a length and its bytes
            if i % 2:
                at += 4 + int.from_bytes(raw[at:at + 4], "big")
            else:
                at += 8
    assert at == len(raw)


def test_text_a_char_field_cannot_hold_is_refused() -> None:
    batch = pa.RecordBatch.from_pydict({"name": pa.array(["Vega", "Bételgeuse"])})
    fields = [field_of("name", pa.string())]
    with pytest.raises(VOTableError, match="outside ASCII"):
        b"".join(binary2(fields, [batch]))
    for writer in (binary2, tabledata):  # as a streamed answer says it
        document = b"".join(writer(fields, [batch], report=True))
        infos = [i for r in parse(io.BytesIO(document)).resources for i in r.infos]
        assert [i.value for i in infos] == ["OK", "ERROR"]
        assert "outside ASCII" in infos[-1].content
    with pytest.raises(VOTableError, match="no VOTable datatype"):
        field_of("when", pa.timestamp("us"))


def test_blocks_smaller_than_a_base64_quantum_join_up() -> None:
    """Rows of two bytes (one flag byte, one boolean) written one per block: every block is
    shorter than base64's three-byte quantum."""
    values = {"ok": pa.array([True, None, False, True, None, False, False])}
    batch = pa.RecordBatch.from_pydict(values)
    fields = [field_of("ok", pa.bool_())]
    _assert_same(_read(b"".join(binary2(fields, [batch], block_rows=1))), values)


_UNICODE = ["Bételgeuse", None, "", "Ωmega Centauri", "東京", "naïve <&> 'q'", "plain"]


def test_unicode_text_reads_back_as_unicodechar() -> None:
    """unicodeChar (UCS-2) carries text outside ASCII, in both serializations."""
    values = {"name": pa.array(_UNICODE), "id": pa.array(range(len(_UNICODE)), pa.int32())}
    batch = pa.RecordBatch.from_pydict(values)
    fields = [Field("name", "unicodeChar", arraysize="*"), field_of("id", pa.int32())]
    for writer in (binary2, tabledata):
        table = _read(b"".join(writer(fields, [batch])))
        assert [str(v) for v in table["name"]] == [v or "" for v in _UNICODE], writer
        assert list(table["id"]) == list(range(len(_UNICODE)))
    beyond = pa.RecordBatch.from_pydict({"name": pa.array(["star \N{GLOWING STAR}"])})
    for writer in (binary2, tabledata):
        with pytest.raises(VOTableError, match="Basic Multilingual Plane"):
            b"".join(writer(fields[:1], [beyond]))


def test_a_fixed_arraysize_text_field_is_refused() -> None:
    batch = pa.RecordBatch.from_pydict({"band": pa.array(["g", "r"])})
    with pytest.raises(VOTableError, match="fixed arraysize 1"):
        b"".join(binary2([Field("band", "char")], [batch]))


def _described(batch: pa.RecordBatch) -> list[Field]:
    """FIELDs as TAP_SCHEMA describes columns: UCDs, units, descriptions, an xtype."""
    meta = {"alert_id": ("meta.id;meta.main", None), "ra": ("pos.eq.ra", "deg"),
            "mag": ("phot.mag", "mag"), "ndet": ("meta.number", None)}
    fields = []
    for f in batch.schema:
        ucd, unit = meta.get(f.name, (None, None))
        fields.append(field_of(f.name, f.type, ucd=ucd, unit=unit,
                               description=f"The {f.name} & <more>"))
    return fields


def _lint_cases() -> dict[str, tuple[list[Field], list[pa.RecordBatch], dict[str, Any]]]:
    mixed = [pa.RecordBatch.from_pydict(_mixed(300, 3)), pa.RecordBatch.from_pydict(_mixed(7, 4))]
    empty = mixed[0].slice(0, 0)
    unicode = pa.RecordBatch.from_pydict({"name": pa.array(_UNICODE),
                                          "ascii": pa.array([v and "x" for v in _UNICODE])})
    return {
        "mixed_with_nulls": (_described(mixed[0]), mixed, {}),
        "overflow": (_described(mixed[0]), mixed[:1],
                     {"trailer": [("QUERY_STATUS", "OVERFLOW")]}),
        "empty_batch": (_described(empty), [empty], {}),
        "no_batches": (_described(empty), [], {}),
        "unicode": ([Field("name", "unicodeChar", arraysize="*", ucd="meta.id"),
                     field_of("ascii", pa.string())], [unicode], {"description": "Ωmega"}),
    }


@pytest.mark.parametrize("case", ["mixed_with_nulls", "overflow", "empty_batch", "no_batches",
                                  "unicode"])
@pytest.mark.parametrize("writer", [binary2, tabledata], ids=["binary2", "tabledata"])
def test_votlint_finds_nothing(writer: Callable[..., Any], case: str, tmp_path) -> None:
    fields, batches, options = _lint_cases()[case]
    document = b"".join(writer(fields, batches, block_rows=64, **options)
                        if writer is binary2 else writer(fields, batches, **options))
    assert votlint(document, tmp_path) == []


def test_votlint_finds_nothing_in_the_tap_error_document(tmp_path) -> None:
    document = error_document("no table 'lanner.nope' <here> & \"there\": Ωmega").encode()
    assert b'value="ERROR"' in document
    assert votlint(document, tmp_path) == []


def test_votlint_reports_a_document_that_lies(tmp_path) -> None:
    """The check can fail: a document whose FIELD is edited to say ``int`` over a stream of
    ``long`` values (the row ``1, "ccc"`` then reads as two rows, the second cut short), and a
    TABLEDATA row with one cell too many."""
    batch = pa.RecordBatch.from_pydict({"id": pa.array([1], pa.int64()),
                                        "name": pa.array(["ccc"])})
    lying = b"".join(binary2([field_of("id", pa.int64()), field_of("name", pa.string())],
                             [batch])).replace(b'datatype="long"', b'datatype="int"')
    assert any(line.startswith("ERROR") for line in votlint(lying, tmp_path))
    batch = pa.RecordBatch.from_pydict({"id": pa.array([1, 2, 3], pa.int32())})
    extra = b"".join(tabledata([field_of("id", pa.int32())], [batch])).replace(
        b"<TD>2</TD>", b"<TD>2</TD><TD>9</TD>")
    assert any("Wrong number of TDs" in line for line in votlint(extra, tmp_path))


@pytest.mark.parametrize("writer", [
    lambda fields, batches: binary2(fields, batches, block_rows=64, report=True),
    lambda fields, batches: tabledata(fields, batches, report=True)],
    ids=["binary2", "tabledata"])
def test_rows_that_fail_part_way_end_the_document_with_an_error(
        writer: Callable[..., Any], tmp_path) -> None:
    columns = _mixed(200, 7)
    batch = pa.RecordBatch.from_pydict(columns)
    fields = [field_of(name, array.type) for name, array in columns.items()]

    def batches() -> Any:
        yield batch
        raise RuntimeError("the shard went away")

    document = b"".join(writer(fields, batches()))
    # The rows written before the failure read back whole, and the status after them says
    # what happened.
    _assert_same(_read(document), columns)
    infos = [i for r in parse(io.BytesIO(document)).resources for i in r.infos]
    assert [i.value for i in infos] == ["OK", "ERROR"]
    assert "the shard went away" in infos[-1].content
    assert votlint(document, tmp_path) == []
