"""Solar-system alerts (realistic profile): main-belt asteroids on Keplerian orbits.

An asteroid has osculating elements drawn like the main belt's (``a`` 2.1-3.3 au, ``e`` up to
0.25, ``i`` half-normal with a 7 degree scale), an absolute magnitude ``H`` between 12 and 20
with counts rising as ``10**(0.3 H)`` and ``G = 0.15``. Its ephemeris at a time is two-body
motion about the Sun (Kepler's equation by Newton's method) seen from an Earth on a circular
orbit of 1 au, geometric (no light time, no aberration, geocentric rather than topocentric):
good to a few arcminutes, which no test of ours can tell from a real ephemeris. Velocities are
central differences over 0.01 d. ``ephVmag`` is the H-G magnitude; a band's magnitude adds
approximately solar colours.

The alert is what Rubin sends for a detection associated with a known solar-system object: a
``diaSource`` with ``ssObjectId`` set and ``diaObjectId`` null, its ``ssSource`` (geometry,
ephemeris offsets) and ``mpc_orbits`` records, the three cutouts, and no ``diaObject`` and no
history. ``ssObjectId`` is the packed provisional designation's ASCII bytes read as a big-endian
integer, as Rubin's pipelines make it.

Every draw comes from the caller's seeded ``random.Random``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from broker.simulator.instrument import EXPOSURE_S
from broker.simulator.lightcurves import mag_to_njy

__all__ = [
    "MOVING",
    "Asteroid",
    "Ephemeris",
    "band_flux",
    "draw_asteroid",
    "ephemeris",
    "galactic",
    "mpc_orbit_values",
    "ss_source_values",
    "trail",
]

#: `SimObject.kind` of the stand-in object a moving detection is measured on (no light curve).
MOVING = 4

_GAUSS_K_DEG = 0.9856076686  # mean motion at 1 au, degrees per day
_OBLIQUITY = math.radians(23.4392911)
_EARTH_L0, _EARTH_RATE, _J2000_MJD = 100.46457, 0.98560910, 51544.5
_DT = 0.005
# ICRS (J2000) to galactic, rows are the galactic x, y, z axes.
_TO_GALACTIC = (
    (-0.0548755604, -0.8734370902, -0.4838350155),
    (0.4941094279, -0.4448296300, 0.7469822445),
    (-0.8676661490, -0.1980763734, 0.4559837762),
)
# Band minus V for a solar-coloured asteroid, ugrizy (approximate).
_COLOURS = (1.69, 0.26, -0.18, -0.29, -0.32, -0.34)
_HALF_MONTHS = "ABCDEFGHJKLMNOPQRSTUVWXY"
_SECOND_LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"

Vector = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Asteroid:
    """A main-belt asteroid: designations, osculating elements (au, degrees) and H, G."""

    ss_object_id: int
    designation: str
    packed: str
    a: float
    e: float
    i: float
    node: float
    argperi: float
    mean_anomaly: float  # at epoch_mjd
    epoch_mjd: float
    h: float
    g: float

    @property
    def mean_motion(self) -> float:
        """Degrees per day."""
        return _GAUSS_K_DEG / self.a**1.5


@dataclass(frozen=True, slots=True)
class Ephemeris:
    """Where an asteroid is at one time: equatorial (ICRS) vectors in au and au/day."""

    ra: float
    dec: float
    helio: Vector
    helio_v: Vector
    topo: Vector
    topo_v: Vector
    elongation: float  # degrees
    phase_angle: float  # degrees
    vmag: float
    rate_ra: float  # degrees per day, with the cos(dec) factor
    rate_dec: float


def _designations(rng: random.Random) -> tuple[str, str]:
    """An unpacked and packed MPC provisional designation, e.g. ``2019 AB12``, ``K19A12B``."""
    year = rng.randrange(1995, 2026)
    half, second = rng.choice(_HALF_MONTHS), rng.choice(_SECOND_LETTERS)
    cycle = rng.randrange(100)
    unpacked = f"{year} {half}{second}{cycle or ''}"
    packed = f"{'J' if year < 2000 else 'K'}{year % 100:02d}{half}{cycle:02d}{second}"
    return unpacked, packed


def draw_asteroid(rng: random.Random, epoch_mjd: float) -> Asteroid:
    """A main-belt asteroid with elements osculating at ``epoch_mjd``."""
    unpacked, packed = _designations(rng)
    low, high = 10.0 ** (0.3 * 12.0), 10.0 ** (0.3 * 20.0)
    return Asteroid(
        ss_object_id=int.from_bytes(packed.encode("ascii"), "big"),
        designation=unpacked,
        packed=packed,
        a=rng.uniform(2.1, 3.3),
        e=rng.uniform(0.0, 0.25),
        i=abs(rng.gauss(0.0, 7.0)),
        node=rng.uniform(0.0, 360.0),
        argperi=rng.uniform(0.0, 360.0),
        mean_anomaly=rng.uniform(0.0, 360.0),
        epoch_mjd=epoch_mjd,
        h=math.log10(low + rng.random() * (high - low)) / 0.3,
        g=0.15,
    )


def _heliocentric(asteroid: Asteroid, mjd: float) -> Vector:
    """Ecliptic heliocentric position (au) from two-body motion."""
    mean = math.radians(
        (asteroid.mean_anomaly + asteroid.mean_motion * (mjd - asteroid.epoch_mjd)) % 360.0
    )
    e = asteroid.e
    anomaly = mean if e < 0.8 else math.pi
    for _ in range(8):
        anomaly -= (anomaly - e * math.sin(anomaly) - mean) / (1.0 - e * math.cos(anomaly))
    x = asteroid.a * (math.cos(anomaly) - e)
    y = asteroid.a * math.sqrt(1.0 - e * e) * math.sin(anomaly)
    node, peri, inc = (math.radians(v) for v in (asteroid.node, asteroid.argperi, asteroid.i))
    cn, sn, cw, sw, ci, si = (math.cos(node), math.sin(node), math.cos(peri), math.sin(peri),
                              math.cos(inc), math.sin(inc))
    return (
        (cn * cw - sn * sw * ci) * x + (-cn * sw - sn * cw * ci) * y,
        (sn * cw + cn * sw * ci) * x + (-sn * sw + cn * cw * ci) * y,
        (sw * si) * x + (cw * si) * y,
    )


def _earth(mjd: float) -> Vector:
    """Ecliptic heliocentric position of the Earth (circular orbit, mean longitude)."""
    longitude = math.radians(_EARTH_L0 + _EARTH_RATE * (mjd - _J2000_MJD))
    return (math.cos(longitude), math.sin(longitude), 0.0)


def _equatorial(v: Vector) -> Vector:
    x, y, z = v
    c, s = math.cos(_OBLIQUITY), math.sin(_OBLIQUITY)
    return (x, c * y - s * z, s * y + c * z)


def _sub(a: Vector, b: Vector) -> Vector:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _dot(a: Vector, b: Vector) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _norm(a: Vector) -> float:
    return math.sqrt(_dot(a, a))


def _angle(a: Vector, b: Vector) -> float:
    cosine = _dot(a, b) / (_norm(a) * _norm(b))
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def _radec(v: Vector) -> tuple[float, float]:
    ra = math.degrees(math.atan2(v[1], v[0])) % 360.0
    return ra, math.degrees(math.asin(v[2] / _norm(v)))


def _unit(ra: float, dec: float) -> Vector:
    r, d = math.radians(ra), math.radians(dec)
    return (math.cos(d) * math.cos(r), math.cos(d) * math.sin(r), math.sin(d))


def _states(asteroid: Asteroid, mjd: float) -> tuple[Vector, Vector]:
    """Equatorial heliocentric position of the asteroid and geocentric position."""
    helio = _heliocentric(asteroid, mjd)
    return _equatorial(helio), _equatorial(_sub(helio, _earth(mjd)))


def ephemeris(asteroid: Asteroid, mjd: float) -> Ephemeris:
    """The asteroid's position, motion, geometry and V magnitude at ``mjd``."""
    helio, topo = _states(asteroid, mjd)
    before_helio, before_topo = _states(asteroid, mjd - _DT)
    after_helio, after_topo = _states(asteroid, mjd + _DT)
    helio_v = tuple((b - a) / (2.0 * _DT) for a, b in zip(before_helio, after_helio, strict=True))
    topo_v = tuple((b - a) / (2.0 * _DT) for a, b in zip(before_topo, after_topo, strict=True))
    sun = _sub(helio, topo)  # the Earth's heliocentric position
    elongation = _angle(topo, (-sun[0], -sun[1], -sun[2]))
    phase = _angle((-helio[0], -helio[1], -helio[2]), (-topo[0], -topo[1], -topo[2]))
    tan_half = math.tan(math.radians(phase) / 2.0)
    phi1 = math.exp(-3.33 * tan_half**0.63)
    phi2 = math.exp(-1.87 * tan_half**1.22)
    g = asteroid.g
    vmag = (asteroid.h + 5.0 * math.log10(_norm(helio) * _norm(topo))
            - 2.5 * math.log10((1.0 - g) * phi1 + g * phi2))
    ra, dec = _radec(topo)
    ra0, dec0 = _radec(before_topo)
    ra1, dec1 = _radec(after_topo)
    dra = (ra1 - ra0 + 180.0) % 360.0 - 180.0
    return Ephemeris(
        ra=ra,
        dec=dec,
        helio=helio,
        helio_v=(helio_v[0], helio_v[1], helio_v[2]),
        topo=topo,
        topo_v=(topo_v[0], topo_v[1], topo_v[2]),
        elongation=elongation,
        phase_angle=phase,
        vmag=vmag,
        rate_ra=dra * math.cos(math.radians(dec)) / (2.0 * _DT),
        rate_dec=(dec1 - dec0) / (2.0 * _DT),
    )


