"""ADQL's functions in the terms of the database that runs a query: MariaDB (sqlglot's
``mysql``) or SQLite. `rewrite` turns a checked tree into one whose every function both
know, with the archive's tables named as a shard names them.

Geometry (`broker.tap.geometry` has the math):

- ``CONTAINS(POINT, CIRCLE)``: the haversine distance within the radius (the circle's centre
  and radius may be columns or expressions); ``CONTAINS(POINT, BOX)`` and ``CONTAINS(POINT,
  POLYGON)``, with literal numbers for the box or polygon: the signs of dot products with the
  region's edge normals; ``CONTAINS(CIRCLE, CIRCLE)``: the distance of the centres plus the
  inner radius within the outer radius. Each is 1 or 0, as ADQL says.
- ``INTERSECTS`` of a POINT and a region is CONTAINS (as ADQL 2.1 still asks); of two CIRCLEs,
  the distance of the centres within the sum of the radii.
- ``DISTANCE`` (of two POINTs or of four numbers): the haversine distance in degrees.
- ``COORD1``/``COORD2`` of a POINT (or of a CENTROID): its coordinates.
- ``AREA``: of a literal CIRCLE, BOX or POLYGON, a number computed here (square degrees); of
  a CIRCLE whose radius is a column, the cap's area in SQL; of a POINT, 0.
- ``CENTROID`` of a CIRCLE or BOX is its centre; of a literal POLYGON, computed here. It is a
  POINT, so it is used inside COORD1, COORD2, DISTANCE or CONTAINS.
- ``COORDSYS`` of a geometry: 'ICRS' (every POINT, CIRCLE, BOX and POLYGON must name ICRS or
  no system: `geometry.check_shapes`).

Anything else of ADQL's geometry is refused with a message naming what is supported: a
geometry value in the select list (the service returns numbers), a BOX or POLYGON with
columns for coordinates, INTERSECTS of two regions other than two CIRCLEs.

Others: ``LOG`` is the natural logarithm (SQLite's LOG is base 10), ``COT`` is ``1/TAN``
(SQLite has no COT), ``MOD`` is a function in SQLite.
"""

from __future__ import annotations

import math

from sqlglot import exp

from broker.tap import geometry as geo
from broker.tap.adql import ADQLError

_REFUSED_CONTAINS = ("CONTAINS is supported for a POINT in a CIRCLE, BOX or POLYGON and for a "
                     "CIRCLE in a CIRCLE")
_REFUSED_INTERSECTS = ("INTERSECTS is supported for a POINT and a CIRCLE, BOX or POLYGON (as "
                       "CONTAINS) and for two CIRCLEs")


def rewrite(tree: exp.Select, dialect: str) -> exp.Select:
    """ADQL's functions in the terms of ``dialect`` (``mysql`` or ``sqlite``), and the
    archive's tables by their names in a shard's database; ``tree`` is rewritten in place."""
    geo.check_shapes(tree)

    def fix(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Table) and node.db:
            node.set("db", None)
            return node
        if isinstance(node, exp.Contains):
            return _flag(contains(node.this, node.expression))
        if isinstance(node, exp.Anonymous):
            return _function(node, dialect)
        return _scalar(node, dialect)

    # A replaced node's children are not visited again by `transform`: the geometry of a
    # CONTAINS is read whole, then the MIN_OF_ONE made by `geo.distance` is rewritten on a
    # second pass.
    # In place: every caller hands over a tree of its own (a copy of the checked one).
    rewritten = tree.transform(fix, copy=False).transform(fix, copy=False)
    assert isinstance(rewritten, exp.Select)
    return rewritten


def _flag(condition: exp.Expr) -> exp.Expr:
    return exp.Case(ifs=[exp.If(this=condition, true=exp.Literal.number(1))],
                    default=exp.Literal.number(0))


