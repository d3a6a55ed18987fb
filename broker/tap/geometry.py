"""ADQL's geometry on the chunked store: regions read from a checked tree, their exact tests
in SQL both MariaDB and SQLite run, their areas, centroids and bounding cones.

Positions are tested as 3-D unit vectors ``p = (cos d cos a, cos d sin a, sin d)``: a region
bounded by great circles (a BOX, a POLYGON) is one or more convex pieces, each the
intersection of hemispheres ``n . p >= 0`` whose normals ``n`` are computed here, in Python,
from the literal region; the SQL only evaluates dot products with those constants, so no
inverse trigonometry or wrap-around in RA is involved and RA 0 and the poles are no special
case. A CIRCLE is tested by the haversine distance (exact at small radii, where ``p . c >=
cos r`` loses digits). Points on a boundary are inside.

- ``CIRCLE(s, a, d, r)``: the points within ``r`` of ``(a, d)``.
- ``BOX(s, a, d, w, h)`` (ADQL 2.0 section 2.4.3, after STC's Box): a cross centred on ``c =
  (a, d)`` with arms of half-length ``w/2`` along the parallel's direction ``e`` (east) and
  ``h/2`` along the meridian's ``n`` (north), each side the great circle through an arm's end
  at right angles to the arm. The side through ``cos(w/2) c + sin(w/2) e`` is the great
  circle through that point and ``n``, whose plane's normal is ``sin(w/2) c - cos(w/2) e``; so
  the box is ``|p.e| cos(w/2) <= (p.c) sin(w/2)`` and ``|p.n| cos(h/2) <= (p.c) sin(h/2)``,
  four hemispheres. Its area is ``4 asin(sin(w/2) sin(h/2))`` steradians (checked against a
  Monte Carlo count in the tests); ``w`` and ``h`` lie in [0, 180] degrees.
- ``POLYGON(s, a1, d1, ...)``: vertices joined by the shorter great-circle arcs. Of the two
  regions the boundary cuts the sphere into, the polygon is the smaller one, whatever the
  order of its vertices (clockwise or counter-clockwise): the vertices are projected
  gnomonically from their mean direction ``m`` (a projection that maps great circles to
  straight lines, so the planar polygon's inside is exactly the spherical one's), which
  requires every vertex within 90 degrees of ``m``. A convex polygon is one piece; a concave
  one is cut into triangles by ear clipping in that plane and a point is inside if it is in
  any of them. A boundary that crosses itself, repeats a vertex or has no area is refused.

Area: a spherical triangle's excess, ``tan(E/2) = |a.(b x c)| / (1 + a.b + b.c + c.a)`` (Van
Oosterom and Strackee), summed over the pieces. Centroid: the direction of the integral of
``p`` over the region, which for a region bounded by great-circle arcs is half the sum, over
its edges, of each arc's length times its plane's unit normal pointing inside (the divergence
theorem on the sphere; a hemisphere gives ``pi c``), so a CIRCLE's and a BOX's is its centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from broker.tap.adql import ADQLError

#: Frames a geometry may name: ICRS, or none (the service's, which is ICRS).
FRAMES = frozenset({"", "ICRS"})
#: Vertices a POLYGON may have.
MAX_VERTICES = 100
#: Square degrees in a steradian.
DEG2_PER_SR = (180.0 / math.pi) ** 2
#: Geometry constructors (their first argument is the frame).
SHAPES = frozenset({"POINT", "CIRCLE", "BOX", "POLYGON"})
REGIONS = frozenset({"CIRCLE", "BOX", "POLYGON"})


def name_of(node: exp.Expr) -> str:
    return node.name.upper() if isinstance(node, exp.Anonymous) else ""


def unit(ra: float, dec: float) -> np.ndarray:
    a, d = math.radians(ra), math.radians(dec)
    return np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])


def lonlat(v: np.ndarray) -> tuple[float, float]:
    """A direction's RA in [0, 360) and declination, in degrees."""
    v = v / np.linalg.norm(v)
    ra = math.degrees(math.atan2(v[1], v[0])) % 360.0
    return ra, math.degrees(math.atan2(v[2], math.hypot(v[0], v[1])))