def band_flux(eph: Ephemeris, band: int) -> float:
    """The asteroid's flux in a band, nJy."""
    return mag_to_njy(eph.vmag + _COLOURS[band])


def galactic(ra: float, dec: float) -> tuple[float, float]:
    """Galactic longitude and latitude (degrees) of an ICRS position."""
    v = _unit(ra, dec)
    x, y, z = (_dot(row, v) for row in _TO_GALACTIC)
    return math.degrees(math.atan2(y, x)) % 360.0, math.degrees(math.asin(max(-1.0, min(1.0, z))))


def trail(eph: Ephemeris, band: int) -> tuple[float, float]:
    """Length (arcsec) of the trail over one exposure and its position angle (degrees E of N)."""
    rate = math.hypot(eph.rate_ra, eph.rate_dec)
    return (rate * 3600.0 * EXPOSURE_S[band] / 86400.0,
            math.degrees(math.atan2(eph.rate_ra, eph.rate_dec)) % 360.0)


def ss_source_values(asteroid: Asteroid, eph: Ephemeris, source: dict[str, Any]) -> dict[str, Any]:
    """The ``ssSource`` values of a detection at ``source``'s position."""
    ra, dec = source["ra"], source["dec"]
    ecliptic = _unit(ra, dec)
    c, s = math.cos(_OBLIQUITY), math.sin(_OBLIQUITY)
    ex, ey, ez = ecliptic[0], c * ecliptic[1] + s * ecliptic[2], -s * ecliptic[1] + c * ecliptic[2]
    gal_lon, gal_lat = galactic(ra, dec)
    offset_ra = ((ra - eph.ra + 180.0) % 360.0 - 180.0) * math.cos(math.radians(dec)) * 3600.0
    offset_dec = (dec - eph.dec) * 3600.0
    rate = math.hypot(eph.rate_ra, eph.rate_dec)
    along = (offset_ra * eph.rate_ra + offset_dec * eph.rate_dec) / rate if rate else 0.0
    cross = (offset_dec * eph.rate_ra - offset_ra * eph.rate_dec) / rate if rate else 0.0
    helio_range, topo_range = _norm(eph.helio), _norm(eph.topo)
    return {
        "diaSourceId": source["diaSourceId"],
        "ssObjectId": asteroid.ss_object_id,
        "designation": asteroid.designation,
        "eclLambda": math.degrees(math.atan2(ey, ex)) % 360.0,
        "eclBeta": math.degrees(math.asin(max(-1.0, min(1.0, ez)))),
        "galLon": gal_lon,
        "galLat": gal_lat,
        "elongation": eph.elongation,
        "phaseAngle": eph.phase_angle,
        "topoRange": topo_range,
        "topoRangeRate": _dot(eph.topo, eph.topo_v) / topo_range,
        "helioRange": helio_range,
        "helioRangeRate": _dot(eph.helio, eph.helio_v) / helio_range,
        "ephRa": eph.ra,
        "ephDec": eph.dec,
        "ephVmag": eph.vmag,
        "ephRate": rate,
        "ephRateRa": eph.rate_ra,
        "ephRateDec": eph.rate_dec,
        "ephOffset": math.hypot(offset_ra, offset_dec),
        "ephOffsetRa": offset_ra,
        "ephOffsetDec": offset_dec,
        "ephOffsetAlongTrack": along,
        "ephOffsetCrossTrack": cross,
        "helio_x": eph.helio[0],
        "helio_y": eph.helio[1],
        "helio_z": eph.helio[2],
        "helio_vx": eph.helio_v[0],
        "helio_vy": eph.helio_v[1],
        "helio_vz": eph.helio_v[2],
        "helio_vtot": _norm(eph.helio_v),
        "topo_x": eph.topo[0],
        "topo_y": eph.topo[1],
        "topo_z": eph.topo[2],
        "topo_vx": eph.topo_v[0],
        "topo_vy": eph.topo_v[1],
        "topo_vz": eph.topo_v[2],
        "topo_vtot": _norm(eph.topo_v),
        "diaDistanceRank": 1,
    }


