"""Running compiled filters over a batch of enriched alerts, vectorised with pyarrow.

`AlertBatch` turns a batch of ``lanner.enriched`` records into columns once, on first use, and
every filter run on the batch shares them: a column no filter names is never built. Cross-match,
watchlist and watchmap memberships are flattened once per batch into (row, key, value) arrays,
so a function such as ``in_watchlist(42)`` is one comparison over the batch's memberships, not
a loop over its alerts.

`run` evaluates a `Plan` with SQL's rules: three-valued logic (an alert passes only where the
condition is TRUE, never where it is NULL), NULL in, NULL out for operators and functions,
NULL for a division by zero or a result that is not a finite number (the square root of a
negative, the logarithm of zero), NULLs first in an ascending ORDER BY and last in a
descending one (MariaDB's order). String comparison is exact; LIKE ignores case, as
MariaDB's default collation does, and runs on RE2 (linear in its input).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from broker.domain.filters.columns import COLUMNS, Type
from broker.domain.filters.language import Node, Plan

_ARROW: dict[Type | None, pa.DataType] = {"int": pa.int64(), "float": pa.float64(),
                                          "string": pa.string(), "bool": pa.bool_(),
                                          None: pa.null()}
Value = Any  # a pyarrow Array or Scalar: pyarrow's compute functions take either


class FilterRuntimeError(RuntimeError):
    """A filter that failed on a batch (an integer overflow): its owner sees the reason."""


@dataclass(frozen=True, slots=True)
class _Flat:
    """Memberships of a batch flattened: the alert (row) each belongs to, and its values."""

    rows: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    names: np.ndarray


class AlertBatch:
    """A batch of enriched alerts (decoded ``lanner.enriched`` records) as columns."""

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.records = records
        self.size = len(records)
        self._columns: dict[str, pa.Array] = {}
        self._matches: _Flat | None = None
        self._watches: _Flat | None = None
        self._maps: _Flat | None = None
        self._cache: dict[tuple[str, Any], pa.Array] = {}

    def column(self, name: str) -> pa.Array:
        found = self._columns.get(name)
        if found is None:
            column = COLUMNS[name]
            if column.group == "feature":
                values = [(r.get("features") or {}).get(name) for r in self.records]
                if column.type == "int":
                    values = [None if v is None else int(v) for v in values]
            else:
                values = [r.get(name) for r in self.records]
            found = pa.array(values, type=_ARROW[column.type])
            self._columns[name] = found
        return found

    def _flat_matches(self) -> _Flat:
        if self._matches is None:
            rows, keys, values = [], [], []
            for row, record in enumerate(self.records):
                for m in record.get("matches") or ():
                    rows.append(row)
                    keys.append(m["catalog"])
                    values.append(m["separation_arcsec"])
            self._matches = _Flat(np.array(rows, dtype=np.int64), np.array(keys, dtype=object),
                                  np.array(values, dtype=np.float64), np.zeros(0))
        return self._matches

    def _flat_watches(self) -> _Flat:
        if self._watches is None:
            rows, keys, values, names = [], [], [], []
            for row, record in enumerate(self.records):
                for w in record.get("watchlists") or ():
                    rows.append(row)
                    keys.append(w["watchlist_id"])
                    values.append(w["separation_arcsec"])
                    names.append(w["cone_name"])
            self._watches = _Flat(np.array(rows, dtype=np.int64), np.array(keys, dtype=np.int64),
                                  np.array(values, dtype=np.float64),
                                  np.array(names, dtype=object))
        return self._watches

    def _flat_maps(self) -> _Flat:
        if self._maps is None:
            rows, keys = [], []
            for row, record in enumerate(self.records):
                for m in record.get("watchmaps") or ():
                    rows.append(row)
                    keys.append(m)
            self._maps = _Flat(np.array(rows, dtype=np.int64), np.array(keys, dtype=np.int64),
                               np.zeros(0), np.zeros(0))
        return self._maps

    def membership(self, op: str, key: Any) -> pa.Array:
        """The value of a membership function (``matched('x')``, ``in_watchlist(3)``...) for
        every alert of the batch."""
        cached = self._cache.get((op, key))
        if cached is not None:
            return cached
        if op == "in_watchmap":
            flat = self._flat_maps()
            out: pa.Array = pa.array(_any(flat.rows[flat.keys == key], self.size))
        else:
            flat = self._flat_matches() if op.startswith("match") else self._flat_watches()
            chosen = np.flatnonzero(flat.keys == key)
            rows, values = flat.rows[chosen], flat.values[chosen]
            if op in ("matched", "in_watchlist"):
                out = pa.array(_any(rows, self.size))
            elif op == "match_count":
                out = pa.array(np.bincount(rows, minlength=self.size).astype(np.int64))
            else:  # the nearest: its distance, or its cone's name
                nearest = np.full(self.size, np.inf)
                np.minimum.at(nearest, rows, values)
                if op == "watchlist_cone":
                    # Of each alert's cones in the list, the one at the nearest distance.
                    order = np.lexsort((values, rows))
                    first = np.ones(order.size, dtype=bool)
                    first[1:] = rows[order][1:] != rows[order][:-1]
                    names = np.full(self.size, None, dtype=object)
                    names[rows[order][first]] = flat.names[chosen][order][first]
                    out = pa.array(names.tolist(), type=pa.string())
                else:
                    out = pa.array(nearest, mask=~np.isfinite(nearest))
        self._cache[(op, key)] = out
        return out


    def annotation(self, op: str, annotator: str) -> pa.Array:
        """An annotator's newest annotation of each alert's object, from the records'
        ``annotations`` (annotator → ``{"class", "score"}``, added by the filters stage)."""
        cached = self._cache.get((op, annotator))
        if cached is not None:
            return cached
        found = [(r.get("annotations") or {}).get(annotator) for r in self.records]
        if op == "annotated":
            out = pa.array([a is not None for a in found], type=pa.bool_())
        elif op == "annotation_class":
            out = pa.array([None if a is None else a["class"] for a in found], type=pa.string())
        else:
            out = pa.array([None if a is None else a["score"] for a in found],
                           type=pa.float64())
        self._cache[(op, annotator)] = out
        return out


def _any(rows: np.ndarray, size: int) -> np.ndarray:
    hit = np.zeros(size, dtype=bool)
    hit[rows] = True
    return hit


@dataclass(frozen=True, slots=True)
class Selection:
    """What a filter passed in a batch: the rows (indices into the batch, in output order)
    and its output columns' values for them."""

    rows: np.ndarray
    columns: dict[str, pa.Array]


