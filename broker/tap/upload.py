"""Tables a TAP request uploads (DALI's ``UPLOAD=name,param:part``), read into Arrow and
described as TAP_SCHEMA would describe them, under the schema ``TAP_UPLOAD``.

Only uploads carried in the request itself (``param:``, a part of a multipart POST) are read:
a URL would make the service fetch whatever a caller names (its own network included), so it
is refused. An upload is a VOTable, read by astropy: its columns of numbers, booleans and text
(one value per cell) become the table's columns; arrays are refused. Sizes are bounded by the
caller's tier (bytes) and by `MAX_ROWS`. The position of an uploaded row, for near-neighbour
joins, is its columns with UCD ``pos.eq.ra``/``pos.eq.dec`` (``meta.main`` preferred), or else
those named ``ra``/``dec``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from broker.tap.adql import ADQLError
from broker.tap.tapschema import TapColumn, TapTable

SCHEMA = "TAP_UPLOAD"
#: The most rows one request may upload, whatever its size in bytes.
MAX_ROWS = 1_000_000
#: The most tables one request may upload.
MAX_TABLES = 4
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: VOTable datatypes an upload may hold, and their Arrow types.
_ARROW = {"boolean": pa.bool_(), "unsignedByte": pa.int16(), "short": pa.int16(),
          "int": pa.int32(), "long": pa.int64(), "float": pa.float32(),
          "double": pa.float64(), "char": pa.string(), "unicodeChar": pa.string()}


class UploadError(ADQLError):
    """An upload the service cannot take, and why."""


@dataclass(frozen=True)
class Upload:
    """One uploaded table: its name (as the query writes it, ``TAP_UPLOAD.<name>``), its
    description, its rows, and its position columns (None when it has none)."""

    name: str
    table: TapTable
    data: pa.Table
    ra: str | None
    dec: str | None

    @property
    def key(self) -> str:
        return self.table.name.lower()


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """``UPLOAD``'s value: (table name, part name) pairs, ``;``-separated."""
    pairs = []
    for item in (s.strip() for s in spec.split(";")):
        if not item:
            continue
        name, sep, uri = (p.strip() for p in item.partition(","))
        if not sep or not name or not uri:
            raise UploadError(f"UPLOAD takes name,param:part pairs, not {item!r}")
        if not _NAME.fullmatch(name):
            raise UploadError(f"an uploaded table's name is a letter then letters, digits or "
                              f"_ (at most 64), not {name!r}")
        if not uri.lower().startswith("param:"):
            raise UploadError(f"UPLOAD {name}: only tables sent with the request (param:part) "
                              "are read, never a URL the service would have to fetch")
        pairs.append((name, uri[len("param:"):]))
    if not pairs:
        raise UploadError("UPLOAD names no table")
    if len(pairs) > MAX_TABLES:
        raise UploadError(f"at most {MAX_TABLES} tables may be uploaded at once")
    names = [n.lower() for n, _ in pairs]
    if len(set(names)) != len(names):
        raise UploadError("two uploaded tables have the same name")
    return pairs


def read(spec: str, parts: Mapping[str, bytes], max_bytes: int) -> list[Upload]:
    """The tables ``spec`` names, read from the request's ``parts`` (part name → bytes)."""
    pairs = parse_spec(spec)
    if max_bytes <= 0:
        raise UploadError("uploads need a token of a tier that allows them (docs/api.md)")
    total = 0
    uploads = []
    for name, part in pairs:
        body = parts.get(part)
        if body is None:
            raise UploadError(f"UPLOAD {name}: the request has no part {part!r}")
        total += len(body)
        if total > max_bytes:
            raise UploadError(f"the uploads are larger than your tier's {max_bytes:,} bytes")
        uploads.append(_table(name, body))
    return uploads


def _table(name: str, body: bytes) -> Upload:
    from astropy.io.votable import parse_single_table  # noqa: PLC0415 - heavy

    try:
        votable = parse_single_table(io.BytesIO(body), verify="ignore")
    except Exception as exc:  # astropy raises many kinds for a broken document
        raise UploadError(f"UPLOAD {name} is not a VOTable astropy can read: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if votable.nrows > MAX_ROWS:
        raise UploadError(f"UPLOAD {name} has {votable.nrows:,} rows; at most {MAX_ROWS:,}")
    columns: list[TapColumn] = []
    arrays: list[pa.Array] = []
    seen: set[str] = set()
    for field in votable.fields:
        column_name = (field.name or field.ID or "").strip()
        if not _NAME.fullmatch(column_name) or column_name.lower() in seen:
            raise UploadError(f"UPLOAD {name}: column {column_name!r} needs a name of letters, "
                              "digits and _ that no other column has")
        seen.add(column_name.lower())
        datatype = field.datatype
        arraysize = field.arraysize
        if datatype not in _ARROW or (arraysize and datatype not in ("char", "unicodeChar")):
            raise UploadError(f"UPLOAD {name}: column {column_name} is {datatype}"
                              f"{'[' + arraysize + ']' if arraysize else ''}: only single "
                              "numbers, booleans and text are taken")
        values = votable.array[field.ID or field.name]
        arrays.append(_arrow(values, _ARROW[datatype]))
        columns.append(TapColumn(column_name, "char" if datatype == "unicodeChar" else datatype,
                                 "*" if datatype in ("char", "unicodeChar") else None,
                                 None, field.unit.to_string() if field.unit else None,
                                 field.ucd, None, field.description, True, False, False))
    table = TapTable(SCHEMA, f"{SCHEMA}.{name}", f"The table uploaded as {name}",
                     tuple(columns))
    data = pa.table(arrays, names=[c.name for c in columns])
    ra, dec = _position(columns)
    return Upload(name, table, data, ra, dec)


def _arrow(values: np.ma.MaskedArray, wanted: pa.DataType) -> pa.Array:
    mask = np.ma.getmaskarray(values)
    data = np.ma.getdata(values)
    if pa.types.is_string(wanted):
        texts = [None if m else (v.decode() if isinstance(v, bytes) else str(v))
                 for v, m in zip(data.tolist(), mask.tolist(), strict=True)]
        return pa.array(texts, pa.string())
    if pa.types.is_floating(wanted):
        mask = mask | np.isnan(data.astype(np.float64))
    return pa.array(data, mask=mask, type=wanted, from_pandas=False)


def _position(columns: list[TapColumn]) -> tuple[str | None, str | None]:
    def find(axis: str) -> str | None:
        by_ucd = [c for c in columns if c.ucd and f"pos.eq.{axis}" in c.ucd.lower()]
        main = [c for c in by_ucd if "meta.main" in (c.ucd or "").lower()]
        for group in (main, by_ucd):
            if group:
                return group[0].name
        named = [c for c in columns if c.name.lower() == axis]
        return named[0].name if named else None

    ra, dec = find("ra"), find("dec")
    return (ra, dec) if ra and dec else (None, None)
