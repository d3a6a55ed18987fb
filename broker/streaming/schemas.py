"""Rubin alert schemas, resolved from the ``lsst-alert-packet`` package at run time.

Rubin's schemas are GPL-3.0 and ship with that package (every version plus ``latest.txt``); Lanner
never copies them. A schema id is ``major * 100 + minor`` (11.1 -> 1101), the id Rubin's schema
registry uses in the Confluent wire-format header. Parsed schemas are cached per process.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from lsst.alert.packet import schema as lsst_schema

from broker.exceptions import UnknownSchemaError

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """A Rubin alert schema version such as 11.1."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> SchemaVersion:
        """Read ``"11.1"`` into a version; raise ValueError on anything else."""
        match = _VERSION_RE.match(text.strip())
        if not match:
            msg = f"schema version {text!r} is not MAJOR.MINOR"
            raise ValueError(msg)
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_id(cls, schema_id: int) -> SchemaVersion:
        """The version of a registry id (1101 -> 11.1)."""
        return cls(schema_id // 100, schema_id % 100)

    @property
    def schema_id(self) -> int:
        """Registry id: ``major * 100 + minor``."""
        return self.major * 100 + self.minor

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def _schema_root() -> Path:
    return Path(str(lsst_schema.get_schema_root()))


@cache
def available_versions() -> tuple[SchemaVersion, ...]:
    """Every alert schema version the installed ``lsst-alert-packet`` ships, oldest first."""
    versions = []
    for alert_file in _schema_root().glob("*/*/lsst.v*_*.alert.avsc"):
        major, minor = alert_file.parent.parent.name, alert_file.parent.name
        if major.isdigit() and minor.isdigit():
            versions.append(SchemaVersion(int(major), int(minor)))
    return tuple(sorted(versions, key=lambda v: (v.major, v.minor)))


def latest_version() -> SchemaVersion:
    """The version the package marks as latest."""
    major, minor = lsst_schema.get_latest_schema_version()
    return SchemaVersion(major, minor)


_lock = threading.Lock()
_parsed: dict[int, Any] = {}


def parsed_schema(schema_id: int) -> Any:
    """The fastavro-parsed alert schema of a registry id, cached.

    Raises
    ------
    UnknownSchemaError
        If the package ships no schema for that id.
    """
    found = _parsed.get(schema_id)
    if found is not None:
        return found
    with _lock:
        found = _parsed.get(schema_id)
        if found is not None:
            return found
        version = SchemaVersion.from_id(schema_id)
        if version not in available_versions():
            raise UnknownSchemaError(schema_id, [v.schema_id for v in available_versions()])
        path = _schema_root() / str(version.major) / str(version.minor)
        # lsst-alert-packet resolves the cross-file references (diaSource, diaObject, ...)
        # in the order fastavro needs; we parse its result once and keep it.
        definition = lsst_schema.Schema.from_file(
            str(path / f"lsst.v{version.major}_{version.minor}.alert.avsc")
        ).definition
        parsed = fastavro.parse_schema(definition)
        _parsed[schema_id] = parsed
        return parsed


def schema_definition(schema_id: int) -> dict[str, Any]:
    """The alert schema of a registry id as a plain JSON-like dict (for walking its fields)."""
    return dict(parsed_schema(schema_id))


@cache
def schema_text(schema_id: int) -> str:
    """The alert schema of a registry id as the JSON text a schema registry serves: the whole
    definition, the cross-file references resolved by lsst-alert-packet."""
    version = SchemaVersion.from_id(schema_id)
    if version not in available_versions():
        raise UnknownSchemaError(schema_id, [v.schema_id for v in available_versions()])
    path = _schema_root() / str(version.major) / str(version.minor)
    definition = lsst_schema.Schema.from_file(
        str(path / f"lsst.v{version.major}_{version.minor}.alert.avsc")).definition
    return json.dumps(definition, separators=(",", ":"))
