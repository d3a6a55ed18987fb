"""The Confluent wire format of Rubin alerts: 0x00, a 4-byte big-endian schema id, an Avro body.

Encoding and decoding go through fastavro's schemaless reader and writer with the schema named by
the header. Every way a message can be wrong raises a typed `WireFormatError` subclass, so the
ingest stage can dead-letter it with a precise reason.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import fastavro

from broker.constants import WIRE_HEADER_SIZE, WIRE_MAGIC
from broker.exceptions import (
    BadMagicByteError,
    CorruptBodyError,
    TruncatedMessageError,
)
from broker.streaming.schemas import parsed_schema

_HEADER = struct.Struct(">bI")


def write_header(schema_id: int) -> bytes:
    """The five header bytes for a schema id."""
    if not 0 <= schema_id < 2**32:
        msg = f"schema id {schema_id} does not fit in 4 bytes"
        raise ValueError(msg)
    return _HEADER.pack(WIRE_MAGIC, schema_id)


def read_header(message: bytes) -> int:
    """The schema id of a message; checks the magic byte and the length.

    Raises
    ------
    TruncatedMessageError
        If the message is shorter than the five-byte header.
    BadMagicByteError
        If the first byte is not 0x00.
    """
    if len(message) < WIRE_HEADER_SIZE:
        msg = f"message of {len(message)} bytes is shorter than the {WIRE_HEADER_SIZE}-byte header"
        raise TruncatedMessageError(msg)
    magic, schema_id = _HEADER.unpack_from(message)
    if magic != WIRE_MAGIC:
        msg = f"magic byte is 0x{magic & 0xFF:02x}, expected 0x00"
        raise BadMagicByteError(msg)
    return int(schema_id)


def encode(record: dict[str, Any], schema_id: int) -> bytes:
    """Serialise an alert record with the schema of ``schema_id``, header included."""
    buffer = io.BytesIO()
    buffer.write(write_header(schema_id))
    fastavro.schemaless_writer(buffer, parsed_schema(schema_id), record)
    return buffer.getvalue()


def decode(message: bytes) -> tuple[int, dict[str, Any]]:
    """Read a wire-format message into ``(schema_id, record)``.

    Raises
    ------
    TruncatedMessageError, BadMagicByteError
        For a bad header.
    UnknownSchemaError
        If the schema id is not shipped by lsst-alert-packet.
    CorruptBodyError
        If the body cannot be read with that schema, or has bytes left over after the record.
    """
    schema_id = read_header(message)
    return schema_id, read_body(message, parsed_schema(schema_id), schema_id)


def read_body(message: bytes, schema: Any, schema_id: int) -> dict[str, Any]:
    """The Avro record after the header of ``message``, read with ``schema``.

    Raises
    ------
    TruncatedMessageError
        If the body ends before the record does.
    CorruptBodyError
        If the body does not decode, is not a record, or has bytes left over.
    """
    body = io.BytesIO(message)
    body.seek(WIRE_HEADER_SIZE)
    try:
        record = fastavro.schemaless_reader(body, schema, None)
    except (EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError,
            OverflowError, MemoryError, struct.error) as exc:
        # fastavro signals a short read in several ways (EOFError, IndexError, struct.error),
        # and a corrupt length can also raise EOFError: the reliable sign of truncation is
        # that the reader ran into the end of the message.
        if body.tell() >= len(message):
            msg = f"Avro body ends early for schema {schema_id}: {type(exc).__name__}: {exc}"
            raise TruncatedMessageError(msg) from exc
        msg = f"Avro body does not decode with schema {schema_id}: {type(exc).__name__}: {exc}"
        raise CorruptBodyError(msg) from exc
    left = len(message) - body.tell()
    if left:
        msg = f"{left} bytes left over after the Avro record of schema {schema_id}"
        raise CorruptBodyError(msg)
    if not isinstance(record, dict):
        msg = f"Avro body of schema {schema_id} is not a record"
        raise CorruptBodyError(msg)
    return record
