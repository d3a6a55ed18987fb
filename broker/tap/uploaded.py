"""A query's uploaded tables (`broker.tap.upload`) on the shards: loaded into temporary
tables of each shard's connection for the query, and dropped after it.

Where the rows go, so that every pair an inner join makes is found exactly once: a pair of an
uploaded row and an archive row is found on the archive row's shard (each archive row lives on
one shard), so each shard needs the uploaded rows that can pair with its own.

- A cross-match, an upload joined to a chunked table by a position condition with a literal
  radius of at most `MAX_RADIUS_DEG` (``1 = CONTAINS(POINT(s, o.ra, o.dec), CIRCLE(s, u.ra,
  u.dec, r))`` or ``DISTANCE(POINT(s, u.ra, u.dec), POINT(s, o.ra, o.dec)) < r``, in ON or
  in WHERE), sends each uploaded row to the shards of the chunks its cone of radius ``r``
  touches, as the cone search covers a cone (`broker.domain.sky.cone_cover`: the chunks, with
  the drift margin, and the order-29 HEALPix ranges). The row is stored once per (chunk,
  range) of its cover, and the join gains ``o.chunk_id = u.chunk AND o.hpx29 >= u.lo AND
  o.hpx29 < u.hi``: an archive row's chunk and HEALPix index fall in at most one of them, so
  no pair is doubled, and the database reads the archive's sky index instead of comparing
  every row with every row. The exact test stays.
- Any other use of an upload (joined on an id, in a subquery, alone with the archive's tables)
  sends every uploaded row to every shard.
- A query of uploads alone runs on shard 0.

Outer joins between an upload and the archive's tables are refused: a preserved uploaded row
would come back once from every shard.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from sqlglot import exp

from broker.domain.sky import Chunker, ChunkPlacement, cone_cover
from broker.storage.dialect import column_list, marks, q
from broker.tap import geometry as geo
from broker.tap.adql import ADQLError
from broker.tap.functions import point_in_region
from broker.tap.upload import Upload

T = TypeVar("T")
#: The largest radius of a cross-match with an upload sent by sky cover, in degrees; a larger
#: one is sent to every shard (correct, and slower).
MAX_RADIUS_DEG = 1.0 / 60.0
_SQL = {"boolean": "SMALLINT", "unsignedByte": "SMALLINT", "short": "SMALLINT",
        "int": "INTEGER", "long": "BIGINT", "float": "DOUBLE", "double": "DOUBLE",
        "char": "TEXT", "unicodeChar": "TEXT"}
_COVER = ("__lanner_chunk", "__lanner_lo", "__lanner_hi")


@dataclass
class _Temp:
    name: str
    columns: list[str]
    types: list[str]
    rows: dict[int, list[tuple]] = field(default_factory=dict)


@dataclass
class Loaded:
    """The temporary tables of a query's uploads, and the rows each shard gets."""

    sqlite: bool
    tables: list[_Temp] = field(default_factory=list)

    def around(self, shard: int, work: Callable[[Any], T]) -> Callable[[Any], T]:
        def run(cursor: Any) -> T:
            made = []
            try:
                for table in self.tables:
                    columns = ", ".join(f"{q(c)} {t}" for c, t in zip(table.columns,
                                                                        table.types,
                                                                        strict=True))
                    cursor.execute(f"CREATE TEMPORARY TABLE {q(table.name)} ({columns})")
                    made.append(table.name)
                    rows = table.rows.get(shard)
                    if rows:
                        cursor.executemany(
                            f"INSERT INTO {q(table.name)} ({column_list(table.columns)}) "
                            f"VALUES ({marks(len(table.columns))})", rows)
                    if table.columns[-len(_COVER):] == list(_COVER) and not self.sqlite:
                        cursor.execute(f"ALTER TABLE {q(table.name)} ADD INDEX "
                                       f"({q(_COVER[0])})")
                return work(cursor)
            finally:
                for name in made:
                    cursor.execute(f"DROP TABLE IF EXISTS temp.{q(name)}" if self.sqlite
                                   else f"DROP TEMPORARY TABLE IF EXISTS {q(name)}")

        return run