def run(plan: Plan, batch: AlertBatch) -> Selection:
    """The alerts of ``batch`` that pass ``plan``, ordered and limited as it says."""
    try:
        passed = _array(_eval(plan.where, batch), batch.size)
        rows = np.flatnonzero(pc.fill_null(passed, False).to_numpy(zero_copy_only=False))
        if plan.order and rows.size > 1:
            keys = {}
            sort_keys = []
            for i, (node, descending) in enumerate(plan.order):
                values = _array(_eval(node, batch), batch.size).take(pa.array(rows))
                # NULLs first ascending, last descending: a null flag sorts before each key.
                keys[f"n{i}"] = pc.is_null(values)
                keys[f"k{i}"] = values
                sort_keys += [(f"n{i}", "ascending" if descending else "descending"),
                              (f"k{i}", "descending" if descending else "ascending")]
            order = pc.sort_indices(pa.table(keys), sort_keys=sort_keys).to_numpy()
            rows = rows[order]
        if plan.limit is not None:
            rows = rows[:plan.limit]
        taken = pa.array(rows, type=pa.int64())
        columns = {name: _array(_eval(node, batch), batch.size).take(taken)
                   for name, node in plan.select}
    except pa.ArrowInvalid as exc:  # an integer overflow, checked: the filter fails visibly
        raise FilterRuntimeError(str(exc).splitlines()[0]) from None
    return Selection(rows, columns)


def _array(value: Value, size: int) -> pa.Array:
    if isinstance(value, pa.Array):
        return value
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    if not value.is_valid:
        return pa.nulls(size, value.type if value.type != pa.null() else pa.bool_())
    return pa.array([value.as_py()] * size, type=value.type)


def _typed_null(value: Value, like: pa.DataType) -> Value:
    if isinstance(value, pa.Scalar) and value.type == pa.null():
        return pa.scalar(None, type=like if like != pa.null() else pa.bool_())
    return value


def _pair(a: Value, b: Value) -> tuple[Value, Value]:
    return _typed_null(a, b.type), _typed_null(b, a.type)


def _finite(value: Value) -> Value:
    """NULL where a float result is NaN or infinite (SQL has neither)."""
    if isinstance(value, pa.Scalar):
        v = value.as_py()
        return value if v is None or math.isfinite(v) else pa.scalar(None, pa.float64())
    return pc.if_else(pc.is_finite(value), value, pa.scalar(None, pa.float64()))


def _float(value: Value) -> Value:
    value = _typed_null(value, pa.float64())
    return pc.cast(value, pa.float64()) if value.type != pa.float64() else value


