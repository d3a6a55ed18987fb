"""The filter language: parsed by sqlglot, checked node by node, compiled to a typed plan.

A filter is ``SELECT <expressions> WHERE <condition> [ORDER BY ...] [LIMIT n]`` in MariaDB's
SQL syntax, with no FROM: it is run on each enriched alert (docs/filters.md). The text is
parsed by sqlglot; the tree is then walked, and every node must be one of the kinds this
module knows (`_compile`): a column of `COLUMNS`, a literal, an operator or a function of
`FUNCTIONS`. Anything else (another statement, a subquery, a table, a variable, an unknown
function such as SLEEP) is refused with its position. What comes out is a `Plan` of typed
`Node`s that `broker.domain.filters.evaluate` runs over a batch with pyarrow: no filter is
ever turned back into SQL text, and none reaches a database.

Bounds that make a filter's cost predictable, whatever its text: `MAX_TEXT` characters,
`MAX_NODES` nodes, `MAX_DEPTH` levels of nesting, `MAX_IN_ITEMS` items in an IN list,
`MAX_STRING` characters in a literal and `MAX_SELECT` output columns. LIKE patterns run on
RE2 (through pyarrow), which is linear in its input: there is no regular-expression bomb.

Names (columns, functions) are case-insensitive, as in MariaDB. Watchlists, watchmaps,
reference catalogs and annotators are named by literal arguments and checked against a `Scope`:
the ones the filter's owner may read (annotators: those who have annotated something).
Another user's private watchlist is refused exactly as a watchlist that does not exist is.

Why one file of about 530 lines: it is the language's one walk of one tree. The node kinds the
compiler accepts, their type rules and the plan they become are the whitelist together: split,
a node kind could be added in one place and checked in another. Reading the text into a tree is
shared with ADQL (`broker.sqltext`); the columns and functions it names are data
(`columns.py`); the evaluation of the plan is `evaluate.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from broker.domain.filters.columns import COLUMNS, FUNCTIONS, Type
from broker.sqltext import TextError, located, parse_one

#: Longest filter text, characters.
MAX_TEXT = 8_192
#: Most nodes in a filter's tree.
MAX_NODES = 2_000
#: Deepest nesting of a filter's tree (operators and brackets).
MAX_DEPTH = 40
#: Most items in one IN list.
MAX_IN_ITEMS = 1_000
#: Longest string literal.
MAX_STRING = 256
#: Most output expressions.
MAX_SELECT = 64
#: Largest LIMIT.
MAX_LIMIT = 100_000


class FilterError(TextError):
    """A filter that is not valid: a plain message, and where (1-based line and column)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a filter's owner may name: loaded reference catalogs, and the watchlists and
    watchmaps they may read (their own and public ones)."""

    catalogs: frozenset[str] = frozenset()
    watchlists: frozenset[int] = frozenset()
    watchmaps: frozenset[int] = frozenset()
    annotators: frozenset[str] = frozenset()


# ---- the plan -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """A typed expression: ``op`` names what it does, ``args`` its operands (Nodes), ``value``
    a literal's value or a function's fixed argument (a catalog name, a watchlist id)."""

    op: str
    type: Type | None  # None: the NULL literal, which fits any type
    args: tuple[Node, ...] = ()
    value: Any = None

    def walk(self) -> Iterator[Node]:
        yield self
        for arg in self.args:
            yield from arg.walk()


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled filter: its output columns, its condition, its order and limit, and what it
    reads (so a batch builds only those columns, and a change to them is easy to find)."""

    text: str
    select: tuple[tuple[str, Node], ...]
    where: Node
    order: tuple[tuple[Node, bool], ...] = ()  # (expression, descending)
    limit: int | None = None
    columns: frozenset[str] = field(default_factory=frozenset)
    catalogs: frozenset[str] = field(default_factory=frozenset)
    watchlists: frozenset[int] = field(default_factory=frozenset)
    watchmaps: frozenset[int] = field(default_factory=frozenset)
    annotators: frozenset[str] = field(default_factory=frozenset)


# ---- parsing ------------------------------------------------------------------------------


