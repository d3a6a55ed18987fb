"""Where an alert sits: on a star, on a quasar, in a galaxy's nucleus or disk, or alone.

One file past 500 lines on purpose: the rules, the counterparts they read and the spherical
geometry they need (ellipse offsets, proper motion) are one concern, changed together.

:func:`classify` takes an alert's position and the reference-catalog sources found around it
(:class:`Counterpart`, each of a kind: star, galaxy, qso or generic) and returns one
:class:`Context`: a label, the counterpart that decided it (catalog, id, separation and, for a
galaxy, the offset in semi-major axes) and a machine-readable reason. The rules and their
thresholds are the fields of :class:`ContextRules`; docs/context.md gives the reasoning behind
each default and the order in which conflicting evidence is weighed. In short:

1. a star within ``star_radius_arcsec`` and a quasar within ``qso_radius_arcsec`` contradict each
   other (unclear); a star alone is a variable star unless the alert is also on a galaxy's
   nucleus (unclear: the "star" may be that nucleus); a quasar alone is an AGN;
2. within a galaxy's nucleus radius: nuclear; inside ``host_limit`` semi-major axes of a galaxy's
   ellipse: supernova-like (the galaxy with the smallest elliptical offset is the host); between
   ``host_limit`` and ``outskirts_limit``: unclear;
3. a generic source within ``generic_radius_arcsec`` and nothing else: unclear;
4. nothing of the above: orphan.

Counterparts with a proper motion and an epoch are first moved to the alert's epoch.
:func:`classify_many` does the same for a batch, with the geometry of every (alert,
counterpart) pair computed in one vectorised pass.

Geometry is exact on the sphere. Separations are great-circle distances
(:func:`broker.domain.sky.angular_separation_deg`). A galaxy's ellipse is tested in the plane
tangent to the sky at the galaxy's centre: the gnomonic coordinates of the alert give its
bearing from the centre (azimuths about the tangent point are preserved exactly, across RA 0/360
and at the poles), and the great-circle distance gives its radius, so a point one semi-major axis
from the centre along the major axis is on the edge whatever the galaxy's size or declination
(see :func:`elliptical_offset`). At a pole, where "north" has no direction, the bearing is
measured from the meridian of the galaxy's catalogued RA, the limit of the formula as the
declination goes to ±90°.

The tests (tests/domain/test_context.py) check the geometry against astropy's separations and
position angles and against points built by rotating unit vectors, on ellipse edges at several
position angles, across RA 0/360 and at dec ±89.9 and ±90, and check the rules on constructed
cases and on the bundled Hipparcos and OpenNGC catalogs.

Why one file: the rules, their thresholds (`ContextRules`) and the geometry they judge by are
one argument, read together with docs/context.md; the geometry has no other user.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from broker.domain.catalogs import CATALOG_KINDS, CatalogKind
from broker.domain.sky import angular_separation_deg

#: A counterpart's kind is its catalog's kind (set at load time, `broker.domain.catalogs`).
Kind = CatalogKind
Label = Literal["variable_star", "nuclear", "supernova_like", "agn", "orphan", "unclear"]
Reason = Literal[
    "star",                    # variable_star: on a star
    "qso",                     # agn: on a quasar
    "galaxy_nucleus",          # nuclear: within a galaxy's nucleus radius
    "galaxy_disk",             # supernova_like: inside a galaxy's ellipse, off its nucleus
    "nothing_near",            # orphan: no counterpart within its kind's search radius
    "star_and_qso",            # unclear: on a star and on a quasar
    "star_at_galaxy_nucleus",  # unclear: on a star that is also a galaxy's nucleus
    "galaxy_outskirts",        # unclear: beyond the host limit, within the outskirts limit
    "generic_only",            # unclear: only sources of unknown nature are close
]
#: How the ellipse a galaxy's offset is measured in was obtained (see `Counterpart.ellipse`).
ShapeSource = Literal["catalog", "circularised", "default"]

KINDS: tuple[str, ...] = CATALOG_KINDS
LABELS: tuple[str, ...] = get_args(Label)
REASONS: tuple[str, ...] = get_args(Reason)

def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


@dataclass(frozen=True, slots=True)
class Ellipse:
    """A galaxy's extent on the sky: semi-axes in arcsec, position angle in degrees east of
    north (of the major axis), and where it came from."""

    semi_major_arcsec: float
    semi_minor_arcsec: float
    pa_deg: float
    source: ShapeSource


@dataclass(frozen=True, slots=True)
class Counterpart:
    """A reference-catalog source near an alert.

    Parameters
    ----------
    catalog
        The reference catalog's name.
    kind
        ``"star"``, ``"galaxy"``, ``"qso"`` or ``"generic"`` (a source of unknown nature).
    source_id
        The source's id in its catalog.
    ra, dec
        Position in degrees (ICRS) at ``epoch_jyear`` when that is given. RA is kept modulo 360.
    major_diameter_arcmin, minor_diameter_arcmin
        Galaxies only, optional: the full lengths (diameters, not semi-axes) of the major and
        minor axes in arcmin, as OpenNGC gives them (``MajAx``, ``MinAx``).
    position_angle_deg
        Galaxies only, optional: position angle of the major axis in degrees east of north
        (OpenNGC's ``PosAng``).
    pmra_mas_yr, pmdec_mas_yr
        Optional proper motion in mas/yr; ``pmra`` is ``μα·cos δ`` (Hipparcos's and Gaia's
        convention).
    epoch_jyear
        Optional Julian year of ``ra``/``dec`` (1991.25 for Hipparcos, 2016.0 for Gaia DR3);
        with a proper motion and the alert's epoch, :func:`classify` moves the position to the
        alert's epoch along a great circle (parallax and radial velocity are ignored).

    A missing optional value is ``None`` or NaN (how a null arrives from pyarrow or numpy).
    Shape values must be finite and positive, the minor axis no longer than the major, and only
    a galaxy may carry a shape; anything else raises ValueError, so a bad catalog row is found
    when it is read, not classified silently.
    """

    catalog: str
    kind: Kind
    source_id: str
    ra: float
    dec: float
    major_diameter_arcmin: float | None = None
    minor_diameter_arcmin: float | None = None
    position_angle_deg: float | None = None
    pmra_mas_yr: float | None = None
    pmdec_mas_yr: float | None = None
    epoch_jyear: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}"
            raise ValueError(msg)
        _check_position(self.ra, self.dec, f"{self.catalog} {self.source_id}")
        object.__setattr__(self, "ra", float(self.ra) % 360.0)
        object.__setattr__(self, "dec", float(self.dec))
        optional = ("major_diameter_arcmin", "minor_diameter_arcmin", "position_angle_deg",
                    "pmra_mas_yr", "pmdec_mas_yr", "epoch_jyear")
        for name in optional:
            value = getattr(self, name)
            if _missing(value):
                object.__setattr__(self, name, None)
            elif not math.isfinite(value):
                msg = f"{self.catalog} {self.source_id}: {name} = {value} is not finite"
                raise ValueError(msg)
            else:
                object.__setattr__(self, name, float(value))
        major, minor = self.major_diameter_arcmin, self.minor_diameter_arcmin
        has_shape = major is not None or minor is not None or self.position_angle_deg is not None
        if has_shape and self.kind != "galaxy":
            msg = (f"{self.catalog} {self.source_id}: only a galaxy may have a shape, "
                   f"not a {self.kind}")
            raise ValueError(msg)
        for name, value in (("major", major), ("minor", minor)):
            if value is not None and value <= 0:
                msg = (f"{self.catalog} {self.source_id}: {name} axis diameter must be "
                       f"positive, not {value}")
                raise ValueError(msg)
        if major is not None and minor is not None and minor > major:
            msg = (f"{self.catalog} {self.source_id}: minor axis {minor}' is longer than the "
                   f"major axis {major}'")
            raise ValueError(msg)

    def ellipse(self, rules: ContextRules) -> Ellipse:
        """The ellipse this galaxy's offsets are measured in.

        With both axes and a position angle: the catalogued ellipse (``"catalog"``). With the
        major axis and a position angle but no minor axis: the circle of the major axis
        (``"catalog"``: nothing is assumed about an orientation). With both axes but no position
        angle: the circle of the same area, radius ``sqrt(a*b)`` (``"circularised"``: the
        orientation is unknown, and the equal-area circle keeps the chance of an unrelated
        alert falling inside unchanged). With only a minor axis, or no size: the circle of
        ``rules.default_semi_major_arcsec`` (``"default"``).
        """
        major, minor, pa = (self.major_diameter_arcmin, self.minor_diameter_arcmin,
                            self.position_angle_deg)
        if major is None:
            r = rules.default_semi_major_arcsec
            return Ellipse(r, r, 0.0, "default")
        a = major * 30.0  # diameter in arcmin -> semi-axis in arcsec
        if minor is None:
            return Ellipse(a, a, pa or 0.0, "catalog")
        b = minor * 30.0
        if pa is None:
            r = math.sqrt(a * b)
            return Ellipse(r, r, 0.0, "circularised" if b < a else "catalog")
        return Ellipse(a, b, pa, "catalog")


@dataclass(frozen=True, slots=True)
class ContextRules:
    """The thresholds of :func:`classify`; docs/context.md gives the reasoning for each default.

    Parameters
    ----------
    star_radius_arcsec
        An alert this close to a star is on that star.
    qso_radius_arcsec
        An alert this close to a quasar is on that quasar.
    generic_radius_arcsec
        An alert this close to a source of unknown nature is probably that source or on it.
    nucleus_floor_arcsec, nucleus_fraction, nucleus_cap_arcsec
        A galaxy's nucleus radius: ``nucleus_fraction`` of its semi-major axis, but at least the
        floor and at most the cap (see :meth:`nucleus_radius_arcsec`).
    host_limit
        An alert within this many semi-major axes of a galaxy's centre (elliptical radius: 1.0
        on the catalogued ellipse) is in that galaxy.
    outskirts_limit
        Beyond ``host_limit`` and up to this many semi-major axes, the galaxy may or may not be
        the host: unclear. Beyond it the galaxy is not considered.
    default_semi_major_arcsec
        The semi-major axis of a galaxy whose catalog gives no size (a circle).
    """

    star_radius_arcsec: float = 1.5
    qso_radius_arcsec: float = 1.0
    generic_radius_arcsec: float = 1.5
    nucleus_floor_arcsec: float = 1.0
    nucleus_fraction: float = 0.01
    nucleus_cap_arcsec: float = 3.0
    host_limit: float = 1.5
    outskirts_limit: float = 2.5
    default_semi_major_arcsec: float = 10.0

    def __post_init__(self) -> None:
        positive = ("star_radius_arcsec", "qso_radius_arcsec", "generic_radius_arcsec",
                    "nucleus_floor_arcsec", "nucleus_cap_arcsec", "host_limit",
                    "outskirts_limit", "default_semi_major_arcsec")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                msg = f"{name} must be positive and finite, not {value}"
                raise ValueError(msg)
        if not (math.isfinite(self.nucleus_fraction) and self.nucleus_fraction >= 0):
            msg = f"nucleus_fraction must be finite and not negative, not {self.nucleus_fraction}"
            raise ValueError(msg)
        if self.nucleus_floor_arcsec > self.nucleus_cap_arcsec:
            msg = (f"nucleus_floor_arcsec {self.nucleus_floor_arcsec} exceeds "
                   f"nucleus_cap_arcsec {self.nucleus_cap_arcsec}")
            raise ValueError(msg)
        if self.host_limit > self.outskirts_limit:
            msg = (f"host_limit {self.host_limit} exceeds outskirts_limit "
                   f"{self.outskirts_limit}")
            raise ValueError(msg)

    def nucleus_radius_arcsec(self, semi_major_arcsec: float) -> float:
        """``nucleus_fraction * a`` clipped to ``[nucleus_floor_arcsec, nucleus_cap_arcsec]``."""
        return min(max(self.nucleus_fraction * semi_major_arcsec, self.nucleus_floor_arcsec),
                   self.nucleus_cap_arcsec)

    def search_radius_arcsec(self, kind: Kind, max_semi_major_arcsec: float | None = None) -> float:
        """How far from an alert a catalog of this kind must be searched for :func:`classify`
        to see every counterpart that can change its answer.

        For galaxies it depends on the largest semi-major axis in the catalog (arcsec;
        ``None`` when the catalog has no sizes). Stars found by their catalogued position need
        this radius widened by the largest proper-motion displacement between the catalog's
        epoch and the alert's.
        """
        if kind == "star":
            return self.star_radius_arcsec
        if kind == "qso":
            return self.qso_radius_arcsec
        if kind == "generic":
            return self.generic_radius_arcsec
        if kind == "galaxy":
            a = max(max_semi_major_arcsec or 0.0, self.default_semi_major_arcsec)
            return max(self.outskirts_limit * a, self.nucleus_cap_arcsec)
        msg = f"kind must be one of {', '.join(KINDS)}, not {kind!r}"
        raise ValueError(msg)


#: The documented defaults.
DEFAULT_RULES = ContextRules()


@dataclass(frozen=True, slots=True)
class Context:
    """The context of an alert.

    ``catalog``, ``source_id``, ``kind`` and ``separation_arcsec`` describe the counterpart that
    decided the label (for an unclear conflict, the nearest of the conflicting ones; for an
    orphan, none). For a galaxy, ``offset_semimajor`` is the alert's elliptical radius in its
    ellipse (1.0 on the edge, 0.5 halfway out along any direction), ``semi_major_arcsec`` the
    semi-major axis it is measured in and ``shape_source`` where that ellipse came from.
    """

    label: Label
    reason: Reason
    catalog: str | None = None
    source_id: str | None = None
    kind: Kind | None = None
    separation_arcsec: float | None = None
    offset_semimajor: float | None = None
    semi_major_arcsec: float | None = None
    shape_source: ShapeSource | None = None


def offset_by(ra: np.ndarray, dec: np.ndarray, bearing_deg: float | np.ndarray,
              distance_deg: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The point ``distance_deg`` along the great circle leaving (ra, dec) at ``bearing_deg``
    east of north (vectorised, degrees; at a pole, north is the meridian of ``ra``)."""
    a0, d0 = np.radians(ra), np.radians(dec)
    theta, rho = np.radians(bearing_deg), np.radians(distance_deg)
    sin_d0, cos_d0 = np.sin(d0), np.cos(d0)
    sin_a0, cos_a0 = np.sin(a0), np.cos(a0)
    # Unit vectors of the point and of its local east and north directions.
    centre = np.stack([cos_d0 * cos_a0, cos_d0 * sin_a0, sin_d0])
    east = np.stack([-sin_a0, cos_a0, np.zeros_like(sin_a0)])
    north = np.stack([-sin_d0 * cos_a0, -sin_d0 * sin_a0, cos_d0])
    p = np.cos(rho) * centre + np.sin(rho) * (np.sin(theta) * east + np.cos(theta) * north)
    out_ra = np.mod(np.degrees(np.arctan2(p[1], p[0])), 360.0)
    out_dec = np.degrees(np.arctan2(p[2], np.hypot(p[0], p[1])))
    return out_ra, out_dec