def _numpy(value: Value, size: int) -> np.ndarray:
    """Float values as numpy, NaN for NULL."""
    array = _array(_float(value), size)
    return pc.fill_null(array, math.nan).to_numpy(zero_copy_only=False)


def _from_numpy(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=~np.isfinite(values))


_COMPARE = {"eq": pc.equal, "ne": pc.not_equal, "lt": pc.less, "le": pc.less_equal,
            "gt": pc.greater, "ge": pc.greater_equal}
_CHECKED = {"add": pc.add_checked, "sub": pc.subtract_checked, "mul": pc.multiply_checked}
_UNARY = {"sqrt": pc.sqrt, "ln": pc.ln, "log10": pc.log10, "exp": pc.exp, "floor": pc.floor,
          "ceil": pc.ceil}


def _eval(node: Node, batch: AlertBatch) -> Value:  # noqa: PLR0911, PLR0912, PLR0915 - a dispatch
    op = node.op
    if op == "col":
        return batch.column(node.value)
    if op == "lit":
        return pa.scalar(node.value, type=_ARROW[node.type])
    if op in ("matched", "match_arcsec", "match_count", "in_watchlist", "watchlist_arcsec",
              "watchlist_cone", "in_watchmap"):
        return batch.membership(op, node.value)
    if op in ("annotated", "annotation_class", "annotation_score"):
        return batch.annotation(op, node.value)
    args = [_eval(a, batch) for a in node.args]
    if op in _COMPARE:
        a, b = _pair(*args)
        return _COMPARE[op](a, b)
    if op in ("and", "or"):
        combine = pc.and_kleene if op == "and" else pc.or_kleene
        result = _typed_null(args[0], pa.bool_())
        for arg in args[1:]:
            result = combine(result, _typed_null(arg, pa.bool_()))
        return result
    if op == "not":
        return pc.invert(_typed_null(args[0], pa.bool_()))
    if op == "is_null":
        value = args[0]
        return pc.is_null(_array(value, batch.size)) if isinstance(value, pa.Scalar) \
            else pc.is_null(value)
    if op in ("is_true", "is_false"):
        value = _typed_null(args[0], pa.bool_())
        return pc.fill_null(value if op == "is_true" else pc.invert(value), False)
    if op == "in":
        value = args[0]
        if node.args[0].type in ("int", "float", None):
            value, members = _float(value), pa.array([float(m) for m in node.value])
        else:
            members = pa.array(list(node.value), type=pa.string())
        value = _typed_null(value, members.type)
        found = pc.is_in(value, value_set=members)
        return pc.if_else(pc.is_null(value), pa.scalar(None, pa.bool_()), found)
    if op == "like":
        value = _typed_null(args[0], pa.string())
        return pc.match_like(value, node.value, ignore_case=True)
    if op == "neg":
        value = _typed_null(args[0], _ARROW[node.type])
        return pc.negate_checked(value) if node.type == "int" else pc.negate(value)
    if op in _CHECKED:
        a, b = _pair(*args)
        if node.type == "float":
            a, b = _float(a), _float(b)
        return _CHECKED[op](a, b) if node.type == "int" else _finite(_CHECKED[op](a, b))
    if op in ("div", "mod"):
        x, y = _numpy(args[0], batch.size), _numpy(args[1], batch.size)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = x / y if op == "div" else np.fmod(x, y)
        out[y == 0] = np.nan  # MariaDB: NULL for a division by zero
        result = _from_numpy(out)
        return pc.cast(result, pa.int64()) if node.type == "int" else result
    if op == "abs":
        return pc.abs_checked(_typed_null(args[0], _ARROW[node.type]))
    if op in _UNARY:
        return _finite(_UNARY[op](_float(args[0])))
    if op == "power":
        return _finite(pc.power(_float(args[0]), _float(args[1])))
    if op == "round":
        digits = node.args[1].value if len(node.args) > 1 else 0
        return pc.round(_float(args[0]), ndigits=int(digits))
    if op in ("least", "greatest", "coalesce"):
        kind = _ARROW[node.type]
        values = [pc.cast(_typed_null(v, kind), kind) for v in args]
        if op == "coalesce":
            return pc.coalesce(*values)
        pick = pc.min_element_wise if op == "least" else pc.max_element_wise
        return pick(*values, skip_nulls=False)
    if op == "angular_distance":
        ra1, dec1, ra2, dec2 = (np.radians(_numpy(v, batch.size)) for v in args)
        hav = (np.sin((dec2 - dec1) / 2) ** 2
               + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2)
        return _from_numpy(np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0, 1)))))
    raise AssertionError(f"no evaluation for {op}")  # the compiler makes only the above
