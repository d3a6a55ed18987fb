"""ADQL 2.1 queries: parsed by sqlglot, checked node by node against a whitelist and against
TAP_SCHEMA, before anything is rewritten for the chunked store or reaches a database.

sqlglot has no ADQL dialect; ADQL's syntax is SQL-92's with ``TOP n`` and double-quoted
identifiers, so `ADQL` is sqlglot's PostgreSQL dialect (double quotes, ``||``, ``OFFSET``,
``ILIKE``) that also reads ``TOP``. A query is one statement, a SELECT (subqueries in FROM
and in conditions included); every node of its tree must be of a kind in `_NODES`, every
function in `FUNCTIONS` (ADQL's mathematical, string, aggregate and geometric functions;
nothing else, so SLEEP, BENCHMARK, LOAD_FILE and the like are unknown functions), every
table in TAP_SCHEMA (`broker.tap.tapschema`: no INFORMATION_SCHEMA, no internal table) and
every column in its table (sqlglot's `qualify` resolves them, through aliases and
subqueries). The first problem is reported with its line and column. Comments are allowed
(ADQL has them) and dropped: nothing of the text but the checked tree goes further.

Bounds that keep a query's parse and check cheap, whatever its text: `MAX_TEXT` characters,
`MAX_DEPTH` levels of brackets, `MAX_NODES` nodes, `MAX_IN_ITEMS` items in an IN list and
`MAX_TABLES` tables in one query. What a query costs to run is bounded elsewhere (a
statement time limit on every shard, MAXREC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify
from sqlglot.schema import MappingSchema
from sqlglot.tokens import TokenType

from broker.sqltext import TextError, located, parse_one
from broker.tap.tapschema import TapSchema

MAX_TEXT = 100_000
MAX_DEPTH = 50
MAX_NODES = 20_000
MAX_IN_ITEMS = 10_000
MAX_TABLES = 8
#: The query languages (LANG) a TAP request may name.
LANGUAGES = ("ADQL", "ADQL-2.0", "ADQL-2.1")

#: ADQL 2.1's functions (section 2.3): mathematical and trigonometric, string, aggregate,
#: conversion and geometric, by the name sqlglot gives the node (its SQL name, or the name
#: as written for functions it does not know).
FUNCTIONS = frozenset({
    "ABS", "CEIL", "CEILING", "DEGREES", "EXP", "FLOOR", "LN", "LOG", "LOG10", "MOD", "PI",
    "POWER", "POW", "RADIANS", "SQRT", "RAND", "ROUND", "TRUNC", "TRUNCATE",
    "ACOS", "ASIN", "ATAN", "ATAN2", "COS", "COT", "SIN", "TAN",
    "LOWER", "UPPER", "COALESCE",
    "COUNT", "SUM", "AVG", "MIN", "MAX",
    "POINT", "CIRCLE", "BOX", "POLYGON", "CONTAINS", "INTERSECTS", "DISTANCE", "AREA",
    "COORD1", "COORD2", "COORDSYS", "CENTROID",
})
#: Node kinds a query may hold besides functions (checked apart).
_NODES: tuple[type[exp.Expr], ...] = (
    exp.Select, exp.Subquery, exp.From, exp.Join, exp.Where, exp.Group, exp.Having, exp.Order,
    exp.Ordered, exp.Limit, exp.Offset, exp.Distinct, exp.Table, exp.TableAlias, exp.Alias,
    exp.Column, exp.Identifier, exp.Star, exp.Literal, exp.Null, exp.Boolean, exp.Paren,
    exp.Tuple, exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE,
    exp.Is, exp.In, exp.Between, exp.Like, exp.ILike, exp.Exists, exp.Add, exp.Sub, exp.Mul,
    exp.Div, exp.Mod, exp.Neg, exp.DPipe, exp.Case, exp.If, exp.Cast, exp.DataType,
)
#: The arguments of ADQL's geometric functions (a coordinate system first where it has one;
#: POLYGON: the system and three or more vertices).
_ARITY = {"POINT": {3}, "CIRCLE": {4}, "BOX": {5}, "POLYGON": {7}, "CONTAINS": {2},
          "INTERSECTS": {2}, "DISTANCE": {2, 4}, "AREA": {1}, "COORD1": {1}, "COORD2": {1},
          "COORDSYS": {1}, "CENTROID": {1}}
#: The types ADQL 2.1 casts to.
_CASTS = {exp.DataType.Type.SMALLINT, exp.DataType.Type.INT, exp.DataType.Type.BIGINT,
          exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE, exp.DataType.Type.CHAR,
          exp.DataType.Type.VARCHAR, exp.DataType.Type.TIMESTAMP}
#: Select clauses a query may not have (sqlglot argument names), with what to call them.
_REFUSED = {"with_": "WITH", "with": "WITH", "into": "INTO", "locks": "locking clauses",
            "windows": "WINDOW", "qualify": "QUALIFY", "hint": "hints",
            "operation_modifiers": "SELECT modifiers", "laterals": "LATERAL",
            "connect": "CONNECT BY", "sample": "TABLESAMPLE"}


class ADQLError(TextError):
    """A query that is not valid: a plain message, and where (1-based line and column)."""


class ADQL(Postgres):
    """ADQL's syntax: PostgreSQL's as sqlglot reads it, with ``SELECT TOP n``."""

    class Tokenizer(Postgres.Tokenizer):
        KEYWORDS: ClassVar[dict[str, TokenType]] = {**Postgres.Tokenizer.KEYWORDS,
                                                     "TOP": TokenType.TOP}


@dataclass(frozen=True)
class Checked:
    """A valid query: its tree with every column qualified by its table's alias, and the
    TAP_SCHEMA tables it reads (qualified names as TAP_SCHEMA has them)."""

    tree: exp.Select
    tables: tuple[str, ...]


def check(text: str, tap: TapSchema) -> Checked:
    """Parse and check a query; `Checked`, or `ADQLError` naming the first problem."""
    if not isinstance(text, str) or not text.strip():
        raise ADQLError("the query is empty: write SELECT ... FROM ...")
    if len(text) > MAX_TEXT:
        raise ADQLError(f"the query is {len(text):,} characters long; at most {MAX_TEXT:,}")
    if "\x00" in text:
        raise ADQLError("the query contains a NUL character")
    tree = _parse(text)
    tables = _Checker(text, tap).nodes(tree)
    try:
        qualified = qualify(tree, schema=_mapping(tap, tables), dialect=ADQL,
                            validate_qualify_columns=True, identify=False,
                            quote_identifiers=False)
    except OptimizeError as exc:
        raise _located(exc) from None
    assert isinstance(qualified, exp.Select)
    return Checked(qualified, tuple(sorted({tap.tables[t].name for t in tables})))


def _parse(text: str) -> exp.Select:
    tree = parse_one(text, ADQL, ADQLError, what="query", max_depth=MAX_DEPTH, comments=True)
    for node in tree.walk():  # ADQL has comments; none goes further than the parse
        node.comments = None
    if isinstance(tree, exp.SetOperation):
        raise ADQLError(f"{type(tree).__name__.upper()} is not supported: send one SELECT")
    if not isinstance(tree, exp.Select):
        raise ADQLError(f"a query is a SELECT, not {type(tree).__name__.upper()}: this "
                        "service only reads")
    return tree


class _Checker:
    def __init__(self, text: str, tap: TapSchema) -> None:
        self.text = text
        self.tap = tap

    def at(self, message: str, node: exp.Expr) -> TextError:
        return located(ADQLError, message, self.text, node)

    def nodes(self, tree: exp.Select) -> set[str]:
        """Every node's kind, function and table; the TAP_SCHEMA keys of the tables read."""
        tables: set[str] = set()
        references = 0
        derived = {alias.name.lower() for alias in tree.find_all(exp.TableAlias)
                   if isinstance(alias.parent, exp.Subquery)}
        for count, node in enumerate(tree.walk(), start=1):
            if count > MAX_NODES:
                raise ADQLError(f"the query has more than {MAX_NODES:,} terms")
            key = self.node(node, derived)
            if key is not None:
                tables.add(key)
                references += 1
                if references > MAX_TABLES:
                    raise self.at(f"a query reads at most {MAX_TABLES} tables (each time a "
                                  "table is named counts)", node)
        return tables

    def node(self, node: exp.Expr, derived: set[str]) -> str | None:
        """Check one node; the TAP_SCHEMA key of the table it is, if it is one."""
        if isinstance(node, exp.Select):
            if not node.expressions:
                raise self.at("a SELECT names what it returns: columns, expressions or *",
                              node)
            for arg, word in _REFUSED.items():
                if node.args.get(arg):
                    raise self.at(f"{word} is not part of ADQL", node)
        if isinstance(node, exp.Group) and not node.expressions:
            raise self.at("GROUP BY names what it groups by", node)
        if isinstance(node, exp.DataType) and node.this not in _CASTS:
            raise self.at(f"CAST to {node.sql(dialect=ADQL)} is not ADQL (SMALLINT, INTEGER, "
                          "BIGINT, REAL, DOUBLE PRECISION, CHAR, VARCHAR or TIMESTAMP)", node)
        if isinstance(node, exp.Func) and not isinstance(node, _NODES):
            self.function(node)
        elif isinstance(node, exp.In):
            items = node.args.get("expressions") or []
            if len(items) > MAX_IN_ITEMS:
                raise self.at(f"an IN list has {len(items):,} items; at most "
                              f"{MAX_IN_ITEMS:,}", node)
        elif isinstance(node, exp.Table):
            return self.table(node, derived)
        elif not isinstance(node, _NODES) and not isinstance(node, exp.Func):
            raise self.at(f"{_describe(node)} is not allowed in a query", node)
        return None

    def function(self, node: exp.Func) -> None:
        """An ADQL function, with as many arguments as ADQL gives it (geometry's)."""
        name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).upper()
        if name not in FUNCTIONS:
            raise self.at(f"unknown function {name}", node)
        if name in _ARITY:
            given = len(node.expressions) if isinstance(node, exp.Anonymous) else sum(
                1 for key in ("this", "expression") if node.args.get(key) is not None)
            allowed = _ARITY[name]
            if given not in allowed and not (name == "POLYGON" and given >= 7 and given % 2):
                wanted = " or ".join(str(n) for n in sorted(allowed))
                raise self.at(f"{name} takes {wanted} arguments, not {given}", node)

    def table(self, node: exp.Table, derived: set[str]) -> str | None:
        """The TAP_SCHEMA key of a table the query names (None for a subquery's alias)."""
        tap = self.tap
        if node.args.get("catalog"):
            raise self.at(f"unknown table {node.sql(dialect=ADQL)}", node)
        schema, name = node.db, node.name
        if not schema:
            if name.lower() in derived:
                return None
            found = [key for key in tap.tables if key.split(".", 1)[1] == name.lower()]
            if len(found) != 1:
                raise self.at(f"unknown table {name}" if not found else
                              f"table {name} is in several schemas: name one "
                              f"({', '.join(found)})", node)
            key = found[0]
            node.set("db", exp.to_identifier(tap.tables[key].schema))
            return key
        key = f"{schema}.{name}".lower()
        if key not in tap.tables:
            raise self.at(f"unknown table {schema}.{name}", node)
        return key