def mpc_orbit_values(rng: random.Random, asteroid: Asteroid, fitted_micros: int) -> dict[str, Any]:
    """The ``mpc_orbits`` values of an asteroid (the orbit fit's statistics are drawn)."""
    a, e = asteroid.a, asteroid.e
    motion = asteroid.mean_motion
    nopp = rng.randrange(1, 12)
    arc = rng.uniform(300.0, 3000.0) * nopp
    nobs = rng.randrange(20, 60) * nopp
    scale = 1e-6 * rng.uniform(1.0, 50.0) / nopp
    return {
        "id": 0,
        "designation": asteroid.designation,
        "packed_primary_provisional_designation": asteroid.packed,
        "unpacked_primary_provisional_designation": asteroid.designation,
        "created_at": fitted_micros - round(arc * 86400e6),
        "updated_at": fitted_micros,
        "orbit_type_int": 11,
        "u_param": max(0, 6 - nopp),
        "nopp": nopp,
        "arc_length_total": arc,
        "arc_length_sel": arc,
        "nobs_total": nobs,
        "nobs_total_sel": nobs - rng.randrange(0, 5),
        "a": a,
        "q": a * (1.0 - e),
        "e": e,
        "i": asteroid.i,
        "node": asteroid.node,
        "argperi": asteroid.argperi,
        "peri_time": asteroid.mean_anomaly / motion,
        "mean_anomaly": asteroid.mean_anomaly,
        "period": 360.0 / motion,
        "mean_motion": motion,
        "a_unc": a * scale,
        "q_unc": a * scale,
        "e_unc": scale,
        "i_unc": 50.0 * scale,
        "node_unc": 50.0 * scale,
        "argperi_unc": 100.0 * scale,
        "peri_time_unc": 1000.0 * scale,
        "mean_anomaly_unc": 100.0 * scale,
        "period_unc": 360.0 / motion * 1.5 * scale,
        "mean_motion_unc": motion * 1.5 * scale,
        "epoch_mjd": asteroid.epoch_mjd,
        "h": asteroid.h,
        "g": asteroid.g,
        "not_normalized_rms": rng.uniform(0.2, 0.6),
        "normalized_rms": rng.uniform(0.4, 1.2),
        "earth_moid": max(a * (1.0 - e) - 1.0, 0.01),
        "fitting_datetime": fitted_micros,
    }