def point_of(node: exp.Expr, what: str) -> tuple[exp.Expr, exp.Expr]:
    """The coordinates of a POINT, or of a CENTROID."""
    name = geo.name_of(node)
    if name == "POINT":
        return node.expressions[1], node.expressions[2]
    if name == "CENTROID":
        return centroid(node.expressions[0])
    raise ADQLError(f"{what} takes a POINT here")


def centroid(shape: exp.Expr) -> tuple[exp.Expr, exp.Expr]:
    name = geo.name_of(shape)
    if name in ("POINT", "CIRCLE", "BOX"):
        return shape.expressions[1], shape.expressions[2]
    region = geo.region(shape) if name == "POLYGON" else None
    if region is None:
        raise ADQLError("CENTROID is supported for a POINT, a CIRCLE, a BOX and a POLYGON of "
                        "literal numbers")
    return geo.literal(region.centre[0]), geo.literal(region.centre[1])


def _literal_region(shape: exp.Expr, what: str) -> geo.Region:
    region = geo.region(shape)
    if region is None:
        raise ADQLError(f"{geo.name_of(shape)} in {what} takes literal numbers for its "
                        "coordinates and sizes here")
    return region


def contains(inner: exp.Expr, outer: exp.Expr) -> exp.Expr:
    """The condition that ``inner`` is in ``outer``."""
    outer_name, inner_name = geo.name_of(outer), geo.name_of(inner)
    for shape in (inner, outer):
        geo.region(shape)  # a CIRCLE of literal numbers is checked even if not needed
    if inner_name in ("POINT", "CENTROID"):
        a, d = point_of(inner, "CONTAINS")
        if outer_name == "CIRCLE":
            _, a0, d0, radius = outer.expressions
            return exp.LTE(this=geo.distance(a, d, a0, d0), expression=radius.copy())
        if outer_name in ("BOX", "POLYGON"):
            return geo.inside_pieces(_literal_region(outer, "CONTAINS").pieces, a, d)
    if inner_name == "CIRCLE" and outer_name == "CIRCLE":
        _, a1, d1, r1 = inner.expressions
        _, a2, d2, r2 = outer.expressions
        return exp.LTE(this=exp.Add(this=geo.distance(a1, d1, a2, d2), expression=r1.copy()),
                       expression=r2.copy())
    raise ADQLError(_REFUSED_CONTAINS)


def intersects(first: exp.Expr, second: exp.Expr) -> exp.Expr:
    names = geo.name_of(first), geo.name_of(second)
    if names[0] in ("POINT", "CENTROID"):
        return contains(first, second)
    if names[1] in ("POINT", "CENTROID"):
        return contains(second, first)
    if names == ("CIRCLE", "CIRCLE"):
        geo.region(first), geo.region(second)  # checked if literal
        _, a1, d1, r1 = first.expressions
        _, a2, d2, r2 = second.expressions
        return exp.LTE(this=geo.distance(a1, d1, a2, d2), expression=exp.Paren(
            this=exp.Add(this=r1.copy(), expression=r2.copy())))
    raise ADQLError(_REFUSED_INTERSECTS)


def area(shape: exp.Expr) -> exp.Expr:
    """A shape's area in square degrees."""
    name = geo.name_of(shape)
    if name == "POINT":
        return exp.Literal.number(0)
    region = geo.region(shape)
    if region is not None:
        return geo.literal(region.area_sr * geo.DEG2_PER_SR)
    if name == "CIRCLE":  # a cap of radius r: 2 pi (1 - cos r) steradians
        radius = shape.expressions[3].copy()
        cap = exp.Sub(this=exp.Literal.number(1), expression=exp.Anonymous(
            this="COS", expressions=[exp.Anonymous(this="RADIANS", expressions=[radius])]))
        return exp.Mul(this=geo.literal(2 * math.pi * geo.DEG2_PER_SR),
                       expression=exp.Paren(this=cap))
    raise ADQLError("AREA is supported for a POINT, a CIRCLE, and a BOX or POLYGON of literal "
                    "numbers")