def angle(u: np.ndarray, v: np.ndarray) -> float:
    """The angle between two unit vectors, in radians (exact at all angles)."""
    return math.atan2(float(np.linalg.norm(np.cross(u, v))), float(u @ v))


def number(node: exp.Expr) -> float:
    """A literal number, negated or in brackets or not, or +, -, * or / of such (``30.0 /
    3600``: a radius in arcseconds; not a quotient of two whole numbers, which the databases
    do not agree on); ValueError otherwise."""
    if isinstance(node, exp.Neg):
        return -number(node.this)
    if isinstance(node, exp.Paren):
        return number(node.this)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        a, b = number(node.this), number(node.expression)
        if isinstance(node, exp.Div) and (b == 0 or all(
                isinstance(n, exp.Literal) and n.this.lstrip("-").isdigit()
                for n in (node.this, node.expression))):
            raise ValueError(node)  # 30 / 3600 is 0 in SQLite (whole numbers): not folded
        value = (a + b if isinstance(node, exp.Add) else a - b if isinstance(node, exp.Sub)
                 else a * b if isinstance(node, exp.Mul) else a / b)
        if math.isfinite(value):
            return value
    if isinstance(node, exp.Literal) and not node.is_string:
        value = float(node.this)
        if math.isfinite(value):
            return value
    raise ValueError(node)


def check_shapes(tree: exp.Expr) -> None:
    """Every POINT, CIRCLE, BOX and POLYGON names ICRS or no frame, and takes no text for
    a coordinate or a size."""
    for node in tree.find_all(exp.Anonymous):
        name = name_of(node)
        if name not in SHAPES:
            continue
        frame, *values = node.expressions
        if not (isinstance(frame, exp.Literal) and frame.is_string):
            raise ADQLError(f"{name}'s first argument is its coordinate system, a text such "
                            "as 'ICRS'")
        if frame.this.strip().upper() not in FRAMES:
            raise ADQLError(f"{name} in {frame.this.strip()!r}: this service's positions are "
                            "ICRS; write 'ICRS' or ''")
        for value in values:
            if (isinstance(value, exp.Literal) and value.is_string) or isinstance(value, exp.Null):
                raise ADQLError(f"{name} takes numbers after its coordinate system, not "
                                f"{value.sql()}")


@dataclass(frozen=True)
class Region:
    """A literal CIRCLE, BOX or POLYGON: what it is in numbers."""

    kind: str
    centre: tuple[float, float]
    #: CIRCLE: the radius in degrees; else None.
    radius: float | None
    #: BOX and POLYGON: convex pieces, each a matrix of inward normals (one per row).
    pieces: tuple[np.ndarray, ...]
    area_sr: float
    #: A cone that holds the region: its centre's RA and declination and its radius, degrees.
    cone: tuple[float, float, float]


def region(node: exp.Expr) -> Region | None:
    """The region a CIRCLE, BOX or POLYGON of literal numbers is; None if it has a column or
    an expression; ADQLError if its numbers make no region."""
    name = name_of(node)
    if name not in REGIONS:
        return None
    try:
        values = [number(e) for e in node.expressions[1:]]
    except ValueError:
        return None
    if name == "CIRCLE":
        return circle(*values)
    if name == "BOX":
        return box(*values)
    return polygon(list(zip(values[0::2], values[1::2], strict=True)))


def _position(what: str, ra: float, dec: float) -> None:
    if not -90.0 <= dec <= 90.0:
        raise ADQLError(f"{what}: declination {dec:g} is outside [-90, 90]")