def compile_filter(text: str, scope: Scope) -> Plan:
    """Parse and check a filter; its `Plan`, or `FilterError` naming the first problem."""
    if not isinstance(text, str) or not text.strip():
        raise FilterError("the filter is empty: write SELECT ... WHERE ...")
    if len(text) > MAX_TEXT:
        raise FilterError(f"the filter is {len(text):,} characters long; at most {MAX_TEXT:,}")
    if "\x00" in text:
        raise FilterError("the filter contains a NUL character")
    tree = _parse(text)
    return _Compiler(text, scope).plan(tree)


def _parse(text: str) -> exp.Select:
    tree = parse_one(text, "mysql", FilterError, what="filter", max_depth=MAX_DEPTH,
                     comments=False)
    if not isinstance(tree, exp.Select):
        raise FilterError(f"a filter is a SELECT, not {type(tree).__name__.upper()}")
    return tree


# ---- checking and compiling ---------------------------------------------------------------

_MEMBERSHIP_TYPES: dict[str, Type] = {
    "matched": "bool", "match_arcsec": "float", "match_count": "int", "in_watchlist": "bool",
    "watchlist_arcsec": "float", "watchlist_cone": "string", "in_watchmap": "bool",
    "annotated": "bool", "annotation_class": "string", "annotation_score": "float"}
_COMPARISONS: dict[type, str] = {
    exp.EQ: "eq", exp.NEQ: "ne", exp.LT: "lt", exp.LTE: "le", exp.GT: "gt", exp.GTE: "ge"}
_ARITHMETIC: dict[type, str] = {
    exp.Add: "add", exp.Sub: "sub", exp.Mul: "mul", exp.Div: "div", exp.Mod: "mod"}
_UNARY_MATH: dict[type, str] = {
    exp.Abs: "abs", exp.Sqrt: "sqrt", exp.Ln: "ln", exp.Exp: "exp", exp.Floor: "floor",
    exp.Ceil: "ceil"}
_VARIADIC: dict[type, str] = {
    exp.Least: "least", exp.Greatest: "greatest", exp.Coalesce: "coalesce"}
_NUMERIC = ("int", "float")
#: Select clauses a filter may not have, by sqlglot's argument name.
_REFUSED_CLAUSES = {
    "from_": "FROM (a filter reads the alert it is given: no tables)", "from": "FROM",
    "joins": "JOIN", "group": "GROUP BY", "having": "HAVING", "with_": "WITH", "with": "WITH",
    "distinct": "DISTINCT", "windows": "WINDOW", "qualify": "QUALIFY", "into": "INTO",
    "offset": "OFFSET", "laterals": "LATERAL", "locks": "locking clauses", "kind": "SELECT kinds",
    "hint": "hints", "operation_modifiers": "SELECT modifiers", "prewhere": "PREWHERE",
    "connect": "CONNECT BY", "match": "MATCH_RECOGNIZE", "sample": "SAMPLE", "settings":
    "SETTINGS", "format": "FORMAT", "cluster": "CLUSTER BY", "distribute": "DISTRIBUTE BY",
    "sort": "SORT BY",
}