def elliptical_offset(ra: np.ndarray, dec: np.ndarray, ra0: np.ndarray, dec0: np.ndarray,
                      semi_major_deg: np.ndarray, semi_minor_deg: np.ndarray,
                      pa_deg: np.ndarray) -> np.ndarray:
    """The elliptical radius of points in ellipses on the sky (vectorised, broadcast).

    The ellipse is centred on (ra0, dec0) with its major axis at ``pa_deg`` east of north; the
    result is ``hypot(x / a, y / b)`` where ``x`` and ``y`` are the point's coordinates along
    the major and minor axes: below 1 inside, 1 on the edge, 2 on the ellipse twice as large.

    The point's direction from the centre comes from its gnomonic (tangent-plane) coordinates
    about the centre, ``ξ`` towards east and ``η`` towards north; only their ratio is used, so
    their common factor ``1 / cos(rho)`` is left out (it is what makes a gnomonic radius
    ``tan(rho)``). The distance along that direction is the great-circle distance ``rho``, so
    ``(x, y) = rho · (ξ, η) / |(ξ, η)|`` rotated by the position angle: a point at angular
    distance ``a`` along the major axis is exactly on the edge for a galaxy of any size.
    """
    ra, dec, ra0, dec0 = (np.asarray(v, dtype=np.float64) for v in (ra, dec, ra0, dec0))
    d_ra = np.radians(ra - ra0)
    d, d0 = np.radians(dec), np.radians(dec0)
    xi = np.cos(d) * np.sin(d_ra)
    eta = np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(d_ra)
    rho = angular_separation_deg(ra0, dec0, ra, dec)
    norm = np.hypot(xi, eta)
    # At the centre (and its antipode) the direction is undefined; any will do (rho is 0 there).
    safe = np.where(norm > 0.0, norm, 1.0)
    east = np.where(norm > 0.0, xi / safe, 0.0)
    north = np.where(norm > 0.0, eta / safe, 1.0)
    pa = np.radians(np.asarray(pa_deg, dtype=np.float64))
    along_major = rho * (east * np.sin(pa) + north * np.cos(pa))
    along_minor = rho * (east * np.cos(pa) - north * np.sin(pa))
    return np.asarray(np.hypot(along_major / np.asarray(semi_major_deg, dtype=np.float64),
                               along_minor / np.asarray(semi_minor_deg, dtype=np.float64)))


