"""Aggregates over the archive's shards, merged exactly: each shard computes partial
aggregates per group, and a final query over the partials computes the answer.

A query with aggregates (COUNT, SUM, AVG, MIN, MAX), GROUP BY or DISTINCT is split in two
(`split`), as Qserv splits one over its chunks:

- the shard query groups by the query's GROUP BY expressions (or, for SELECT DISTINCT, by its
  select list) and computes one partial per aggregate the query names anywhere (select list,
  HAVING, ORDER BY): COUNT and SUM are summed again, MIN and MAX taken again, and AVG becomes a
  SUM and a COUNT whose quotient is taken at the end, so that an average over shards is the
  average over rows, not of averages;
- the final query runs over the shards' partial rows (a SQLite table in memory): the same
  select list, HAVING, ORDER BY, OFFSET and TOP, with each aggregate replaced by its merge and
  each grouping expression by its partial column.

An aggregate of DISTINCT values (COUNT(DISTINCT x)) has no exact partial and is refused for
now; so is a column outside the aggregates that is not a grouping expression, as SQL requires.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from broker.tap.adql import ADQLError

AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
#: The table the final query reads, holding every shard's partial rows.
PARTIALS = "partials"


@dataclass(frozen=True)
class Split:
    """A query split into the query each shard runs and the one over their partial rows."""

    shard: exp.Select
    final: exp.Select


def needs_split(tree: exp.Select) -> bool:
    return bool(tree.args.get("group") or tree.args.get("distinct")
                or any(_outer_aggregates(tree)))


def _outer_aggregates(tree: exp.Select) -> list[exp.Expr]:
    """The aggregates of the query itself (not those of its subqueries)."""
    found: list[exp.Expr] = []
    for part in [*tree.expressions, tree.args.get("having"), tree.args.get("order")]:
        if part is None:
            continue
        for node in part.walk():
            if isinstance(node, AGGREGATES) and node.find_ancestor(exp.Select) is tree:
                found.append(node)
    return found


def split(tree: exp.Select) -> Split:
    """The shard query and the final query of a query with aggregates or grouping."""
    groups = list(tree.args["group"].expressions) if tree.args.get("group") else []
    aggregates = _outer_aggregates(tree)
    if tree.args.get("distinct") and not groups and not aggregates:
        groups = [e.this if isinstance(e, exp.Alias) else e for e in tree.expressions]
    partials: list[exp.Expr] = []
    merges: dict[exp.Expr, exp.Expr] = {}
    for node in aggregates:
        if node in merges:
            continue
        if node.find(exp.Distinct):
            raise ADQLError(f"{node.key.upper()}(DISTINCT ...) over the archive's shards is "
                            "not supported yet")
        merges[node] = _merge(node, partials)
    shard = exp.Select(expressions=[
        *(exp.alias_(g.copy(), f"__g{i}") for i, g in enumerate(groups)),
        *(exp.alias_(p, f"__p{j}") for j, p in enumerate(partials))])
    for arg in ("from_", "from", "joins", "where"):
        if tree.args.get(arg) is not None:
            shard.set(arg, tree.args[arg].copy())
    if groups:
        shard.set("group", exp.Group(expressions=[g.copy() for g in groups]))

    def final_of(node: exp.Expr) -> exp.Expr:
        if node in merges:
            return merges[node].copy()
        for i, g in enumerate(groups):
            if node == g:
                return exp.column(f"__g{i}")
        if isinstance(node, exp.Column):
            if node.table:
                raise ADQLError(f"{node.sql()} is neither in GROUP BY nor inside an aggregate")
            return node  # a select alias, in ORDER BY or HAVING
        for key, value in list(node.args.items()):
            if isinstance(value, exp.Expr):
                node.set(key, final_of(value))
            elif isinstance(value, list):
                node.set(key, [final_of(v) if isinstance(v, exp.Expr) else v for v in value])
        return node

    final = exp.Select(expressions=[final_of(e.copy()) for e in tree.expressions])
    # Every output keeps the name the query gave it (or its column's name).
    final.set("expressions", [
        e if isinstance(e, exp.Alias) else exp.alias_(e, original.alias_or_name)
        for e, original in zip(final.expressions, tree.expressions, strict=True)])
    final.set("from_", exp.From(this=exp.to_table(PARTIALS)))
    if groups:
        final.set("group", exp.Group(expressions=[exp.column(f"__g{i}")
                                                  for i in range(len(groups))]))
    for arg in ("having", "order", "limit", "offset", "distinct"):
        if tree.args.get(arg) is not None:
            value = tree.args[arg].copy()
            final.set(arg, final_of(value) if arg in ("having", "order") else value)
    return Split(shard, final)


def _merge(node: exp.Expr, partials: list[exp.Expr]) -> exp.Expr:
    """Add an aggregate's partials; the expression that merges them."""
    def partial(expression: exp.Expr) -> exp.Expr:
        partials.append(expression)
        return exp.column(f"__p{len(partials) - 1}")

    if isinstance(node, exp.Count):
        return exp.Coalesce(this=exp.Sum(this=partial(node.copy())),
                            expressions=[exp.Literal.number(0)])
    if isinstance(node, exp.Sum):
        return exp.Sum(this=partial(node.copy()))
    if isinstance(node, exp.Min):
        return exp.Min(this=partial(node.copy()))
    if isinstance(node, exp.Max):
        return exp.Max(this=partial(node.copy()))
    assert isinstance(node, exp.Avg)
    total = partial(exp.Sum(this=node.this.copy()))
    count = partial(exp.Count(this=node.this.copy()))
    return exp.Div(this=exp.Cast(this=exp.Sum(this=total), to=exp.DataType.build("DOUBLE")),
                   expression=exp.Nullif(this=exp.Sum(this=count),
                                         expression=exp.Literal.number(0)))