def _function(node: exp.Anonymous, dialect: str) -> exp.Expr:
    """An ADQL function sqlglot does not know, in the terms of ``dialect``."""
    name = node.name.upper()
    args = node.expressions
    if name == "MIN_OF_ONE":
        least = "MIN" if dialect == "sqlite" else "LEAST"
        return exp.Anonymous(this=least, expressions=[exp.Literal.number(1), *args])
    if name in _GEOMETRY:
        return _GEOMETRY[name](args)
    if name in (*geo.SHAPES, "CENTROID"):
        raise ADQLError(f"{name} is a geometry value, which this service does not return: use "
                        "it in CONTAINS, INTERSECTS, DISTANCE, AREA, COORD1 or COORD2")
    return node


def _distance(args: list[exp.Expr]) -> exp.Expr:
    if len(args) == 2:
        (a1, d1), (a2, d2) = point_of(args[0], "DISTANCE"), point_of(args[1], "DISTANCE")
    else:
        a1, d1, a2, d2 = args
    return geo.distance(a1, d1, a2, d2)


def _coordsys(args: list[exp.Expr]) -> exp.Expr:
    if geo.name_of(args[0]) not in (*geo.SHAPES, "CENTROID"):
        raise ADQLError("COORDSYS takes a POINT, CIRCLE, BOX, POLYGON or CENTROID")
    return exp.Literal.string("ICRS")


_GEOMETRY = {
    "DISTANCE": _distance,
    "COORD1": lambda args: point_of(args[0], "COORD1")[0].copy(),
    "COORD2": lambda args: point_of(args[0], "COORD2")[1].copy(),
    "INTERSECTS": lambda args: _flag(intersects(args[0], args[1])),
    "AREA": lambda args: area(args[0]),
    "COORDSYS": _coordsys,
}


def _scalar(node: exp.Expr, dialect: str) -> exp.Expr:
    """Functions sqlglot knows whose meaning or name differs in ``dialect``."""
    if isinstance(node, exp.Cot):  # not in SQLite
        return exp.Div(this=exp.Literal.number(1),
                       expression=exp.Anonymous(this="TAN", expressions=[node.this]))
    if isinstance(node, exp.Log) and node.args.get("expression") is None:
        return exp.Ln(this=node.this)  # ADQL's LOG is the natural logarithm
    if isinstance(node, exp.Mod) and dialect == "sqlite":
        return exp.Anonymous(this="MOD", expressions=[node.this, node.expression])
    return node


def flagged(condition: exp.Expr) -> exp.Expr | None:
    """The CONTAINS or INTERSECTS of ``1 = CONTAINS(...)`` (either side), else None."""
    if not isinstance(condition, exp.EQ):
        return None
    sides = (condition.this, condition.expression)
    one = any(isinstance(e, exp.Literal) and not e.is_string and e.this == "1" for e in sides)
    found = next((e for e in sides if isinstance(e, exp.Contains)
                  or geo.name_of(e) == "INTERSECTS"), None)
    return found if one else None


def point_in_region(condition: exp.Expr) -> tuple[exp.Expr, exp.Expr] | None:
    """``(point, region)`` of ``1 = CONTAINS(point, region)`` or of ``1 = INTERSECTS`` of a
    point and a region (either order), else None."""
    found = flagged(condition)
    if found is None:
        return None
    first, second = (found.this, found.expression) if isinstance(found, exp.Contains) \
        else tuple(found.expressions)
    if geo.name_of(first) == "POINT" and geo.name_of(second) in geo.REGIONS:
        return first, second
    if isinstance(found, exp.Anonymous) and geo.name_of(second) == "POINT" \
            and geo.name_of(first) in geo.REGIONS:
        return second, first
    return None


def position_of(point: exp.Expr) -> str | None:
    """The table alias of ``POINT(s, t.ra, t.dec)``, else None."""
    ra, dec = point.expressions[1], point.expressions[2]
    if isinstance(ra, exp.Column) and isinstance(dec, exp.Column) and ra.table \
            and ra.table == dec.table and ra.name.lower() == "ra" \
            and dec.name.lower() == "dec":
        return ra.table
    return None