def _check_position(ra: float, dec: float, what: str) -> None:
    if not (math.isfinite(ra) and math.isfinite(dec)):
        msg = f"{what}: position ({ra}, {dec}) is not finite"
        raise ValueError(msg)
    if not -90.0 <= dec <= 90.0:
        msg = f"{what}: dec = {dec} is outside [-90, 90]"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class _Seen:
    """One counterpart as the rules see it: its separation and, for a galaxy, its ellipse and
    the alert's elliptical offset in it."""

    counterpart: Counterpart
    separation_arcsec: float
    ellipse: Ellipse | None = None
    offset: float = math.nan

    def context(self, label: Label, reason: Reason) -> Context:
        e = self.ellipse
        return Context(
            label=label, reason=reason, catalog=self.counterpart.catalog,
            source_id=self.counterpart.source_id, kind=self.counterpart.kind,
            separation_arcsec=self.separation_arcsec,
            offset_semimajor=None if e is None else self.offset,
            semi_major_arcsec=None if e is None else e.semi_major_arcsec,
            shape_source=None if e is None else e.source,
        )


def _nearest(seen: list[_Seen]) -> _Seen:
    return min(seen, key=lambda s: (s.separation_arcsec, s.counterpart.catalog,
                                    s.counterpart.source_id))


