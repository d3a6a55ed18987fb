"""The schema walk: how a dict of simulated values becomes a record of any Rubin alert schema.

The alert schema of a version shipped by ``lsst-alert-packet`` is walked once (`schema_plan`, cached
per schema id) into one `RecordPlan` per record kind (alert, diaSource, diaForcedSource,
diaObject, and ssSource and mpc_orbits where the schema has them; a missing kind gets an empty
plan). A plan holds a template record, every field at a valid value of its type (``null`` where
nullable, ``False`` for the nullable flags of a ``diaSource``), and the list of fields the
simulator may fill: a field takes a simulated value only if the value's Python type fits the
field's Avro type (and, for a 32-bit ``int``, its range); every other field keeps its template
value. Older schema versions name some fields differently (``decl``, ``midPointTai``,
``psFlux``...): the alias tables map them to the newest names, which the simulator uses throughout.

Plain Python over the parsed schema; nothing here draws a random number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from broker.streaming.schemas import schema_definition

__all__ = ["RecordPlan", "SchemaPlan", "schema_plan"]

_PY_TYPES: dict[str, frozenset[type]] = {
    "boolean": frozenset({bool}),
    "int": frozenset({int}),
    "long": frozenset({int}),
    "float": frozenset({float, int}),
    "double": frozenset({float, int}),
    "string": frozenset({str}),
    "bytes": frozenset({bytes}),
}
_PRIMITIVE_DEFAULTS: dict[str, Any] = {
    "null": None,
    "boolean": False,
    "int": 0,
    "long": 0,
    "float": 0.0,
    "double": 0.0,
    "string": "",
    "bytes": b"",
}
_TIMESTAMPS = ("timestamp-micros", "timestamp-millis")


def _branches(avro_type: Any) -> list[Any]:
    return avro_type if isinstance(avro_type, list) else [avro_type]


def _collect_named(avro_type: Any, named: dict[str, Any]) -> None:
    """Register every named type of a schema under its full name (references point at them)."""
    for branch in _branches(avro_type):
        if not isinstance(branch, dict):
            continue
        kind = branch.get("type")
        if kind in ("record", "enum", "fixed") and "name" in branch:
            named.setdefault(branch["name"], branch)
        if kind == "record":
            for field in branch["fields"]:
                _collect_named(field["type"], named)
        elif kind == "array":
            _collect_named(branch["items"], named)
        elif kind == "map":
            _collect_named(branch["values"], named)


def _resolve(avro_type: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(avro_type, str) and avro_type in named:
        return named[avro_type]
    return avro_type


def _default(avro_type: Any, named: Mapping[str, Any], *, false_flags: bool = False) -> Any:
    """A valid value of any Avro type: null if nullable, else the type's zero."""
    branches = _branches(avro_type)
    if isinstance(avro_type, list):
        if "null" not in branches:
            return _default(branches[0], named)
        others = [b for b in branches if b != "null"]
        return False if false_flags and others == ["boolean"] else None
    resolved = _resolve(avro_type, named)
    if isinstance(resolved, str):
        return _PRIMITIVE_DEFAULTS[resolved]
    kind = resolved["type"]
    makers: dict[str, Callable[[], Any]] = {
        "record": lambda: {f["name"]: _default(f["type"], named) for f in resolved["fields"]},
        "array": list,
        "map": dict,
        "enum": lambda: resolved["symbols"][0],
        "fixed": lambda: bytes(resolved["size"]),
    }
    maker = makers.get(kind)
    return maker() if maker is not None else _default(kind, named)


def _accepted(avro_type: Any, named: Mapping[str, Any]) -> tuple[frozenset[type], bool]:
    """Python types a field takes from the simulator, and whether ints must fit in 32 bits."""
    accepted: set[type] = set()
    names: set[str] = set()
    for branch in _branches(avro_type):
        resolved = _resolve(branch, named)
        if isinstance(resolved, dict):
            kind = resolved["type"]
            if resolved.get("logicalType") in _TIMESTAMPS and kind == "long":
                accepted.add(int)
                names.add("long")
                continue
            if "logicalType" in resolved:
                continue
            if kind == "record":
                accepted.add(dict)
                continue
            if kind == "array":
                accepted.add(list)
                continue
            resolved = kind
        if isinstance(resolved, str) and resolved in _PY_TYPES:
            accepted |= _PY_TYPES[resolved]
            names.add(resolved)
    return frozenset(accepted), "int" in names and "long" not in names