def prepare(tree: exp.Select, uploads: Sequence[Upload], chunked: frozenset[str], *,
            chunker: Chunker, placement: ChunkPlacement, shard_count: int,
            sqlite: bool) -> tuple[Loaded, list[int] | None]:
    """Load plan of the uploads ``tree`` reads (their table nodes renamed in ``tree`` to the
    temporary tables'), and the shards the query needs (None: all)."""
    loaded = Loaded(sqlite)
    named = {u.key: u for u in uploads}
    nodes = [t for t in tree.find_all(exp.Table) if f"{t.db}.{t.name}".lower() in named]
    archive = any(f"{t.db}.{t.name}".lower() in chunked for t in tree.find_all(exp.Table))
    if not nodes:
        return loaded, None
    _refuse_outer(tree, named)
    match = _crossmatch(tree, named, chunked) if archive else None
    everywhere = list(range(shard_count)) if archive else [0]
    used: set[int] = set()
    for upload in {f"{t.db}.{t.name}".lower(): named[f"{t.db}.{t.name}".lower()]
                   for t in nodes}.values():
        temp = _Temp(f"lanner_upload_{uuid.uuid4().hex[:16]}", list(upload.data.column_names),
                     [_SQL[c.datatype] for c in upload.table.columns])
        rows = list(zip(*(upload.data.column(i).to_pylist()
                          for i in range(upload.data.num_columns)), strict=True))
        if match is not None and match[0] == upload.key:
            _, alias, ra_col, dec_col, other, radius = match
            temp.columns += list(_COVER)
            temp.types += ["BIGINT", "BIGINT", "BIGINT"]
            ra = np.asarray(upload.data.column(ra_col).to_numpy(zero_copy_only=False), float)
            dec = np.asarray(upload.data.column(dec_col).to_numpy(zero_copy_only=False), float)
            for i, row in enumerate(rows):
                if not (np.isfinite(ra[i]) and np.isfinite(dec[i])):
                    continue  # a row without a position matches nothing
                cover = cone_cover(chunker, float(ra[i]), float(dec[i]), radius)
                for chunk in cover.chunks:
                    shard = placement.shard_of(chunk)
                    out = temp.rows.setdefault(shard, [])
                    out.extend((*row, chunk, lo, hi) for lo, hi in cover.ranges)
                    used.add(shard)
            for shard_rows in temp.rows.values():
                # In the sky index's order: the database then reads the archive's index and
                # rows front to back, a page once, instead of all over for every row.
                shard_rows.sort(key=lambda r: (r[-3], r[-2]))
            _narrow(tree, alias, other)
        else:
            for shard in everywhere:
                temp.rows[shard] = rows
            used.update(everywhere)
        for node in nodes:
            if f"{node.db}.{node.name}".lower() == upload.key:
                node.set("this", exp.to_identifier(temp.name))
                node.set("db", None)
        loaded.tables.append(temp)
    crossmatched = match is not None and len(loaded.tables) == 1
    return loaded, sorted(used) if crossmatched or not archive else None


def _refuse_outer(tree: exp.Select, named: dict[str, Upload]) -> None:
    for join in tree.find_all(exp.Join):
        if (join.args.get("side") or "").upper() in ("LEFT", "RIGHT", "FULL"):
            scope = join.find_ancestor(exp.Select)
            tables = [t for t in (scope.find_all(exp.Table) if scope else ())
                      if t.find_ancestor(exp.Select) is scope]
            if any(f"{t.db}.{t.name}".lower() in named for t in tables):
                raise ADQLError("an uploaded table is joined to the archive's tables by an "
                                "inner join only (LEFT, RIGHT and FULL joins would repeat its "
                                "rows from every shard)")