def _least_offset(seen: list[_Seen]) -> _Seen:
    return min(seen, key=lambda s: (s.offset, s.separation_arcsec, s.counterpart.catalog,
                                    s.counterpart.source_id))


def _look(ra: np.ndarray, dec: np.ndarray, epoch: np.ndarray,
          groups: list[list[Counterpart]], rules: ContextRules) -> list[list[_Seen]]:
    """Each alert's counterparts with their separations (after proper motion) and, for
    galaxies, their ellipses and offsets: one vectorised pass over every (alert, counterpart)
    pair of the batch."""
    owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    items = [c for g in groups for c in g]
    if not items:
        return [[] for _ in groups]

    def column(name: str) -> np.ndarray:
        return np.array([math.nan if (v := getattr(c, name)) is None else v for c in items])

    c_ra, c_dec = column("ra"), column("dec")
    pmra, pmdec = np.nan_to_num(column("pmra_mas_yr")), np.nan_to_num(column("pmdec_mas_yr"))
    years = epoch[owner] - column("epoch_jyear")
    # A proper motion moves a source only when both epochs are known; otherwise the catalogued
    # position is used as it is (bit for bit: no round trip through unit vectors).
    step_deg = np.where(np.isfinite(years), np.hypot(pmra, pmdec) * years / 3.6e6, 0.0)
    moving = step_deg != 0.0
    if moving.any():
        bearing = np.degrees(np.arctan2(pmra[moving], pmdec[moving]))
        c_ra[moving], c_dec[moving] = offset_by(c_ra[moving], c_dec[moving], bearing,
                                                step_deg[moving])
    a_ra, a_dec = ra[owner], dec[owner]
    sep = angular_separation_deg(a_ra, a_dec, c_ra, c_dec) * 3600.0
    ellipses = [c.ellipse(rules) if c.kind == "galaxy" else None for c in items]
    # Counterparts that are not galaxies get a unit circle here; their offset is never used.
    a = np.array([e.semi_major_arcsec if e else 1.0 for e in ellipses]) / 3600.0
    b = np.array([e.semi_minor_arcsec if e else 1.0 for e in ellipses]) / 3600.0
    pa = np.array([e.pa_deg if e else 0.0 for e in ellipses])
    offsets = elliptical_offset(a_ra, a_dec, c_ra, c_dec, a, b, pa)
    seen: list[list[_Seen]] = [[] for _ in groups]
    for i, c, s, e, r in zip(owner.tolist(), items, sep.tolist(), ellipses, offsets.tolist(),
                             strict=True):
        seen[i].append(_Seen(c, s, e, r))
    return seen