def circle(ra: float, dec: float, radius: float) -> Region:
    _position("CIRCLE", ra, dec)
    if not 0.0 <= radius <= 180.0:
        raise ADQLError(f"CIRCLE: radius {radius:g} is outside [0, 180] degrees")
    area = 2.0 * math.pi * (1.0 - math.cos(math.radians(radius)))
    return Region("CIRCLE", (ra % 360.0, dec), radius, (), area, (ra % 360.0, dec, radius))


def box(ra: float, dec: float, width: float, height: float) -> Region:
    _position("BOX", ra, dec)
    for what, size in (("width", width), ("height", height)):
        if not 0.0 <= size <= 180.0:
            raise ADQLError(f"BOX: {what} {size:g} is outside [0, 180] degrees")
    a, d = math.radians(ra), math.radians(dec)
    c = unit(ra, dec)
    east = np.array([-math.sin(a), math.cos(a), 0.0])
    north = np.array([-math.sin(d) * math.cos(a), -math.sin(d) * math.sin(a), math.cos(d)])
    half_w, half_h = math.radians(width) / 2, math.radians(height) / 2
    normals = np.array([math.sin(half_w) * c - math.cos(half_w) * east,
                        math.sin(half_w) * c + math.cos(half_w) * east,
                        math.sin(half_h) * c - math.cos(half_h) * north,
                        math.sin(half_h) * c + math.cos(half_h) * north])
    area = 4.0 * math.asin(math.sin(half_w) * math.sin(half_h))
    # A corner is where tan(w/2) = (p.e)/(p.c) and tan(h/2) = (p.n)/(p.c).
    if max(width, height) >= 180.0:
        reach = 90.0
    else:
        reach = math.degrees(math.atan(math.hypot(math.tan(half_w), math.tan(half_h))))
    reach = min(90.0, reach * (1 + 1e-12) + 1e-9)
    return Region("BOX", (ra % 360.0, dec), None, (normals,), area, (ra % 360.0, dec, reach))


def polygon(vertices: list[tuple[float, float]]) -> Region:
    for ra, dec in vertices:
        _position("POLYGON", ra, dec)
    points = [unit(ra, dec) for ra, dec in vertices]
    if len(points) > 3 and angle(points[0], points[-1]) == 0.0:
        points.pop()  # the first vertex repeated to close the boundary
    if len(points) > MAX_VERTICES:
        raise ADQLError(f"POLYGON has {len(points)} vertices; at most {MAX_VERTICES}")
    if len(points) < 3:
        raise ADQLError("POLYGON needs three different vertices")
    v = np.array(points)
    for i in range(len(v)):
        if angle(v[i], v[(i + 1) % len(v)]) < 1e-12:
            raise ADQLError(f"POLYGON: vertices {i + 1} and {(i + 1) % len(v) + 1} are the "
                            "same point")
    total = v.sum(axis=0)
    if np.linalg.norm(total) < 1e-9 or min(v @ (total / np.linalg.norm(total))) < 1e-9:
        raise ADQLError("POLYGON: this service takes polygons whose vertices are all within "
                        "90 degrees of their mean direction (smaller than a hemisphere)")
    m = total / np.linalg.norm(total)
    # The gnomonic plane tangent at m, with u1 x u2 = m (so counter-clockwise in the plane is
    # counter-clockwise seen from outside the sphere along m).
    u1 = np.cross([0.0, 0.0, 1.0], m) if abs(m[2]) < 0.9 else np.cross([0.0, 1.0, 0.0], m)
    u1 /= np.linalg.norm(u1)
    u2 = np.cross(m, u1)
    flat = np.stack([(v @ u1) / (v @ m), (v @ u2) / (v @ m)], axis=1)
    _simple(flat)
    order = list(range(len(v)))
    if _signed_area(flat) < 0:
        order.reverse()
    order = [i for k, i in enumerate(order)  # straight vertices add no edge
             if _cross(flat[order[k - 1]], flat[i], flat[order[(k + 1) % len(order)]]) != 0]
    triangles = _ears(flat, order)
    convex = all(_cross(flat[order[k - 1]], flat[i], flat[order[(k + 1) % len(order)]]) > 0
                 for k, i in enumerate(order))
    pieces = [order] if convex else triangles
    area = sum(_excess(v[a], v[b], v[c]) for a, b, c in triangles)
    # Every vertex is within 90 degrees of m, so along each edge the distance from m is
    # largest at a vertex, and the farthest vertex bounds the whole polygon.
    reach = max(math.degrees(angle(m, p)) for p in v) * (1 + 1e-12) + 1e-9
    return Region("POLYGON", lonlat(_centroid(v, order)), None,
                  tuple(_normals(v, piece) for piece in pieces), area, (*lonlat(m), reach))


