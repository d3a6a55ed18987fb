"""Lanner's own topic schemas, read from ``schemas/avro`` (see its README)."""

from __future__ import annotations

import io
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro

from broker.exceptions import UnknownSchemaError
from broker.streaming import wire

#: ``schemas/avro`` of the repository, carried by the package as ``broker/data/schemas``.
SCHEMA_ROOT = Path(str(resources.files("broker") / "data" / "schemas" / "avro"))


@cache
def _ids() -> dict[str, dict[str, int]]:
    raw = json.loads((SCHEMA_ROOT / "ids.json").read_text())
    return {name: versions for name, versions in raw.items() if not name.startswith("_")}


@cache
def latest(family: str) -> str:
    """The latest version of a family, e.g. ``"1.0"`` (read once: encoding every record
    asks for it)."""
    return (SCHEMA_ROOT / family / "latest.txt").read_text().strip()


def schema_id(family: str, version: str | None = None) -> int:
    """Wire-format id of a family's version (latest by default)."""
    return _ids()[f"lanner.{family}"][version or latest(family)]


@cache
def parsed(family: str, version: str | None = None) -> Any:
    """The parsed schema of a family's version (latest by default)."""
    version = version or latest(family)
    major, minor = version.split(".")
    path = SCHEMA_ROOT / family / major / minor / f"lanner.{family}.avsc"
    return fastavro.parse_schema(json.loads(path.read_text()))


def encode(family: str, record: dict[str, Any]) -> bytes:
    """A record of the latest version in the Confluent wire format."""
    buffer = io.BytesIO()
    buffer.write(wire.write_header(schema_id(family)))
    fastavro.schemaless_writer(buffer, parsed(family), record)
    return buffer.getvalue()


def decode(family: str, message: bytes) -> dict[str, Any]:
    """Read a wire-format record of any known version of a family (typed errors as
    `broker.streaming.wire.decode`)."""
    sid = wire.read_header(message)
    for version, known in _ids()[f"lanner.{family}"].items():
        if known == sid:
            return wire.read_body(message, parsed(family, version), sid)
    raise UnknownSchemaError(sid, list(_ids()[f"lanner.{family}"].values()))


def families() -> dict[str, dict[str, int]]:
    """Every family's versions and their schema ids: ``{"lanner.enriched": {"1.0": id}}``."""
    return dict(_ids())


def schema_text(family: str, version: str) -> str:
    """A family's version as the JSON text a schema registry serves."""
    major, minor = version.split(".")
    path = SCHEMA_ROOT / family / major / minor / f"lanner.{family}.avsc"
    return json.dumps(json.loads(path.read_text()), separators=(",", ":"))