def _decide(seen: list[_Seen], rules: ContextRules) -> Context:
    """The rules applied to one alert's counterparts."""

    def near(kind: Kind, radius_arcsec: float) -> list[_Seen]:
        return [s for s in seen if s.counterpart.kind == kind
                and s.separation_arcsec <= radius_arcsec]

    stars = near("star", rules.star_radius_arcsec)
    qsos = near("qso", rules.qso_radius_arcsec)
    generics = near("generic", rules.generic_radius_arcsec)
    galaxies = [s for s in seen if s.ellipse is not None]
    nuclei = [g for g in galaxies if g.ellipse is not None and g.separation_arcsec
              <= rules.nucleus_radius_arcsec(g.ellipse.semi_major_arcsec)]
    hosts = [g for g in galaxies if g.offset <= rules.host_limit]
    outskirts = [g for g in galaxies if rules.host_limit < g.offset <= rules.outskirts_limit]

    # The priority, written once (docs/context.md explains it): point sources first, since an
    # alert this close to one is most likely that source varying, unless the evidence
    # contradicts itself; then galaxies, a nucleus before a disk and a disk before outskirts;
    # then sources of unknown nature. Each row: label, reason, candidates, how one is chosen.
    decisions: tuple[tuple[Label, Reason, list[_Seen], Callable[[list[_Seen]], _Seen]], ...] = (
        ("unclear", "star_and_qso", stars + qsos if stars and qsos else [], _nearest),
        ("unclear", "star_at_galaxy_nucleus", stars + nuclei if stars and nuclei else [],
         _nearest),
        ("variable_star", "star", stars, _nearest),
        ("agn", "qso", qsos, _nearest),
        ("nuclear", "galaxy_nucleus", nuclei, _nearest),
        ("supernova_like", "galaxy_disk", hosts, _least_offset),
        ("unclear", "galaxy_outskirts", outskirts, _least_offset),
        ("unclear", "generic_only", generics, _nearest),
    )
    for label, reason, candidates, choose in decisions:
        if candidates:
            return choose(candidates).context(label, reason)
    return Context(label="orphan", reason="nothing_near")


