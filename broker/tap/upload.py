"""Tables a TAP request uploads (DALI's ``UPLOAD=name,param:part``), read into Arrow and described
as TAP_SCHEMA would describe them, under the schema ``TAP_UPLOAD``.

Uploads come in the request itself (``param:``, a part of a multipart POST), or from an
``http(s)`` URL the service fetches (`fetch`: public addresses only, see there). An upload is a
VOTable, read by astropy: its columns of numbers, booleans and text (one value per cell) become
the table's columns; arrays are refused. Sizes are bounded by the caller's tier (bytes) and by
`MAX_ROWS`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
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
    description and its rows."""

    name: str
    table: TapTable
    data: pa.Table

    @property
    def key(self) -> str:
        return self.table.name.lower()


def parse_spec(spec: str, *, urls: bool = False) -> list[tuple[str, str]]:
    """``UPLOAD``'s value: (table name, ``param:part`` or URL) pairs, ``;``-separated."""
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
        scheme = uri.split(":", 1)[0].lower()
        if scheme != "param" and not (urls and scheme in ("http", "https")):
            raise UploadError(f"UPLOAD {name}: tables come with the request (param:part)"
                              + (" or from an http(s) URL" if urls else "")
                              + f", not from {scheme}:")
        pairs.append((name, uri))
    if not pairs:
        raise UploadError("UPLOAD names no table")
    if len(pairs) > MAX_TABLES:
        raise UploadError(f"at most {MAX_TABLES} tables may be uploaded at once")
    names = [n.lower() for n, _ in pairs]
    if len(set(names)) != len(names):
        raise UploadError("two uploaded tables have the same name")
    return pairs


def read(spec: str, parts: Mapping[str, bytes], max_bytes: int, *,
         fetch: Callable[[str, int], bytes] | None = None) -> list[Upload]:
    """The tables ``spec`` names, read from the request's ``parts`` (part name → bytes), or
    from URLs by ``fetch`` (refused when None)."""
    pairs = parse_spec(spec, urls=fetch is not None)
    if max_bytes <= 0:
        raise UploadError("uploads need a token of a tier that allows them (docs/api.md)")
    total = 0
    uploads = []
    for name, part in pairs:
        body: bytes | None
        if part.lower().startswith(("http://", "https://")):
            assert fetch is not None
            body = fetch(part, max_bytes - total)
        else:
            body = parts.get(part.removeprefix("param:"))
        if body is None:
            raise UploadError(f"UPLOAD {name}: the request has no part "
                              f"{part.removeprefix('param:')!r}")
        total += len(body)
        if total > max_bytes:
            raise UploadError(f"the uploads are larger than your tier's {max_bytes:,} bytes")
        uploads.append(_table(name, body))
    return uploads


def resolve(spec: str, parts: Mapping[str, bytes], max_bytes: int,
            fetch: Callable[[str, int], bytes] | None) -> tuple[str, dict[str, bytes]]:
    """``spec`` and ``parts`` with every URL fetched now into a part of its own (an
    asynchronous job keeps its tables as they were when it was made)."""
    out = dict(parts)
    items = []
    for name, uri in parse_spec(spec, urls=fetch is not None):
        kept = uri
        if uri.lower().startswith(("http://", "https://")):
            assert fetch is not None
            part = f"lanner_url_{name}"
            out[part] = fetch(uri, max_bytes)
            kept = f"param:{part}"
        items.append(f"{name},{kept}")
    return ";".join(items), out


def _table(name: str, body: bytes) -> Upload:
    from astropy.io.votable import parse_single_table  # noqa: PLC0415 - heavy

    try:
        votable = parse_single_table(io.BytesIO(body), verify="ignore")
    except Exception as exc:  # astropy raises many kinds for a broken document
        raise UploadError(f"UPLOAD {name} is not a VOTable astropy can read: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from None
    if len(votable.array) > MAX_ROWS:
        raise UploadError(f"UPLOAD {name} has {len(votable.array):,} rows; at most "
                          f"{MAX_ROWS:,}")
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
                                 field.xtype or None,
                                 field.unit.to_string() if field.unit else None,
                                 field.ucd, None, field.description, True, False, False))
    table = TapTable(SCHEMA, f"{SCHEMA}.{name}", f"The table uploaded as {name}",
                     tuple(columns))
    data = pa.table(arrays, names=[c.name for c in columns])
    return Upload(name, table, data)


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


#: How long a URL upload may take to arrive, in seconds.
FETCH_TIMEOUT_S = 30.0


def fetch(url: str, max_bytes: int) -> bytes:
    """An uploaded table at an http(s) URL, at most ``max_bytes``.

    The service must not become a way into its own network: the host's every address must be
    a public one (not loopback, private, link-local, reserved or multicast), redirects are not
    followed (each would need the same check), and the body is cut at ``max_bytes``. A host
    whose DNS answer changes between this check and the connection is the one gap left; an
    operator who cannot accept it turns URL uploads off (``tap_upload_urls``).
    """
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.parse  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadError(f"cannot fetch {url!r}: an upload URL is http(s)://host/...")
    try:
        found = socket.getaddrinfo(parts.hostname, parts.port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise UploadError(f"cannot fetch {url}: {exc}") from None
    for *_, address in found:
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global:
            raise UploadError(f"cannot fetch {url}: {parts.hostname} is not a public address")

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            raise UploadError(f"cannot fetch {url}: it redirects, and redirects are not "
                              "followed")

    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=FETCH_TIMEOUT_S) as answer:
            body = answer.read(max_bytes + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise UploadError(f"cannot fetch {url}: {exc}") from None
    if len(body) > max_bytes:
        raise UploadError(f"the uploads are larger than your tier's limit ({url})")
    return bytes(body)