def _mapping(tap: TapSchema, tables: set[str]) -> MappingSchema:
    """sqlglot's schema of the tables read, made once per set of tables of a TAP_SCHEMA
    (normalising it is a third of a small query's check)."""
    key = frozenset(tables)
    cache = tap.qualify_cache
    found = cache.get(key)
    if found is None:
        found = MappingSchema(_schema(tap, tables), dialect=ADQL)
        if len(cache) < 1000:
            cache[key] = found
    return found


def _schema(tap: TapSchema, tables: set[str]) -> dict[str, object]:
    """The tables read, as sqlglot's `qualify` takes a schema: columns and their types."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for key in tables:
        table = tap.tables[key]
        columns = {c.name: _SQL_TYPES.get(c.datatype, "TEXT") for c in table.columns}
        out.setdefault(table.schema, {})[table.name.split(".", 1)[1]] = columns
    return dict(out)


_SQL_TYPES = {"boolean": "BOOLEAN", "unsignedByte": "SMALLINT", "short": "SMALLINT",
              "int": "INT", "long": "BIGINT", "float": "REAL", "double": "DOUBLE PRECISION",
              "char": "TEXT", "unicodeChar": "TEXT", "timestamp": "TIMESTAMP"}


def _located(exc: OptimizeError) -> ADQLError:
    """An error of sqlglot's `qualify`, which says ``Column 'x' could not be resolved. Line:
    1, Col: 8``, in the terms and positions of the other errors."""
    text = str(exc)
    message, _, where = text.partition(". Line: ")
    line = column = None
    if where:
        parts = where.replace("Col:", "").split(",")
        try:
            line, column = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            line = column = None
    if message.startswith("Column ") and message.endswith("could not be resolved"):
        name = message.split("'")[1] if "'" in message else message
        message = (f"unknown column {name} (or one that more than one of the tables "
                   "has: name its table)")
        if column is not None:  # sqlglot gives the name's last character
            column = max(1, column - len(name) + 1)
    return ADQLError(message, line, column)


def _describe(node: exp.Expr) -> str:
    words = {exp.Var: "a variable or unknown keyword", exp.Parameter: "a parameter",
             exp.Placeholder: "a placeholder", exp.Dot: "a dotted name",
             exp.Window: "a window function", exp.Lambda: "a lambda"}
    for kind, word in words.items():
        if isinstance(node, kind):
            return word
    return type(node).__name__.upper()