class _Compiler:
    def __init__(self, text: str, scope: Scope) -> None:
        self.text = text
        self.scope = scope
        self.columns: set[str] = set()
        self.catalogs: set[str] = set()
        self.watchlists: set[int] = set()
        self.watchmaps: set[int] = set()
        self.annotators: set[str] = set()
        self.nodes = 0

    def fail(self, message: str, node: exp.Expr | None) -> TextError:
        return located(FilterError, message, self.text, node)

    def plan(self, tree: exp.Select) -> Plan:
        for name, label in _REFUSED_CLAUSES.items():
            if tree.args.get(name):
                raise self.fail(f"a filter may not have {label}", tree.args[name]
                                if isinstance(tree.args[name], exp.Expr) else None)
        for name, value in tree.args.items():
            if value and name not in ("expressions", "where", "order", "limit"):
                raise self.fail(f"a filter may not have {name.upper()}",
                                value if isinstance(value, exp.Expr) else None)
        select = self._select(tree.expressions)
        if tree.args.get("where") is None:
            raise self.fail("a filter needs WHERE and a condition", tree)
        where = self.expr(tree.args["where"].this, 1)
        if where.type not in ("bool", None):
            raise self.fail(f"WHERE needs a condition (true or false), not a {where.type}",
                            tree.args["where"].this)
        order: list[tuple[Node, bool]] = []
        if tree.args.get("order") is not None:
            for item in tree.args["order"].expressions:
                if not isinstance(item, exp.Ordered):
                    raise self.fail("ORDER BY takes expressions", item)
                named = dict(select)
                if isinstance(item.this, exp.Column) and not item.this.table \
                        and item.this.name.lower() in named:
                    key = named[item.this.name.lower()]  # an output column, by its name
                else:
                    key = self.expr(item.this, 1)
                if key.type == "bool":
                    raise self.fail("ORDER BY needs a number or a string", item.this)
                order.append((key, bool(item.args.get("desc"))))
        limit = self._limit(tree.args.get("limit"))
        return Plan(self.text, select, where, tuple(order), limit, frozenset(self.columns),
                    frozenset(self.catalogs), frozenset(self.watchlists),
                    frozenset(self.watchmaps), frozenset(self.annotators))

    def _select(self, items: list[exp.Expr]) -> tuple[tuple[str, Node], ...]:
        if len(items) > MAX_SELECT:
            raise self.fail(f"at most {MAX_SELECT} output columns", items[MAX_SELECT])
        out: list[tuple[str, Node]] = []
        for written in items:
            if isinstance(written, exp.Star):
                continue  # the alert's ids, time and position: every output has them
            alias = written.alias if isinstance(written, exp.Alias) else None
            item = written.this if isinstance(written, exp.Alias) else written
            node = self.expr(item, 1)
            if alias is None:
                if not isinstance(item, exp.Column):
                    raise self.fail("name a computed output column with AS", item)
                alias = item.name
            name = alias.lower()
            if not name.isidentifier() or not name.isascii() or len(name) > 64:
                raise self.fail(f"output name {alias!r} is not a plain name (letters, digits, "
                                "_; at most 64)", item)
            if name in (n for n, _ in out):
                raise self.fail(f"output column {name!r} is named twice", item)
            out.append((name, node))
        return tuple(out)

    def _limit(self, limit: exp.Expr | None) -> int | None:
        if limit is None:
            return None
        value = limit.expression if isinstance(limit, exp.Limit) else None
        if not isinstance(value, exp.Literal) or value.is_string or not value.this.isdigit():
            raise self.fail("LIMIT takes a whole number", limit)
        n = int(value.this)
        if not 1 <= n <= MAX_LIMIT:
            raise self.fail(f"LIMIT must be between 1 and {MAX_LIMIT:,}", limit)
        return n

    # -- expressions

    def expr(self, node: exp.Expr, depth: int) -> Node:
        compiled = self._expr(node, depth)
        if node.args.get("negate"):  # sqlglot's NOT LIKE, NOT IN, NOT BETWEEN ...
            return Node("not", "bool", (compiled,))
        return compiled

    def _expr(self, node: exp.Expr, depth: int) -> Node:  # noqa: PLR0911, PLR0912 - a dispatch
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(f"the filter has more than {MAX_NODES:,} parts", node)
        if depth > MAX_DEPTH:
            raise self.fail(f"the filter is nested more than {MAX_DEPTH} deep", node)
        d = depth + 1
        if isinstance(node, exp.Paren):
            return self.expr(node.this, d)
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.Literal):
            return self._literal(node)
        if isinstance(node, exp.Boolean):
            return Node("lit", "bool", value=bool(node.this))
        if isinstance(node, exp.Null):
            return Node("lit", None, value=None)
        if isinstance(node, exp.Neg):
            inner = self.expr(node.this, d)
            self._numeric(inner, node.this, "-")
            return Node("neg", inner.type or "float", (inner,))
        if type(node) in _ARITHMETIC:
            return self._arithmetic(_ARITHMETIC[type(node)], node, d)
        if type(node) in _COMPARISONS:
            left, right = self.expr(node.this, d), self.expr(node.expression, d)
            self._comparable(left, right, node)
            return Node(_COMPARISONS[type(node)], "bool", (left, right))
        if isinstance(node, exp.And | exp.Or):
            # A chain of one operator (a AND b AND c ...) is one node with many operands: as
            # long as it likes, one level deep.
            kind = type(node)
            operands, pending = [], [node]
            while pending:
                item = pending.pop()
                if type(item) is kind:
                    pending += [item.expression, item.this]
                else:
                    operands.append(item)
            word = "AND" if kind is exp.And else "OR"
            args = []
            for operand in operands:
                arg = self.expr(operand, d)
                self._boolean(arg, operand, word)
                args.append(arg)
            return Node(word.lower(), "bool", tuple(args))
        if isinstance(node, exp.Not):
            inner = self.expr(node.this, d)
            self._boolean(inner, node.this, "NOT")
            return Node("not", "bool", (inner,))
        if isinstance(node, exp.Is):
            return self._is(node, d)
        if isinstance(node, exp.Between):
            return self._between(node, d)
        if isinstance(node, exp.In):
            return self._in(node, d)
        if isinstance(node, exp.Like | exp.ILike):
            return self._like(node, d)
        if isinstance(node, exp.Func):
            return self._function(node, d)
        raise self.fail(f"{_describe(node)} is not allowed in a filter", node)

    def _column(self, node: exp.Column) -> Node:
        if node.table or node.args.get("db") or node.args.get("catalog"):
            raise self.fail(f"write {node.name} without a table name: a filter reads one "
                            "alert", node)
        name = node.name.lower()
        column = COLUMNS.get(name)
        if column is None:
            if name in ("matches", "watchlists", "watchmaps", "features"):
                raise self.fail(f"{name} is read through functions (see docs/filters.md), not "
                                "as a column", node)
            raise self.fail(f"unknown column {node.name!r}", node)
        self.columns.add(name)
        return Node("col", column.type, value=name)

    def _literal(self, node: exp.Literal) -> Node:
        if node.is_string:
            if len(node.this) > MAX_STRING:
                raise self.fail(f"a string is at most {MAX_STRING} characters", node)
            return Node("lit", "string", value=node.this)
        text = node.this
        try:
            if text.isdigit():
                value: int | float = int(text)
                if value >= 2**63:
                    raise self.fail(f"the number {text} is too large", node)
                return Node("lit", "int", value=value)
            value = float(text)
        except ValueError:
            raise self.fail(f"{text!r} is not a number", node) from None
        if not math.isfinite(value):
            raise self.fail(f"the number {text} is too large", node)
        return Node("lit", "float", value=value)

    def _numeric(self, node: Node, source: exp.Expr, word: str) -> None:
        if node.type not in (*_NUMERIC, None):
            raise self.fail(f"{word} needs numbers, not a {node.type}", source)

    def _boolean(self, node: Node, source: exp.Expr, word: str) -> None:
        if node.type not in ("bool", None):
            raise self.fail(f"{word} needs conditions (true or false), not a {node.type}",
                            source)

    def _comparable(self, left: Node, right: Node, source: exp.Expr) -> None:
        kinds = {t for t in (left.type, right.type) if t is not None}
        if len(kinds) == 2 and not kinds <= set(_NUMERIC):
            a, b = sorted(kinds)
            raise self.fail(f"cannot compare a {a} with a {b}", source)

    def _arithmetic(self, op: str, node: exp.Expr, depth: int) -> Node:
        left, right = self.expr(node.this, depth), self.expr(node.expression, depth)
        symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%"}[op]
        self._numeric(left, node.this, symbol)
        self._numeric(right, node.expression, symbol)
        kind: Type = "int" if op != "div" and left.type == right.type == "int" else "float"
        return Node(op, kind, (left, right))

    def _is(self, node: exp.Is, depth: int) -> Node:
        inner = self.expr(node.this, depth)
        target = node.expression
        if isinstance(target, exp.Null):
            return Node("is_null", "bool", (inner,))
        if isinstance(target, exp.Boolean):
            self._boolean(inner, node.this, "IS TRUE / IS FALSE")
            return Node("is_true" if target.this else "is_false", "bool", (inner,))
        raise self.fail("IS takes NULL, TRUE or FALSE", target)

    def _between(self, node: exp.Between, depth: int) -> Node:
        value = self.expr(node.this, depth)
        low, high = self.expr(node.args["low"], depth), self.expr(node.args["high"], depth)
        self._comparable(value, low, node)
        self._comparable(value, high, node)
        return Node("and", "bool", (Node("ge", "bool", (value, low)),
                                    Node("le", "bool", (value, high))))

    def _in(self, node: exp.In, depth: int) -> Node:
        if node.args.get("query") is not None or node.args.get("unnest") is not None \
                or node.args.get("field") is not None:
            raise self.fail("IN takes a list of values, not a query", node)
        items = node.expressions
        if not items:
            raise self.fail("IN needs at least one value", node)
        if len(items) > MAX_IN_ITEMS:
            raise self.fail(f"an IN list has at most {MAX_IN_ITEMS:,} values", items[0])
        value = self.expr(node.this, depth)
        members = []
        for item in items:
            member = self.expr(item, depth + 1)
            if member.op != "lit" or member.value is None:
                raise self.fail("an IN list holds literal values (numbers or strings)", item)
            self._comparable(value, member, item)
            members.append(member.value)
        if value.type == "string" and any(not isinstance(m, str) for m in members):
            raise self.fail("an IN list compared with a string holds strings", node)
        return Node("in", "bool", (value,), value=tuple(members))

    def _like(self, node: exp.Like | exp.ILike, depth: int) -> Node:
        value = self.expr(node.this, depth)
        pattern = node.expression
        if not isinstance(pattern, exp.Literal) or not pattern.is_string:
            raise self.fail("LIKE takes a string pattern in quotes", pattern)
        if value.type not in ("string", None):
            raise self.fail(f"LIKE needs a string, not a {value.type}", node.this)
        if len(pattern.this) > MAX_STRING:
            raise self.fail(f"a pattern is at most {MAX_STRING} characters", pattern)
        return Node("like", "bool", (value,), value=pattern.this)

    def _function(self, node: exp.Func, depth: int) -> Node:  # noqa: PLR0912 - a dispatch
        if isinstance(node, exp.Anonymous):
            name = node.name.lower()
            raw = list(node.expressions)
        else:
            name, raw = _known_function(node)
        if name == "log with a base":
            raise self.fail("log(base, x) is not supported: write ln(x) / ln(base)", node)
        if name not in FUNCTIONS:
            raise self.fail(f"unknown function {name}()", node)
        if name in ("matched", "match_arcsec", "match_count"):
            catalog = self._fixed_string(name, raw, node)
            if catalog not in self.scope.catalogs:
                raise self.fail(f"no reference catalog {catalog!r} (loaded: "
                                f"{', '.join(sorted(self.scope.catalogs)) or 'none'})", node)
            self.catalogs.add(catalog)
            return Node(name, _MEMBERSHIP_TYPES[name], value=catalog)
        if name in ("annotated", "annotation_class", "annotation_score"):
            if len(raw) != 1 or not isinstance(raw[0], exp.Literal) or not raw[0].is_string:
                raise self.fail(f"{name}() takes an annotator's name in quotes", node)
            annotator = str(raw[0].this)
            if annotator not in self.scope.annotators:
                raise self.fail(f"no annotator {annotator!r}", node)
            self.annotators.add(annotator)
            return Node(name, _MEMBERSHIP_TYPES[name], value=annotator)
        if name in ("in_watchlist", "watchlist_arcsec", "watchlist_cone", "in_watchmap"):
            ident = self._fixed_int(name, raw, node)
            mine = self.scope.watchmaps if name == "in_watchmap" else self.scope.watchlists
            if ident not in mine:
                what = "watchmap" if name == "in_watchmap" else "watchlist"
                raise self.fail(f"no {what} {ident}", node)
            (self.watchmaps if name == "in_watchmap" else self.watchlists).add(ident)
            return Node(name, _MEMBERSHIP_TYPES[name], value=ident)
        args = [self.expr(a, depth + 1) for a in raw]
        if name in ("least", "greatest", "coalesce"):
            if len(args) < (1 if name == "coalesce" else 2):
                raise self.fail(f"{name}() needs at least two arguments", node)
            kinds = {a.type for a in args if a.type is not None}
            if len(kinds) > 1 and not kinds <= set(_NUMERIC):
                raise self.fail(f"{name}() needs arguments of one type", node)
            kind: Type
            if kinds <= set(_NUMERIC):
                kind = "int" if kinds == {"int"} else "float"
            else:
                kind = kinds.pop()
            return Node(name, kind, tuple(args))
        arity = {"power": (2, 2), "round": (1, 2), "angular_distance": (4, 4)}.get(name, (1, 1))
        if not arity[0] <= len(args) <= arity[1]:
            count = str(arity[0]) if arity[0] == arity[1] else f"{arity[0]} or {arity[1]}"
            raise self.fail(f"{name}() takes {count} argument{'s' if arity[1] > 1 else ''}",
                            node)
        for arg, source in zip(args, raw, strict=True):
            self._numeric(arg, source, f"{name}()")
        if name == "round" and len(args) == 2 and not (
                args[1].op == "lit" and args[1].type == "int" and args[1].value <= 15):
            raise self.fail("round(x, digits) takes a whole number of digits, 0 to 15", node)
        if name == "abs":
            return Node(name, args[0].type or "float", tuple(args))
        return Node(name, "float", tuple(args))

    def _fixed_string(self, name: str, raw: list[exp.Expr], node: exp.Expr) -> str:
        if len(raw) != 1 or not isinstance(raw[0], exp.Literal) or not raw[0].is_string:
            raise self.fail(f"{name}() takes a catalog name in quotes", node)
        return str(raw[0].this)

    def _fixed_int(self, name: str, raw: list[exp.Expr], node: exp.Expr) -> int:
        if len(raw) != 1 or not isinstance(raw[0], exp.Literal) or raw[0].is_string \
                or not raw[0].this.isdigit():
            raise self.fail(f"{name}() takes the id number of one of your watchlists or "
                            "watchmaps", node)
        return int(raw[0].this)