def classify(ra: float, dec: float, counterparts: Iterable[Counterpart], *,
             rules: ContextRules = DEFAULT_RULES, epoch_jyear: float | None = None) -> Context:
    """The context of an alert at (ra, dec) degrees among its counterparts.

    ``counterparts`` may hold anything found around the alert: each kind is looked at only
    within its own radius (:meth:`ContextRules.search_radius_arcsec`), so sources farther away
    change nothing. ``epoch_jyear`` is the alert's Julian epoch; counterparts with a proper
    motion and an epoch are moved to it first. Ties are broken by catalog then source id, so the
    answer does not depend on the order of ``counterparts``.
    """
    return classify_many([ra], [dec], [list(counterparts)], rules=rules,
                         epoch_jyear=None if epoch_jyear is None else [epoch_jyear])[0]


def classify_many(ra: Sequence[float] | np.ndarray, dec: Sequence[float] | np.ndarray,
                  counterparts: Sequence[Iterable[Counterpart]], *,
                  rules: ContextRules = DEFAULT_RULES,
                  epoch_jyear: Sequence[float | None] | np.ndarray | None = None,
                  ) -> list[Context]:
    """:func:`classify` for a batch: alert ``i`` at (``ra[i]``, ``dec[i]``) with
    ``counterparts[i]`` and epoch ``epoch_jyear[i]`` (None or NaN: unknown). The geometry of
    every (alert, counterpart) pair is computed in one vectorised pass, which is what makes a
    batch several times cheaper per alert than calling :func:`classify` in a loop."""
    ra_a = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec_a = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    groups = [list(c) for c in counterparts]
    if not (ra_a.ndim == 1 and ra_a.shape == dec_a.shape and len(groups) == len(ra_a)):
        msg = "ra, dec and counterparts must be sequences of the same length"
        raise ValueError(msg)
    if epoch_jyear is None:
        epoch = np.full(len(ra_a), math.nan)
    else:
        epoch = np.array([math.nan if e is None else e for e in epoch_jyear], dtype=np.float64)
        if epoch.shape != ra_a.shape:
            msg = "epoch_jyear must have one value per alert"
            raise ValueError(msg)
    for r, d in zip(ra_a.tolist(), dec_a.tolist(), strict=True):
        _check_position(r, d, "alert")
    ra_a = np.mod(ra_a, 360.0)
    return [_decide(seen, rules) for seen in _look(ra_a, dec_a, epoch, groups, rules)]
