"""Rubin packets stored without their cutouts and rebuilt byte for byte.

The archive keeps each alert's cutouts in their own table (the API serves them from there) and
the original packet for replay and provenance. Stored whole, the packet would hold the three
stamps a second time: about 26 kB of a 37 kB packet. So the packet is stored as its *head*, the
packet less the bytes of its trailing cutouts, and rebuilt from the head and the cutouts table
when it is read.

Why this is exact: in every Rubin schema shipped by lsst-alert-packet (3.0 to 11.1) the cutouts
are the last fields of the alert record, each a union ``["null", "bytes"]``, and Avro's binary
encoding writes a record as its fields in order with nothing after them (a wire-format packet
has been checked to end where its record ends). So a packet is its head followed by, for each
trailing cutout field, the union branch as a zig-zag varint (0 null, 1 bytes) and, for bytes,
the length as a zig-zag varint and the data. `strip` builds that suffix from the cutouts the
alert carries and returns the head only when the packet ends with exactly those bytes; anything
else (a cutout present but empty, which the alert model drops; a schema laid out otherwise) is
stored whole. fastavro exposes no byte offsets of fields, and re-encoding the record without its
cutouts would cost an Avro encode per alert (about 2.4 ms), hence these few lines of the Avro
specification's varint encoding.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from broker.constants import WIRE_HEADER_SIZE
from broker.streaming.schemas import schema_definition

_CUTOUT_PREFIX = "cutout"
_lock = threading.Lock()
_trailing: dict[int, tuple[str, ...]] = {}


def _zigzag_varint(value: int) -> bytes:
    """Avro's encoding of a long: zig-zag, then 7 bits per byte, low bits first."""
    n = (value << 1) ^ (value >> 63)
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_NULL = _zigzag_varint(0)
_BYTES = _zigzag_varint(1)


def trailing_cutouts(schema_id: int) -> tuple[str, ...]:
    """The cutout kinds (``"difference"``, ...) encoded last in a schema's alert record, in
    order; empty if the record does not end with ``["null", "bytes"]`` cutout fields."""
    with _lock:
        cached = _trailing.get(schema_id)
    if cached is not None:
        return cached
    kinds: list[str] = []
    for f in reversed(schema_definition(schema_id)["fields"]):
        name = f["name"]
        if not (name.startswith(_CUTOUT_PREFIX) and f["type"] == ["null", "bytes"]):
            break
        kinds.append(name[len(_CUTOUT_PREFIX):].lower())
    found = tuple(reversed(kinds))
    with _lock:
        _trailing[schema_id] = found
    return found


def _suffix(kinds: tuple[str, ...], cutouts: Mapping[str, bytes]) -> bytes:
    parts: list[bytes] = []
    for kind in kinds:
        data = cutouts.get(kind)
        if data is None:
            parts.append(_NULL)
        else:
            parts += [_BYTES, _zigzag_varint(len(data)), data]
    return b"".join(parts)


def strip(packet: bytes, schema_id: int, cutouts: Mapping[str, bytes]) -> bytes | None:
    """The packet less its trailing cutouts, or None if it must be stored whole.

    ``cutouts`` are the stamps stored beside the packet, by kind. None when the alert has no
    cutout (nothing to save), when the schema does not end with cutouts, or when the packet
    does not end with exactly the encoding of ``cutouts``.
    """
    kinds = trailing_cutouts(schema_id)
    if not kinds or not any(cutouts.get(kind) is not None for kind in kinds):
        return None
    suffix = _suffix(kinds, cutouts)
    if len(packet) - len(suffix) < WIRE_HEADER_SIZE or not packet.endswith(suffix):
        return None
    return packet[:len(packet) - len(suffix)]


def rebuild(head: bytes, schema_id: int, cutouts: Mapping[str, bytes]) -> bytes:
    """The original packet from its head (`strip`) and the same cutouts."""
    return head + _suffix(trailing_cutouts(schema_id), cutouts)


def schema_id_of(alert_schema: str) -> int | None:
    """The Rubin schema id of an ``alert_schema`` label (``"lsst:1101"``); None for others."""
    survey, _, version = alert_schema.partition(":")
    if survey != "lsst" or not version.isdigit():
        return None
    return int(version)