def _known_function(node: exp.Func) -> tuple[str, list[exp.Expr]]:  # noqa: PLR0911
    """The name and arguments of a function sqlglot parsed into its own class."""
    if type(node) in _UNARY_MATH:
        return _UNARY_MATH[type(node)], [node.this]
    if type(node) in _VARIADIC:
        return _VARIADIC[type(node)], [node.this, *node.expressions] if node.this is not None \
            else list(node.expressions)
    if isinstance(node, exp.Log):  # LOG10(x) is Log(10, x); LOG(b, x) another base
        base = node.this
        if isinstance(base, exp.Literal) and base.this == "10" and node.expression is not None:
            return "log10", [node.expression]
        return "log with a base", []  # refused: ln(x) / ln(base) says the same
    if isinstance(node, exp.Pow):
        return "power", [node.this, node.expression]
    if isinstance(node, exp.Round):
        return "round", [a for a in (node.this, node.args.get("decimals")) if a is not None]
    return node.sql_name().lower(), []


def _describe(node: exp.Expr) -> str:  # noqa: PLR0911
    """A node's kind as a user would say it."""
    if isinstance(node, exp.Subquery | exp.Select | exp.Union):
        return "a subquery"
    if isinstance(node, exp.Placeholder | exp.Parameter):
        return "a parameter"
    if isinstance(node, exp.Cast):
        return "CAST"
    if isinstance(node, exp.Case | exp.If):
        return "CASE / IF"
    if isinstance(node, exp.Star):
        return "*"
    words = {exp.NullSafeEQ: "<=>", exp.Xor: "XOR", exp.IntDiv: "DIV", exp.RegexpLike: "REGEXP",
             exp.Escape: "LIKE ... ESCAPE", exp.HexString: "a hex literal",
             exp.BitString: "a bit literal", exp.SessionParameter: "a session variable"}
    for kind, word in words.items():
        if isinstance(node, kind):
            return word
    return node.key.upper()