def _cross(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Twice the signed area of the planar triangle abc (positive counter-clockwise)."""
    return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


def _signed_area(flat: np.ndarray) -> float:
    x, y = flat[:, 0], flat[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) / 2


def _simple(flat: np.ndarray) -> None:
    """ADQLError if the boundary crosses or touches itself, or encloses nothing."""
    n = len(flat)
    for i in range(n):
        a, b = flat[i], flat[(i + 1) % n]
        for j in range(i + 1, n):
            if j == i or (j + 1) % n == i or j == (i + 1) % n:
                continue
            c, d = flat[j], flat[(j + 1) % n]
            if _segments_meet(a, b, c, d):
                raise ADQLError(f"POLYGON: edges {i + 1} and {j + 1} cross; the boundary "
                                "must not cross itself")
    for i in range(n):  # an edge that turns straight back along the one before
        a, b, c = flat[i - 1], flat[i], flat[(i + 1) % n]
        if _cross(a, b, c) == 0 and float((b - a) @ (c - b)) < 0:
            raise ADQLError(f"POLYGON: the boundary turns back on itself at vertex {i + 1}")
    if abs(_signed_area(flat)) < 1e-18:
        raise ADQLError("POLYGON encloses no area")


def _segments_meet(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
    d1, d2 = _cross(c, d, a), _cross(c, d, b)
    d3, d4 = _cross(a, b, c), _cross(a, b, d)
    if ((d1 > 0) != (d2 > 0)) and d1 != 0 and d2 != 0 and ((d3 > 0) != (d4 > 0)) \
            and d3 != 0 and d4 != 0:
        return True

    def on(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> bool:
        return _cross(p, q, r) == 0 and min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) \
            and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])

    return on(c, d, a) or on(c, d, b) or on(a, b, c) or on(a, b, d)


def _ears(flat: np.ndarray, order: list[int]) -> list[tuple[int, int, int]]:
    """Triangles of a simple counter-clockwise planar polygon, by ear clipping."""
    left = list(order)
    triangles = []
    while len(left) > 3:
        for k in range(len(left)):
            a, b, c = left[k - 1], left[k], left[(k + 1) % len(left)]
            if _cross(flat[a], flat[b], flat[c]) <= 0:
                continue  # b is a reflex (or straight) corner
            if any(_in_triangle(flat[p], flat[a], flat[b], flat[c])
                   for p in left if p not in (a, b, c)):
                continue
            triangles.append((a, b, c))
            left.pop(k)
            break
        else:  # pragma: no cover - a simple polygon always has an ear
            raise ADQLError("POLYGON could not be cut into triangles")
    triangles.append((left[0], left[1], left[2]))
    return triangles


def _in_triangle(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    return _cross(a, b, p) >= 0 and _cross(b, c, p) >= 0 and _cross(c, a, p) >= 0


def _normals(v: np.ndarray, piece: list[int] | tuple[int, ...]) -> np.ndarray:
    """The inward normals of a convex piece's edges (each edge's plane, oriented so that the
    piece's mean direction is on its positive side)."""
    inner = v[list(piece)].sum(axis=0)
    normals = []
    for k, i in enumerate(piece):
        n = np.cross(v[i], v[piece[(k + 1) % len(piece)]])
        n /= np.linalg.norm(n)
        normals.append(n if n @ inner > 0 else -n)
    return np.array(normals)


def _excess(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """A spherical triangle's area in steradians (Van Oosterom and Strackee)."""
    return 2.0 * math.atan2(abs(float(a @ np.cross(b, c))),
                            1.0 + float(a @ b + b @ c + c @ a))


def _centroid(v: np.ndarray, order: list[int]) -> np.ndarray:
    """The direction of the integral of p over the polygon (module docstring)."""
    inner = v.sum(axis=0)
    total = np.zeros(3)
    for k, i in enumerate(order):
        j = order[(k + 1) % len(order)]
        n = np.cross(v[i], v[j])
        n /= np.linalg.norm(n)
        # The counter-clockwise edge's normal points inside; `inner` only breaks the tie of
        # a degenerate sign, it is not needed otherwise.
        total += angle(v[i], v[j]) * n
    if total @ inner < 0:
        total = -total
    return total / np.linalg.norm(total)


# -- SQL


def literal(value: float) -> exp.Expr:
    text = repr(float(value))
    node = exp.Literal.number(text.lstrip("-"))
    return exp.Paren(this=exp.Neg(this=node)) if text.startswith("-") else node


def _call(name: str, *args: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this=name, expressions=list(args))


def xyz(a: exp.Expr, d: exp.Expr) -> tuple[exp.Expr, exp.Expr, exp.Expr]:
    """A position's unit vector, as SQL."""
    ra, dec = _call("RADIANS", a.copy()), _call("RADIANS", d.copy())
    cos_dec = _call("COS", dec)
    return (exp.Mul(this=cos_dec, expression=_call("COS", ra)),
            exp.Mul(this=cos_dec.copy(), expression=_call("SIN", ra.copy())),
            _call("SIN", dec.copy()))


def inside_pieces(pieces: tuple[np.ndarray, ...], a: exp.Expr, d: exp.Expr) -> exp.Expr:
    """``(a, d)`` in any piece: every ``n . p >= 0`` of one of them, as SQL."""
    x, y, z = xyz(a, d)
    ors = []
    for normals in pieces:
        tests = []
        for n in normals:
            terms = [exp.Mul(this=literal(c), expression=e.copy())
                     for c, e in zip(n, (x, y, z), strict=True) if c != 0.0]
            dot: exp.Expr = terms[0] if terms else literal(0.0)
            for term in terms[1:]:
                dot = exp.Add(this=dot, expression=term)
            tests.append(exp.GTE(this=dot, expression=exp.Literal.number(0)))
        ors.append(exp.Paren(this=exp.and_(*tests)))
    return exp.Paren(this=exp.or_(*ors))


def distance(a1: exp.Expr, d1: exp.Expr, a2: exp.Expr, d2: exp.Expr) -> exp.Expr:
    """The angle between two positions in degrees (haversine, exact at small angles)."""
    def rad(e: exp.Expr) -> exp.Expr:
        return _call("RADIANS", e.copy())

    def sin2(e: exp.Expr) -> exp.Expr:
        half = exp.Div(this=exp.Paren(this=e), expression=exp.Literal.number(2))
        return exp.Pow(this=_call("SIN", half), expression=exp.Literal.number(2))

    dd = exp.Sub(this=rad(d2), expression=rad(d1))
    da = exp.Sub(this=rad(a2), expression=rad(a1))
    cosines = exp.Mul(this=_call("COS", rad(d1)), expression=_call("COS", rad(d2)))
    inside = exp.Add(this=sin2(dd), expression=exp.Mul(this=cosines, expression=sin2(da)))
    # MIN_OF_ONE (LEAST(1, ...)) keeps ASIN's argument in range where rounding pushes it
    # past 1; it is rewritten for the dialect on the rewriter's second pass.
    root = exp.Sqrt(this=_call("MIN_OF_ONE", inside))
    return _call("DEGREES", exp.Mul(this=exp.Literal.number(2),
                                    expression=_call("ASIN", root)))