def _conditions(scope: exp.Select) -> list[exp.Expr]:
    found: list[exp.Expr] = []
    for node in [scope.args.get("where"), *(j.args.get("on") for j in
                                             scope.args.get("joins") or [])]:
        if node is None:
            continue
        inner = node.this if isinstance(node, exp.Where) else node
        found += list(inner.flatten()) if isinstance(inner, exp.And) else [inner]
    return found


def _point(node: exp.Expr) -> tuple[str, str, str] | None:
    """``(alias, ra column, dec column)`` of ``POINT(s, t.a, t.b)``, else None."""
    if geo.name_of(node) != "POINT" or len(node.expressions) != 3:
        return None
    ra, dec = node.expressions[1], node.expressions[2]
    if isinstance(ra, exp.Column) and isinstance(dec, exp.Column) and ra.table \
            and ra.table == dec.table:
        return ra.table, ra.name, dec.name
    return None


def _pair(condition: exp.Expr) -> tuple[tuple[str, str, str], tuple[str, str, str],
                                       float] | None:
    """The two positions and the radius of a cross-match condition, else None."""
    try:
        found = point_in_region(condition)
        if found is not None and geo.name_of(found[1]) == "CIRCLE":
            point, circle = found
            centre = exp.Anonymous(this="POINT", expressions=circle.expressions[:3])
            one, two = _point(point), _point(centre)
            radius = geo.number(circle.expressions[3])
        elif isinstance(condition, exp.LT | exp.LTE | exp.GT | exp.GTE):
            less = isinstance(condition, exp.LT | exp.LTE)
            distance, bound = ((condition.this, condition.expression) if less
                               else (condition.expression, condition.this))
            if geo.name_of(distance) != "DISTANCE" or len(distance.expressions) != 2:
                return None
            one, two = (_point(p) for p in distance.expressions)
            radius = geo.number(bound)
        else:
            return None
    except ValueError:
        return None
    if one is None or two is None or one[0] == two[0]:
        return None
    return one, two, radius


def _crossmatch(tree: exp.Select, named: dict[str, Upload], chunked: frozenset[str]
                ) -> tuple[str, str, str, str, str, float] | None:
    """``(upload key, its alias, ra column, dec column, the archive table's alias, radius)``
    of the query's cross-match of an upload with a chunked table, if it is one."""
    aliases: dict[str, str] = {}
    for table in tree.find_all(exp.Table):
        if table.find_ancestor(exp.Select) is tree:
            aliases[table.alias_or_name] = f"{table.db}.{table.name}".lower()
    for condition in _conditions(tree):
        found = _pair(condition)
        if found is None:
            continue
        for mine, theirs in (found[:2], found[1::-1]):
            upload = aliases.get(mine[0])
            other = aliases.get(theirs[0])
            if upload in named and other in chunked and 0 <= found[2] <= MAX_RADIUS_DEG:
                return upload, mine[0], mine[1], mine[2], theirs[0], found[2]
    return None


def _narrow(tree: exp.Select, upload: str, archive: str) -> None:
    """Add the sky index conditions linking the archive table to the upload's cover."""
    def column(table: str, name: str) -> exp.Column:
        return exp.column(name, table=table)

    # chunk_id between u's and u's, not equal to it: with an equality MariaDB reads every
    # entry of the chunk for each uploaded row (a ref on the index's first part); two bounds
    # make it work out each row's range on both parts of the index (range checked for each
    # record), a few entries.
    condition = exp.and_(
        exp.GTE(this=column(archive, "chunk_id"), expression=column(upload, _COVER[0])),
        exp.LTE(this=column(archive, "chunk_id"), expression=column(upload, _COVER[0])),
        exp.GTE(this=column(archive, "hpx29"), expression=column(upload, _COVER[1])),
        exp.LT(this=column(archive, "hpx29"), expression=column(upload, _COVER[2])))
    where = tree.args.get("where")
    tree.set("where", exp.Where(this=condition if where is None
                                else exp.and_(where.this, condition)))