@dataclass(frozen=True, slots=True)
class RecordPlan:
    """How to turn a dict of simulated values into a record of one schema's record type."""

    template: dict[str, Any]
    fill: tuple[tuple[str, str, frozenset[type], bool], ...]
    deep: bool

    @classmethod
    def build_plan(
        cls,
        record_schema: Mapping[str, Any],
        named: Mapping[str, Any],
        aliases: Mapping[str, str],
        *,
        false_flags: bool = False,
    ) -> RecordPlan:
        """The plan of one record schema; ``aliases`` maps its field names to the newest ones."""
        template: dict[str, Any] = {}
        fill = []
        for field in record_schema["fields"]:
            name = field["name"]
            template[name] = _default(field["type"], named, false_flags=false_flags)
            accepted, int32 = _accepted(field["type"], named)
            if accepted:
                fill.append((name, aliases.get(name, name), accepted, int32))
        deep = any(isinstance(v, list | dict) for v in template.values())
        return cls(template, tuple(fill), deep)

    def build(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A record: the template with every value of a fitting type filled in."""
        record = copy.deepcopy(self.template) if self.deep else self.template.copy()
        for name, key, accepted, int32 in self.fill:
            value = values.get(key)
            if value is None or type(value) not in accepted:
                continue
            if int32 and not -(2**31) <= value < 2**31:
                continue
            record[name] = value
        return record


# Field names of older schema versions that mean what a newer name means.
_SOURCE_ALIASES = {
    "decl": "dec",
    "declErr": "decErr",
    "ra_decl_Cov": "ra_dec_Cov",
    "midPointTai": "midpointMjdTai",
    "filterName": "band",
    "psFlux": "psfFlux",
    "psFluxErr": "psfFluxErr",
    "totFlux": "scienceFlux",
    "totFluxErr": "scienceFluxErr",
    "time_processed": "_timeProcessedMicros",
    "is_negative": "isNegative",
}
_OBJECT_ALIASES = {"decl": "dec", "declErr": "decErr", "validityStart": "_validityStartMicros"}
_ALERT_ALIASES = {"alertId": "diaSourceId"}


@dataclass(frozen=True, slots=True)
class SchemaPlan:
    """The record plans of one alert schema version."""

    alert: RecordPlan
    source: RecordPlan
    forced: RecordPlan
    dia_object: RecordPlan
    ss_source: RecordPlan
    mpc_orbits: RecordPlan
    # Alert fields that are ``null`` or one record/array, with that branch's name. fastavro's
    # writer validates a whole sub-record to choose a union branch; naming the branch (its tuple
    # notation) skips that and writes the same bytes.
    union_hints: dict[str, str]

    def hinted(self, record: dict[str, Any]) -> dict[str, Any]:
        """A shallow copy of an alert record with its union branches named for fastavro."""
        hinted = dict(record)
        for name, branch in self.union_hints.items():
            value = hinted.get(name)
            if value is not None:
                hinted[name] = (branch, value)
        return hinted


def _union_hints(definition: Mapping[str, Any], named: Mapping[str, Any]) -> dict[str, str]:
    hints = {}
    for field in definition["fields"]:
        branches = _branches(field["type"])
        others = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(others) != 1:
            continue
        resolved = _resolve(others[0], named)
        if isinstance(resolved, dict) and resolved.get("type") in ("record", "array", "map"):
            hints[field["name"]] = resolved.get("name") or resolved["type"]
    return hints


def _record_of(avro_type: Any, named: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record schema inside a (nullable, possibly array-of) field type."""
    for branch in _branches(avro_type):
        resolved = _resolve(branch, named)
        if isinstance(resolved, dict) and resolved.get("type") == "array":
            resolved = _resolve(resolved["items"], named)
        if isinstance(resolved, dict) and resolved.get("type") == "record":
            return resolved
    return None


@cache
def schema_plan(schema_id: int) -> SchemaPlan:
    """The plans of every record kind of one alert schema version (built once per id)."""
    definition = schema_definition(schema_id)
    named: dict[str, Any] = {}
    _collect_named(definition, named)
    fields = {f["name"]: f["type"] for f in definition["fields"]}
    empty: Mapping[str, Any] = {"fields": []}
    source = _record_of(fields.get("diaSource"), named) or empty
    forced = _record_of(fields.get("prvDiaForcedSources"), named) or empty
    dia_object = _record_of(fields.get("diaObject"), named) or empty
    ss_source = _record_of(fields.get("ssSource"), named) or empty
    mpc_orbits = _record_of(fields.get("mpc_orbits"), named) or empty
    return SchemaPlan(
        alert=RecordPlan.build_plan(definition, named, _ALERT_ALIASES),
        source=RecordPlan.build_plan(source, named, _SOURCE_ALIASES, false_flags=True),
        forced=RecordPlan.build_plan(forced, named, _SOURCE_ALIASES),
        dia_object=RecordPlan.build_plan(dia_object, named, _OBJECT_ALIASES),
        ss_source=RecordPlan.build_plan(ss_source, named, {}),
        mpc_orbits=RecordPlan.build_plan(mpc_orbits, named, {}),
        union_hints=_union_hints(definition, named),
    )

