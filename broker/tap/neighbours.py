"""Joins of the archive's chunked tables: which run shard by shard as they are, which need the
rows of other shards (near-neighbour joins), and which cannot run.

An object, its alert rows, context and matches live on the shard of the object's chunk, so a
join whose chunked tables are linked by ``object_id`` equalities finds every pair on one
shard. Any other join between two chunked tables would lose the pairs whose members sit on
different shards; `plan` refuses it, except a near-neighbour join (Qserv's name): two tables
linked by a condition on their positions within a literal radius ``r``, one of

- ``1 = CONTAINS(POINT(s, b.ra, b.dec), CIRCLE(s, a.ra, a.dec, r))`` (or INTERSECTS, either
  order of its arguments; also ``INTERSECTS(CIRCLE(a..., r1), CIRCLE(b..., r2))``, ``r = r1 +
  r2``),
- ``DISTANCE(POINT(s, a.ra, a.dec), POINT(s, b.ra, b.dec)) < r`` (or ``<=``, or the four
  number form, either side of the comparison),

among the top-level AND conditions of the WHERE clause or of the join's ON.

How such a join runs, with no pair lost or found twice: one table is *local* (``a``: each of
its rows is read on the one shard that holds it), the other *remote* (``b``). Qserv keeps,
for every chunk, an overlap table of the rows of neighbouring chunks within a fixed radius;
the archive has none, so the halo is gathered per query instead (`halo`): the remote table's
rows are read from every shard, and each is sent to every other shard holding a chunk within
``r`` plus the drift margin of its position (`broker.domain.sky.overlap_chunks`, a superset of
the chunks within that distance, and the chunk the position lies in). On each shard the
query then runs with ``b`` replaced by the shard's own rows of ``b`` plus that halo, loaded
into a temporary table. A pair ``(a, b)`` within ``r`` is found on the shard of ``a``: ``a``
lies within `CHUNK_MARGIN_DEG` of the chunk it is stored in (the drift the cone search
allows too), so ``b`` lies within ``r`` plus the margin of that chunk and is either on that
shard or in its halo; it is found nowhere else, since ``a`` is on one shard only and a halo
never holds a row of its own shard. An outer join keeps its preserved table local.

The radius is at most `MAX_RADIUS_DEG` (Qserv's overlap radius in production), and at most a
quarter of a chunk stripe's height less the margin, which `overlap_chunks` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from broker.domain.sky import CHUNK_MARGIN_DEG, Chunker, ChunkPlacement, overlap_chunks
from broker.tap import geometry as geo
from broker.tap.adql import ADQLError
from broker.tap.functions import flagged, point_in_region, position_of

#: The largest radius of a near-neighbour join, in degrees (1 arcminute).
MAX_RADIUS_DEG = 1.0 / 60.0

_REFUSED = ("the archive's tables are joined on object_id (an object's rows share a shard), or "
            "two of them by a near-neighbour condition on their positions (DISTANCE(POINT(a.ra, "
            "a.dec), POINT(b.ra, b.dec)) < r, or 1 = CONTAINS(POINT(b.ra, b.dec), CIRCLE(a.ra, "
            "a.dec, r)), with r a number; docs/tap.md)")


@dataclass(frozen=True)
class NearJoin:
    """A near-neighbour join: the alias read where it is stored, the alias whose rows are
    also sent to other shards (and its table), and the radius in degrees."""

    local: str
    remote: str
    remote_table: str
    radius: float


def _conditions(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    inner = node.this if isinstance(node, exp.Where) else node
    return list(inner.flatten()) if isinstance(inner, exp.And) else [inner]


def _sources(scope: exp.Select) -> list[tuple[exp.Expr, exp.Join | None]]:
    found: list[tuple[exp.Expr, exp.Join | None]] = []
    origin = scope.args.get("from_")
    if origin is not None:
        found.append((origin.this, None))
    found += [(join.this, join) for join in scope.args.get("joins") or []]
    return found


def _chunked(source: exp.Expr, chunked: frozenset[str]) -> bool:
    tables = [source] if isinstance(source, exp.Table) else list(source.find_all(exp.Table))
    return any(f"{t.db}.{t.name}".lower() in chunked for t in tables)


def plan(tree: exp.Select, chunked: frozenset[str]) -> NearJoin | None:
    """The near-neighbour join the query is, None if it runs shard by shard as it is, or
    ADQLError for a join that could run neither way."""
    near = None
    for scope in tree.find_all(exp.Select):
        sources = [(s, j) for s, j in _sources(scope) if _chunked(s, chunked)]
        if len(sources) < 2:
            continue
        aliases = [s.alias_or_name for s, _ in sources]
        conditions = _conditions(scope.args.get("where"))
        for _, join in sources:
            if join is not None:
                conditions += _conditions(join.args.get("on"))
        if _linked(aliases, conditions, sources):
            continue
        if scope is not tree or len(sources) != 2 or not all(
                isinstance(s, exp.Table) for s, _ in sources):
            raise ADQLError(_REFUSED)
        near = _near(sources, conditions)
    return near


def _linked(aliases: list[str], conditions: list[exp.Expr],
            sources: list[tuple[exp.Expr, exp.Join | None]]) -> bool:
    """Whether ``object_id`` equalities link every alias to the others."""
    group = {a: a for a in aliases}

    def root(a: str) -> str:
        while group[a] != a:
            a = group[a]
        return a

    for condition in conditions:
        if isinstance(condition, exp.EQ) and all(
                isinstance(side, exp.Column) and side.name.lower() == "object_id"
                and side.table in group for side in (condition.this, condition.expression)):
            group[root(condition.this.table)] = root(condition.expression.table)
    for i, (_, join) in enumerate(sources):
        using = join.args.get("using") if join is not None else None
        if using and any(u.name.lower() == "object_id" for u in using):
            for earlier in aliases[:i]:
                group[root(aliases[i])] = root(earlier)
    return len({root(a) for a in aliases}) == 1


def _near(sources: list[tuple[exp.Expr, exp.Join | None]],
          conditions: list[exp.Expr]) -> NearJoin:
    (first, _), (second, join) = sources
    names = {first.alias_or_name, second.alias_or_name}
    radius = None
    for condition in conditions:
        found = _radius(condition)
        if found is not None and set(found[:2]) == names:
            radius = found[2] if radius is None else min(radius, found[2])
    if radius is None:
        raise ADQLError(_REFUSED)
    if not 0.0 <= radius <= MAX_RADIUS_DEG:
        raise ADQLError(f"a near-neighbour join's radius is at most {MAX_RADIUS_DEG * 3600:g} "
                        f"arcseconds ({MAX_RADIUS_DEG:g} degrees), not {radius:g} degrees")
    side = (join.args.get("side") or "").upper() if join is not None else ""
    if side == "FULL":
        raise ADQLError("a near-neighbour join may be an inner, LEFT or RIGHT join, not FULL")
    local, remote = (second, first) if side == "RIGHT" else (first, second)
    assert isinstance(remote, exp.Table)  # `plan` sends tables only
    return NearJoin(local.alias_or_name, remote.alias_or_name,
                    f"{remote.db}.{remote.name}".lower(), radius)


def swapped(near: NearJoin, tree: exp.Select) -> NearJoin:
    """The same join read from the other table (allowed for an inner join only)."""
    for _, join in _sources(tree):
        if join is not None and (join.args.get("side") or "").upper() in ("LEFT", "RIGHT"):
            return near
    table = next(t for t in tree.find_all(exp.Table) if t.alias_or_name == near.local
                 and t.find_ancestor(exp.Select) is tree)
    return NearJoin(near.remote, near.local, f"{table.db}.{table.name}".lower(), near.radius)


def _radius(condition: exp.Expr) -> tuple[str, str, float] | None:
    """``(alias, alias, r)`` of a near-neighbour condition (module docstring), else None."""
    try:
        found = point_in_region(condition)
        if found is not None and geo.name_of(found[1]) == "CIRCLE":
            point, circle = found
            centre = exp.Anonymous(this="POINT", expressions=circle.expressions[:3])
            return _pair(point, centre, geo.number(circle.expressions[3]))
        both = flagged(condition)
        if both is not None and geo.name_of(both) == "INTERSECTS" and all(
                geo.name_of(c) == "CIRCLE" for c in both.expressions):
            one, two = both.expressions
            points = [exp.Anonymous(this="POINT", expressions=c.expressions[:3])
                      for c in (one, two)]
            return _pair(points[0], points[1], geo.number(one.expressions[3])
                         + geo.number(two.expressions[3]))
        if isinstance(condition, exp.LT | exp.LTE | exp.GT | exp.GTE):
            less = isinstance(condition, exp.LT | exp.LTE)
            distance, bound = ((condition.this, condition.expression) if less
                               else (condition.expression, condition.this))
            if geo.name_of(distance) == "DISTANCE":
                args = distance.expressions
                points = args if len(args) == 2 else [
                    exp.Anonymous(this="POINT", expressions=[exp.Literal.string(""), *pair])
                    for pair in (args[:2], args[2:])]
                if all(geo.name_of(p) == "POINT" for p in points):
                    return _pair(points[0], points[1], geo.number(bound))
    except ValueError:
        return None
    return None


def _pair(one: exp.Expr, two: exp.Expr, radius: float) -> tuple[str, str, float] | None:
    first, second = position_of(one), position_of(two)
    if first is None or second is None or first == second:
        return None
    return first, second, radius


def check_radius(near: NearJoin, chunker: Chunker) -> float:
    """The halo radius: the join's plus the drift margin; ADQLError if the chunks are too
    small for it."""
    reach = near.radius + CHUNK_MARGIN_DEG
    stripe = 180.0 / chunker.num_stripes
    if 4 * reach > stripe:
        raise ADQLError("a near-neighbour join's radius is at most "
                        f"{stripe / 4 - CHUNK_MARGIN_DEG:g} degrees with this archive's chunks, "
                        f"not {near.radius:g}")
    return reach


def halo(chunker: Chunker, placement: ChunkPlacement, ra: np.ndarray, dec: np.ndarray,
         stored: int, reach: float, chunks: frozenset[int] | None) -> dict[int, np.ndarray]:
    """Which of one shard's rows (positions ``ra``, ``dec``, stored on shard ``stored``)
    every other shard needs: row indices by shard. A row is needed by the shards holding the
    chunk its position lies in and the chunks within ``reach`` of it (all chunks, or only
    ``chunks`` when the local table was narrowed to them)."""
    if len(ra) == 0:
        return {}
    home = chunker.locate(ra, dec)
    rows, near = overlap_chunks(chunker, ra, dec, reach)
    rows = np.concatenate([np.arange(len(ra)), rows])
    near = np.concatenate([home, near])
    if chunks is not None:
        keep = np.isin(near, np.fromiter(chunks, dtype=np.int64))
        rows, near = rows[keep], near[keep]
    shards = placement.shards_of(near)
    out = {}
    for shard in np.unique(shards).tolist():
        if shard != stored:
            out[int(shard)] = np.unique(rows[shards == shard])
    return out
