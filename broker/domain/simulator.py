"""Synthetic Rubin alert packets: a realistic, deterministic stream for tests, demos and benchmarks.

`AlertSimulator` keeps a population of DIA objects on the sky and observes them visit by visit with
a survey-like cadence. Every visit yields forced photometry; a visit whose difference-image flux is
detected at 5 sigma or more (either sign) yields a ``diaSource`` and an alert packet carrying that
object's history. The records are built for any alert schema version shipped by
``lsst-alert-packet`` (tested on 10.0, 11.0 and 11.1, and validated on every shipped version): the
schema is walked once, fields the simulator understands get physical values, every other field gets
a value of its type (``null`` where nullable, ``False`` for the nullable flags of a ``diaSource``).

The model, in short:

- **Sky.** Positions uniform on the sphere inside a declination band (default the southern LSST
  footprint, -90 to +30 deg): ``dec = asin(U(sin(dmin), sin(dmax)))``.
- **Light curves** (fluxes in nJy, ``m = -2.5 log10(f) + 31.4``). Supernova-like transients with a
  Bazin rise and decline, per-band peaks, colours and decline times, on a host galaxy that only the
  template and science images see; periodic variables (sine or RR Lyrae-like sawtooth in magnitude,
  periods log-uniform in 0.1-100 d, larger amplitudes in bluer bands); AGN with a damped random
  walk; and flat sources whose only detections are noise spikes and subtraction artefacts (low
  ``reliability``). ``psfFlux`` is the difference flux, ``scienceFlux`` the total flux on the visit
  image, ``templateFlux`` the static part.
- **Noise.** Sky-limited errors from per-band single-visit 5-sigma depths (LSST SRD: u 23.9,
  g 25.0, r 24.7, i 24.0, z 23.3, y 22.1, with 0.25 mag visit-to-visit scatter), plus the template's
  noise and the source's photon noise. Positions scatter by ``0.6 FWHM / SNR`` (about 0.1 arcsec at
  5 sigma) with a 10 mas floor.
- **Cadence.** Nights 1 to ~15 days apart (mean about 4.5), at night in Chile (MJD fraction 0-0.33);
  60 % of nights have a pair of visits 20-40 min apart in two bands (g+r, r+i, i+z, z+y, u+g, u+r,
  y+y), the others one visit. Visit ids follow LSSTCam's ``dayObs * 100000 + seqNum``; the detector
  (0-188) and the pixel position change with every visit.
- **Stream.** Visits of all objects are processed in time order, so a stream of packets has
  non-decreasing ``midpointMjdTai`` and revisits objects as their histories grow. Objects are
  created lazily as their first in-stream visit comes up; the initial population also gets up to
  ``history_days`` of observations before ``start_mjd`` (as if the stream started mid-survey), so
  long-lived objects carry full histories from the first packet. A supernova retires about six
  decline times after its peak and a new one takes its place.
- **History.** ``prvDiaSources`` are the object's own earlier ``diaSource`` records within
  `HISTORY_DAYS` (365 d), at most ``MAX_PRV_SOURCES`` (30), oldest first, or ``null`` when there
  are none; ``prvDiaForcedSources`` its forced measurements at earlier visits within the same
  window. The ``diaObject`` summary (position, per-band means, sigmas, extremes, slopes, counts,
  first and last detection times) is kept by running sums over *every* detection and forced
  measurement of the object, so ``nDiaSources`` may exceed the 31 sources a packet shows.
- **Ids.** One 64-bit serial per simulator, ``(prefix << 41) | n``, with a prefix drawn from the
  seed: ``diaObjectId``, ``diaSourceId`` and ``diaForcedSourceId`` never collide within a stream,
  and two seeds almost surely give disjoint ids. The alert's ``diaSourceId`` is its diaSource's.
- **Cutouts.** Three 30 x 30 float32 FITS images (science, template, difference = science -
  template) in nJy per pixel, with a Gaussian PSF of the visit's seeing on sky noise, the host
  galaxy on science and template, and a TAN WCS (0.2 arcsec per pixel) centred on the diaSource.
  The header is built once with astropy and only its varying cards are rewritten per packet.

Population size: ``n_objects`` objects are alive at any time. Left as ``None``, it is fixed on the
first call of `AlertSimulator.packets` or `AlertSimulator.encoded` to ``max(1, count // 5)``, so a
stream of N packets holds about five in-stream detections per object.

Determinism: the seed fixes everything (a Python ``random.Random`` for the scalar draws, a numpy
``Generator`` for the images, and the id prefix); nothing reads the clock, and
``timeProcessedMjdTai`` is ``midpointMjdTai`` plus a drawn latency. The same seed, arguments and
sequence of calls give byte-identical encoded packets.

Records share their history sub-records internally; `AlertSimulator.packets` hands out copies, so a
caller may change a packet without changing later ones.

This module is plain Python and numpy (plus astropy for the FITS template and the schema walk over
``lsst-alert-packet``); it imports no Kafka or database driver.
"""

from __future__ import annotations

import copy
import datetime as dt
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from astropy.io import fits

from broker.constants import MAX_PRV_SOURCES, NJY_AB_ZEROPOINT, RUBIN_BANDS
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion, schema_definition

__all__ = ["CUTOUT_SIZE", "HISTORY_DAYS", "PIXEL_SCALE_ARCSEC", "AlertSimulator"]

#: Days of history an alert carries (prvDiaSources and prvDiaForcedSources).
HISTORY_DAYS = 365.0
#: Side of the square cutouts, in pixels (Rubin's nominal stamps are about 30 x 30).
CUTOUT_SIZE = 30
#: LSSTCam pixel scale.
PIXEL_SCALE_ARCSEC = 0.2

_N_DETECTORS = 189  # LSSTCam science detectors 0-188
_DETECTOR_PIXELS = (4072, 4000)
_BANDS = len(RUBIN_BANDS)
# LSST SRD single-visit 5-sigma point-source depths (Ivezic et al. 2019), in band order.
_M5 = (23.9, 25.0, 24.7, 24.0, 23.3, 22.1)
_M5_SCATTER = 0.25
_SEEING_MEDIAN_ARCSEC = 0.8
_EXPOSURE_S = (38.0, 30.0, 30.0, 30.0, 30.0, 30.0)
# Photo-electrons per nJy in a 30 s visit, for the source's own Poisson noise.
_ELECTRONS_PER_NJY = 2.0
# A template coadd is ~9x deeper in variance than one visit.
_TEMPLATE_VARIANCE_RATIO = 1.0 / 9.0
_CALIBRATION_FLOOR = 0.005
_DETECTION_SIGMA = 5.0
_MJD_UNIX_EPOCH = 40587.0
_SEQ_EXPOSURE_S = 36.0

# Survey cadence: band pairs taken on the same night and how often each is scheduled.
_PAIRS = ((1, 2), (2, 3), (3, 4), (4, 5), (0, 1), (0, 2), (5, 5))
_PAIR_CUM = tuple(itertools.accumulate((0.17, 0.25, 0.22, 0.18, 0.05, 0.05, 0.08)))
_SINGLE_CUM = tuple(itertools.accumulate((0.06, 0.09, 0.22, 0.22, 0.20, 0.21)))
_PAIR_NIGHT_FRACTION = 0.6
_MEAN_EXTRA_NIGHTS = 4.0

# Light-curve classes and their share of the population.
_SN, _PERIODIC, _AGN, _FLAT = range(4)
_CLASS_CUM = tuple(itertools.accumulate((0.35, 0.30, 0.20, 0.15)))
_FLAT_DETECTION_PROBABILITY = 0.25

# Galactic north pole (J2000), to tell the plane from high latitudes for target names.
_NGP = (-0.8676661490, -0.1980763734, 0.4559837762)
_MAX_IDLE_VISITS = 1_000_000


# --------------------------------------------------------------------------------------------
# Schema walking: one plan per record kind, built once per schema version.


_PY_TYPES: dict[str, frozenset[type]] = {
    "boolean": frozenset({bool}),
    "int": frozenset({int}),
    "long": frozenset({int}),
    "float": frozenset({float, int}),
    "double": frozenset({float, int}),
    "string": frozenset({str}),
    "bytes": frozenset({bytes}),
}
_PRIMITIVE_DEFAULTS: dict[str, Any] = {
    "null": None,
    "boolean": False,
    "int": 0,
    "long": 0,
    "float": 0.0,
    "double": 0.0,
    "string": "",
    "bytes": b"",
}
_TIMESTAMPS = ("timestamp-micros", "timestamp-millis")


def _branches(avro_type: Any) -> list[Any]:
    return avro_type if isinstance(avro_type, list) else [avro_type]


def _collect_named(avro_type: Any, named: dict[str, Any]) -> None:
    """Register every named type of a schema under its full name (references point at them)."""
    for branch in _branches(avro_type):
        if not isinstance(branch, dict):
            continue
        kind = branch.get("type")
        if kind in ("record", "enum", "fixed") and "name" in branch:
            named.setdefault(branch["name"], branch)
        if kind == "record":
            for field in branch["fields"]:
                _collect_named(field["type"], named)
        elif kind == "array":
            _collect_named(branch["items"], named)
        elif kind == "map":
            _collect_named(branch["values"], named)


def _resolve(avro_type: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(avro_type, str) and avro_type in named:
        return named[avro_type]
    return avro_type


def _default(avro_type: Any, named: Mapping[str, Any], *, false_flags: bool = False) -> Any:
    """A valid value of any Avro type: null if nullable, else the type's zero."""
    branches = _branches(avro_type)
    if isinstance(avro_type, list):
        if "null" not in branches:
            return _default(branches[0], named)
        others = [b for b in branches if b != "null"]
        return False if false_flags and others == ["boolean"] else None
    resolved = _resolve(avro_type, named)
    if isinstance(resolved, str):
        return _PRIMITIVE_DEFAULTS[resolved]
    kind = resolved["type"]
    makers: dict[str, Callable[[], Any]] = {
        "record": lambda: {f["name"]: _default(f["type"], named) for f in resolved["fields"]},
        "array": list,
        "map": dict,
        "enum": lambda: resolved["symbols"][0],
        "fixed": lambda: bytes(resolved["size"]),
    }
    maker = makers.get(kind)
    return maker() if maker is not None else _default(kind, named)


def _accepted(avro_type: Any, named: Mapping[str, Any]) -> tuple[frozenset[type], bool]:
    """Python types a field takes from the simulator, and whether ints must fit in 32 bits."""
    accepted: set[type] = set()
    names: set[str] = set()
    for branch in _branches(avro_type):
        resolved = _resolve(branch, named)
        if isinstance(resolved, dict):
            kind = resolved["type"]
            if resolved.get("logicalType") in _TIMESTAMPS and kind == "long":
                accepted.add(int)
                names.add("long")
                continue
            if "logicalType" in resolved:
                continue
            if kind == "record":
                accepted.add(dict)
                continue
            if kind == "array":
                accepted.add(list)
                continue
            resolved = kind
        if isinstance(resolved, str) and resolved in _PY_TYPES:
            accepted |= _PY_TYPES[resolved]
            names.add(resolved)
    return frozenset(accepted), "int" in names and "long" not in names


@dataclass(frozen=True, slots=True)
class _RecordPlan:
    """How to turn a dict of simulated values into a record of one schema's record type."""

    template: dict[str, Any]
    fill: tuple[tuple[str, str, frozenset[type], bool], ...]
    deep: bool

    @classmethod
    def build_plan(
        cls,
        record_schema: Mapping[str, Any],
        named: Mapping[str, Any],
        aliases: Mapping[str, str],
        *,
        false_flags: bool = False,
    ) -> _RecordPlan:
        template: dict[str, Any] = {}
        fill = []
        for field in record_schema["fields"]:
            name = field["name"]
            template[name] = _default(field["type"], named, false_flags=false_flags)
            accepted, int32 = _accepted(field["type"], named)
            if accepted:
                fill.append((name, aliases.get(name, name), accepted, int32))
        deep = any(isinstance(v, list | dict) for v in template.values())
        return cls(template, tuple(fill), deep)

    def build(self, values: Mapping[str, Any]) -> dict[str, Any]:
        record = copy.deepcopy(self.template) if self.deep else self.template.copy()
        for name, key, accepted, int32 in self.fill:
            value = values.get(key)
            if value is None or type(value) not in accepted:
                continue
            if int32 and not -(2**31) <= value < 2**31:
                continue
            record[name] = value
        return record


# Field names of older schema versions that mean what a newer name means.
_SOURCE_ALIASES = {
    "decl": "dec",
    "declErr": "decErr",
    "ra_decl_Cov": "ra_dec_Cov",
    "midPointTai": "midpointMjdTai",
    "filterName": "band",
    "psFlux": "psfFlux",
    "psFluxErr": "psfFluxErr",
    "totFlux": "scienceFlux",
    "totFluxErr": "scienceFluxErr",
    "time_processed": "_timeProcessedMicros",
    "is_negative": "isNegative",
}
_OBJECT_ALIASES = {"decl": "dec", "declErr": "decErr", "validityStart": "_validityStartMicros"}
_ALERT_ALIASES = {"alertId": "diaSourceId"}


@dataclass(frozen=True, slots=True)
class _SchemaPlan:
    alert: _RecordPlan
    source: _RecordPlan
    forced: _RecordPlan
    dia_object: _RecordPlan
    # Alert fields that are ``null`` or one record/array, with that branch's name. fastavro's
    # writer validates a whole sub-record to choose a union branch; naming the branch (its tuple
    # notation) skips that and writes the same bytes.
    union_hints: dict[str, str]


def _union_hints(definition: Mapping[str, Any], named: Mapping[str, Any]) -> dict[str, str]:
    hints = {}
    for field in definition["fields"]:
        branches = _branches(field["type"])
        others = [b for b in branches if b != "null"]
        if len(branches) != 2 or len(others) != 1:
            continue
        resolved = _resolve(others[0], named)
        if isinstance(resolved, dict) and resolved.get("type") in ("record", "array", "map"):
            hints[field["name"]] = resolved.get("name") or resolved["type"]
    return hints


def _record_of(avro_type: Any, named: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record schema inside a (nullable, possibly array-of) field type."""
    for branch in _branches(avro_type):
        resolved = _resolve(branch, named)
        if isinstance(resolved, dict) and resolved.get("type") == "array":
            resolved = _resolve(resolved["items"], named)
        if isinstance(resolved, dict) and resolved.get("type") == "record":
            return resolved
    return None


@cache
def _schema_plan(schema_id: int) -> _SchemaPlan:
    definition = schema_definition(schema_id)
    named: dict[str, Any] = {}
    _collect_named(definition, named)
    fields = {f["name"]: f["type"] for f in definition["fields"]}
    empty: Mapping[str, Any] = {"fields": []}
    source = _record_of(fields.get("diaSource"), named) or empty
    forced = _record_of(fields.get("prvDiaForcedSources"), named) or empty
    dia_object = _record_of(fields.get("diaObject"), named) or empty
    return _SchemaPlan(
        alert=_RecordPlan.build_plan(definition, named, _ALERT_ALIASES),
        source=_RecordPlan.build_plan(source, named, _SOURCE_ALIASES, false_flags=True),
        forced=_RecordPlan.build_plan(forced, named, _SOURCE_ALIASES),
        dia_object=_RecordPlan.build_plan(dia_object, named, _OBJECT_ALIASES),
        union_hints=_union_hints(definition, named),
    )


# --------------------------------------------------------------------------------------------
# Cutouts: the FITS header is built once by astropy, then only its varying cards are rewritten.

_CARD = 80
_BLOCK = 2880
_CUTOUT_KINDS = ("science", "template", "difference")
_VARYING = ("CRVAL1", "CRVAL2", "MJD-OBS", "BAND", "DIASRCID")


@dataclass(frozen=True, slots=True)
class _HeaderTemplate:
    image: bytes
    offsets: dict[str, int]  # byte offset of each varying card


def _fits_real(value: float) -> str:
    text = f"{value:.15G}"
    if "." not in text and "E" not in text:
        text += ".0"
    return text


def _card(key: str, value: str, comment: str = "") -> bytes:
    """An 80-byte fixed-format card: numbers end in column 30, strings start in column 11."""
    text = f"{key:<8}= {value:<20}" if value.startswith("'") else f"{key:<8}= {value:>20}"
    if comment:
        text += f" / {comment}"
    return text[:_CARD].ljust(_CARD).encode("ascii")


@cache
def _header_template(kind: str) -> _HeaderTemplate:
    data = np.zeros((CUTOUT_SIZE, CUTOUT_SIZE), dtype=">f4")
    header = fits.PrimaryHDU(data=data).header
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    centre = (CUTOUT_SIZE + 1) / 2.0
    header["WCSAXES"] = (2, "number of WCS axes")
    header["CTYPE1"] = ("RA---TAN", "gnomonic projection")
    header["CTYPE2"] = ("DEC--TAN", "gnomonic projection")
    header["CUNIT1"] = ("deg", "")
    header["CUNIT2"] = ("deg", "")
    header["CRPIX1"] = (centre, "reference pixel: centre of the stamp")
    header["CRPIX2"] = (centre, "reference pixel: centre of the stamp")
    header["CRVAL1"] = (0.0, "[deg] RA of the diaSource")
    header["CRVAL2"] = (0.0, "[deg] Dec of the diaSource")
    header["CDELT1"] = (-scale, "[deg/pixel] 0.2 arcsec, RA grows to the left")
    header["CDELT2"] = (scale, "[deg/pixel] 0.2 arcsec")
    header["RADESYS"] = ("ICRS", "")
    if kind != "template":
        header["MJD-OBS"] = (0.0, "[d] visit midpoint, TAI")
    header["BAND"] = ("r", "Rubin band")
    header["BUNIT"] = ("nJy", "pixel values")
    header["CUTOUT"] = (kind, "science, template or difference")
    header["DIASRCID"] = (0, "diaSourceId of the alert")
    header["ORIGIN"] = ("Lanner simulator", "synthetic data")
    image = header.tostring().encode("ascii")
    offsets = {}
    for start in range(0, len(image), _CARD):
        key = image[start : start + 8].decode("ascii").strip()
        if key in _VARYING:
            offsets[key] = start
    return _HeaderTemplate(image, offsets)


_PIXELS = np.arange(CUTOUT_SIZE, dtype=np.float64) - (CUTOUT_SIZE - 1) / 2.0
_DATA_BYTES = CUTOUT_SIZE * CUTOUT_SIZE * 4
_DATA_PADDING = b"\0" * (-_DATA_BYTES % _BLOCK)


def _gaussian(sigma: float, dx: float, dy: float) -> np.ndarray:
    """A unit-sum 2-D Gaussian on the stamp grid, centred (dx, dy) pixels from the centre."""
    gx = np.exp(-0.5 * ((_PIXELS - dx) / sigma) ** 2)
    gy = np.exp(-0.5 * ((_PIXELS - dy) / sigma) ** 2)
    image = np.outer(gy, gx)
    image /= image.sum()
    return image


# --------------------------------------------------------------------------------------------
# Light-curve models and per-object state.


def _mag_to_njy(mag: float) -> float:
    return 10.0 ** (-0.4 * (mag - NJY_AB_ZEROPOINT))


def _powerlaw_mag(rng: random.Random, low: float, high: float, slope: float) -> float:
    """A magnitude with counts N(<m) proportional to 10**(slope * m) between low and high."""
    a, b = 10.0 ** (slope * low), 10.0 ** (slope * high)
    return math.log10(a + rng.random() * (b - a)) / slope


@dataclass(slots=True)
class _Host:
    """A Gaussian host galaxy: total flux per band, size and offset in pixels."""

    flux: tuple[float, ...]
    sigma_px: float
    dx: float
    dy: float


# Per-band PSF-flux fraction of an extended host for the median seeing.
def _host_psf_fraction(sigma_px: float, offset_px: float) -> float:
    psf = _SEEING_MEDIAN_ARCSEC / 2.3548 / PIXEL_SCALE_ARCSEC
    total = psf * psf + sigma_px * sigma_px
    return 2.0 * psf * psf / total * math.exp(-offset_px * offset_px / (2.0 * total))


_GALAXY_COLOURS = (1.5, 0.6, 0.0, -0.4, -0.6, -0.7)  # band minus r, mag
_AGN_COLOURS = (0.4, 0.2, 0.0, -0.2, -0.3, -0.4)
_AMPLITUDE_SCALE = (1.5, 1.25, 1.0, 0.85, 0.75, 0.7)
_SN_COLOURS = (0.6, 0.0, 0.0, 0.3, 0.45, 0.6)
_SN_COLOUR_SLOPE = (1.5, 0.8, 0.0, -0.5, -0.8, -1.0)
_SN_DECLINE_SCALE = (0.8, 0.9, 1.0, 1.15, 1.25, 1.3)


class _Object:
    """One DIA object: its model, its cadence position and its accumulated history."""

    __slots__ = (
        "agn_state",
        "agn_time",
        "amplitude",
        "cos_dec",
        "dec",
        "detections",
        "dia_object_id",
        "first_mjd",
        "forced",
        "forced_stats",
        "host",
        "kind",
        "last_mjd",
        "n_sources",
        "params",
        "pos_sums",
        "ra",
        "retire_mjd",
        "source_stats",
        "static",
        "target_name",
    )

    def __init__(self, dia_object_id: int, kind: int, ra: float, dec: float) -> None:
        self.dia_object_id = dia_object_id
        self.kind = kind
        self.ra = ra
        self.dec = dec
        self.cos_dec = max(math.cos(math.radians(dec)), 1e-6)
        self.static: tuple[float, ...] = (0.0,) * _BANDS
        self.amplitude: tuple[float, ...] = (0.0,) * _BANDS
        self.params: tuple[float, ...] = ()
        self.host: _Host | None = None
        self.agn_state = 0.0
        self.agn_time: float | None = None
        self.retire_mjd: float | None = None
        self.target_name = "lowdust"
        self.detections: deque[tuple[float, dict[str, Any]]] = deque(maxlen=MAX_PRV_SOURCES)
        self.forced: deque[tuple[float, dict[str, Any]]] = deque()
        # Per band: n, sum w, sum w f, sum f, sum f^2, min, max, max slope, last t, last f, sum err.
        self.source_stats: list[list[float]] = [
            [0, 0.0, 0.0, 0.0, 0.0, math.inf, -math.inf, -math.inf, 0.0, 0.0, 0.0]
            for _ in range(_BANDS)
        ]
        # Per band: sum w, sum w f (difference), sum w, sum w f (science).
        self.forced_stats: list[list[float]] = [[0.0, 0.0, 0.0, 0.0] for _ in range(_BANDS)]
        # Inverse-variance sums of the detections' offsets from the true position (arcsec).
        self.pos_sums = [0.0, 0.0, 0.0]
        self.n_sources = 0
        self.first_mjd: float | None = None
        self.last_mjd: float | None = None

    def mean_position(self) -> tuple[float, float, float]:
        """Weighted mean of the detections: ra, dec (deg) and its error (arcsec)."""
        weight, wdx, wdy = self.pos_sums
        if weight <= 0.0:
            return self.ra, self.dec, 0.1
        dx, dy = wdx / weight, wdy / weight
        ra = (self.ra + dx / 3600.0 / self.cos_dec) % 360.0
        dec = max(-90.0, min(90.0, self.dec + dy / 3600.0))
        return ra, dec, 1.0 / math.sqrt(weight)


@dataclass(slots=True)
class _Visit:
    """One planned observation of one object."""

    mjd: float
    band: int
    reason: str
    second: tuple[float, int] | None  # the night's second visit, if any


@dataclass(slots=True)
class _Measurement:
    """What one visit measured of one object (forced photometry and the visit's conditions)."""

    visit: _Visit
    visit_id: int
    detector: int
    processed: float  # timeProcessedMjdTai
    seeing: float  # PSF FWHM, arcsec
    sky_sigma: float  # 1-sigma point-source flux error from the sky alone, nJy
    true_diff: float  # model difference flux, nJy
    flux: float  # forced difference flux, nJy
    detection_flux: float  # difference flux of the detection's own PSF fit, nJy
    err: float
    science: float  # measured total flux on the visit image, nJy
    sci_err: float
    detected: bool


# --------------------------------------------------------------------------------------------


class AlertSimulator:
    """A deterministic stream of synthetic Rubin alert packets.

    Parameters
    ----------
    schema
        Alert schema version of the records (``SchemaVersion`` or text such as ``"11.1"``).
    seed
        Seed of every random draw; ``None`` draws fresh entropy (see `seed_used`).
    n_objects
        Objects alive at any time; ``None`` fixes it on the first `packets` or `encoded` call to
        ``max(1, count // 5)``.
    start_mjd
        TAI MJD at which the stream starts.
    cutouts
        Whether packets carry the three FITS cutouts (``None`` otherwise).
    history_days
        How far before ``start_mjd`` the initial population has already been observed (0 gives
        every object an empty history at the start of the stream).
    dec_range
        Declination band of the population, degrees.
    """

    def __init__(
        self,
        *,
        schema: SchemaVersion | str,
        seed: int | None = None,
        n_objects: int | None = None,
        start_mjd: float = 61000.0,
        cutouts: bool = True,
        history_days: float = HISTORY_DAYS,
        dec_range: tuple[float, float] = (-90.0, 30.0),
    ) -> None:
        self.schema = SchemaVersion.parse(schema) if isinstance(schema, str) else schema
        self.schema_id = self.schema.schema_id
        self._plan = _schema_plan(self.schema_id)
        if n_objects is not None and n_objects < 1:
            msg = f"n_objects must be at least 1, not {n_objects}"
            raise ValueError(msg)
        low, high = dec_range
        if not -90.0 <= low < high <= 90.0:
            msg = f"dec_range {dec_range} is not an increasing pair within [-90, 90]"
            raise ValueError(msg)
        if history_days < 0:
            msg = f"history_days must not be negative, not {history_days}"
            raise ValueError(msg)
        sequence = np.random.SeedSequence(seed)
        self.seed_used: int = int(sequence.entropy)  # type: ignore[arg-type]
        scalar_seed, image_seed, id_seed = sequence.generate_state(3, dtype=np.uint64)
        self._rng = random.Random(int(scalar_seed))
        self._images = np.random.default_rng(int(image_seed))
        self._id_prefix = (int(id_seed) % (2**21 - 1) + 1) << 41
        self._serial = 0
        self._n_objects = n_objects
        self._start_mjd = float(start_mjd)
        self._cutouts = cutouts
        self._history_days = float(history_days)
        self._sin_dec = (math.sin(math.radians(low)), math.sin(math.radians(high)))
        self._arrivals: list[float] | None = None
        self._next_arrival = 0
        self._queue: list[tuple[float, int, _Object, _Visit]] = []
        self._tiebreak = itertools.count()
        self._day_obs: dict[int, int] = {}

    # ---- public API ----------------------------------------------------------------------

    def packets(self, count: int) -> Iterator[dict[str, Any]]:
        """Yield the next ``count`` alert records of the stream, in time order."""
        self._start(count)
        for _ in range(count):
            yield self._next_record(share=False)

    def encoded(self, count: int) -> Iterator[tuple[bytes, bytes]]:
        """Yield the next ``count`` alerts as Kafka ``(key, value)`` pairs.

        The key is the ``diaObjectId`` as ASCII decimal digits (so one object's alerts share a
        partition); the value is the Confluent wire-format message (`broker.streaming.wire`).
        """
        self._start(count)
        for _ in range(count):
            record = self._next_record(share=True)
            key = str(record["diaObject"]["diaObjectId"]).encode("ascii")
            yield key, wire.encode(self._hinted(record), self.schema_id)

    def _hinted(self, record: dict[str, Any]) -> dict[str, Any]:
        hinted = dict(record)
        for name, branch in self._plan.union_hints.items():
            value = hinted.get(name)
            if value is not None:
                hinted[name] = (branch, value)
        return hinted

    @property
    def n_objects(self) -> int | None:
        """Objects alive at any time (``None`` until the first call decides it)."""
        return self._n_objects

    # ---- population and scheduling ---------------------------------------------------------

    def _start(self, count: int) -> None:
        if count < 0:
            msg = f"count must not be negative, not {count}"
            raise ValueError(msg)
        if self._arrivals is not None:
            return
        if self._n_objects is None:
            self._n_objects = max(1, count // 5)
        # The initial population's first in-stream visits spread over one revisit interval, so
        # the stream looks stationary from its start.
        window = 1.0 + _MEAN_EXTRA_NIGHTS
        rng = self._rng
        arrivals = []
        for _ in range(self._n_objects):
            night = math.floor(self._start_mjd) + rng.randrange(int(window) + 1)
            mjd = night + rng.uniform(0.0, 0.3)
            if mjd < self._start_mjd:
                mjd += window
            arrivals.append(mjd)
        arrivals.sort()
        self._arrivals = arrivals

    def _next_id(self) -> int:
        self._serial += 1
        return self._id_prefix | self._serial

    def _push(self, obj: _Object, visit: _Visit) -> None:
        heapq.heappush(self._queue, (visit.mjd, next(self._tiebreak), obj, visit))

    def _plan_night(self, night_mjd: float) -> _Visit:
        """The first visit of a night starting at ``night_mjd`` (a visit time)."""
        rng = self._rng
        if rng.random() < _PAIR_NIGHT_FRACTION:
            first, second = rng.choices(_PAIRS, cum_weights=_PAIR_CUM)[0]
            later = night_mjd + rng.uniform(20.0, 40.0) / 1440.0
            pair = RUBIN_BANDS[first] + RUBIN_BANDS[second]
            return _Visit(night_mjd, first, f"pairs_{pair}", (later, second))
        band = rng.choices(range(_BANDS), cum_weights=_SINGLE_CUM)[0]
        return _Visit(night_mjd, band, f"singles_{RUBIN_BANDS[band]}", None)

    def _following(self, visit: _Visit) -> _Visit:
        """The visit after ``visit``: the night's second one, or the first of a later night."""
        if visit.second is not None:
            mjd, band = visit.second
            return _Visit(mjd, band, visit.reason, None)
        rng = self._rng
        nights = 1 + int(rng.expovariate(1.0 / _MEAN_EXTRA_NIGHTS))
        return self._plan_night(math.floor(visit.mjd) + nights + rng.uniform(0.0, 0.3))

    def _new_object(self, kind: int, first_mjd: float, *, past: bool) -> _Object:
        """Create an object whose first in-stream visit is at ``first_mjd``.

        With ``past``, it has also been observed (without alerts reaching this stream) since a
        drawn birth date up to ``history_days`` earlier.
        """
        rng = self._rng
        ra = rng.uniform(0.0, 360.0)
        low, high = self._sin_dec
        dec = math.degrees(math.asin(rng.uniform(low, high)))
        obj = _Object(self._next_id(), kind, ra, dec)
        cos_dec = math.cos(math.radians(dec))
        xyz = (cos_dec * math.cos(math.radians(ra)), cos_dec * math.sin(math.radians(ra)))
        sin_b = _NGP[0] * xyz[0] + _NGP[1] * xyz[1] + _NGP[2] * math.sin(math.radians(dec))
        plane = abs(sin_b) < math.sin(math.radians(15.0))
        obj.target_name = "galactic_plane" if plane else "lowdust"
        birth = first_mjd
        if kind == _SN:
            birth = self._init_supernova(obj, first_mjd, past=past)
        elif kind == _PERIODIC:
            self._init_periodic(obj)
        elif kind == _AGN:
            self._init_agn(obj)
        else:
            mag_r = _powerlaw_mag(rng, 17.0, 23.0, 0.3)
            obj.static = tuple(_mag_to_njy(mag_r + 0.5 * c) for c in _GALAXY_COLOURS)
        if not past:
            return obj
        if kind != _SN:
            birth = first_mjd - rng.uniform(0.0, self._history_days)
        birth = max(birth, first_mjd - self._history_days)
        if birth < first_mjd:
            visit = self._plan_night(math.floor(birth) + rng.uniform(0.0, 0.3))
            while visit.mjd < first_mjd:
                self._observe(obj, visit, emit=False)
                visit = self._following(visit)
        return obj

    def _init_supernova(self, obj: _Object, first_mjd: float, *, past: bool) -> float:
        rng = self._rng
        # At the start of the stream supernovae are caught at every phase; later ones are new.
        peak = first_mjd + (rng.uniform(-40.0, 20.0) if past else rng.uniform(8.0, 25.0))
        rise = rng.uniform(1.5, 5.0)
        fall = rng.uniform(15.0, 50.0)
        peak_r = _powerlaw_mag(rng, 18.0, 23.0, 0.6)
        colour = rng.gauss(0.0, 0.2)
        amplitudes = []
        falls = []
        for band in range(_BANDS):
            band_fall = fall * _SN_DECLINE_SCALE[band]
            ratio = rise / band_fall
            # Bazin f = A exp(-x/fall) / (1 + exp(-x/rise)) peaks at x_p = -rise ln(r/(1-r)).
            x_peak = -rise * math.log(ratio / (1.0 - ratio))
            peak_flux = _mag_to_njy(peak_r + _SN_COLOURS[band] + colour * _SN_COLOUR_SLOPE[band])
            amplitudes.append(peak_flux / ((1.0 - ratio) * math.exp(-x_peak / band_fall)))
            falls.append(band_fall)
        obj.amplitude = tuple(amplitudes)
        obj.params = (peak, rise, *falls)
        obj.retire_mjd = peak + 6.0 * fall + 30.0
        if rng.random() < 0.8:
            obj.host = self._draw_host(offset=True)
            fraction = _host_psf_fraction(obj.host.sigma_px, math.hypot(obj.host.dx, obj.host.dy))
            obj.static = tuple(f * fraction for f in obj.host.flux)
        return peak - rng.uniform(15.0, 40.0)

    def _init_periodic(self, obj: _Object) -> None:
        rng = self._rng
        mean_r = _powerlaw_mag(rng, 16.8, 21.5, 0.35)
        g_r = rng.uniform(0.2, 1.2)
        colours = (0.5 + 2.0 * g_r, g_r, 0.0, -0.35 * g_r, -0.5 * g_r, -0.6 * g_r)
        obj.static = tuple(_mag_to_njy(mean_r + c) for c in colours)
        amplitude = rng.uniform(0.2, 1.2)
        obj.amplitude = tuple(amplitude * s for s in _AMPLITUDE_SCALE)
        period = 10.0 ** rng.uniform(-1.0, 2.0)
        sawtooth = 1.0 if rng.random() < 0.5 else 0.0
        obj.params = (period, rng.random(), sawtooth)

    def _init_agn(self, obj: _Object) -> None:
        rng = self._rng
        mean_r = _powerlaw_mag(rng, 18.0, 21.5, 0.5)
        nucleus = tuple(_mag_to_njy(mean_r + c) for c in _AGN_COLOURS)
        host = self._draw_host(offset=False) if rng.random() < 0.7 else None
        obj.host = host
        if host is not None:
            fraction = _host_psf_fraction(host.sigma_px, 0.0)
            obj.static = tuple(n + f * fraction for n, f in zip(nucleus, host.flux, strict=True))
        else:
            obj.static = nucleus
        tau = 10.0 ** rng.uniform(math.log10(50.0), math.log10(500.0))
        structure = rng.uniform(0.1, 0.35)
        obj.amplitude = _AMPLITUDE_SCALE
        obj.params = (tau, structure / math.sqrt(2.0), *nucleus)
        obj.agn_state = rng.gauss(0.0, structure / math.sqrt(2.0))

    def _draw_host(self, *, offset: bool) -> _Host:
        rng = self._rng
        mag_r = rng.uniform(19.0, 23.5)
        flux = tuple(_mag_to_njy(mag_r + c) for c in _GALAXY_COLOURS)
        sigma_px = rng.uniform(2.5, 6.0)
        distance = rng.uniform(0.5, 3.0) / PIXEL_SCALE_ARCSEC if offset else 0.0
        angle = rng.uniform(0.0, 2.0 * math.pi)
        return _Host(flux, sigma_px, distance * math.cos(angle), distance * math.sin(angle))

    def _difference_flux(self, obj: _Object, mjd: float, band: int) -> float:
        """The model's flux above the template at a time, in nJy."""
        kind = obj.kind
        if kind == _SN:
            peak, rise = obj.params[0], obj.params[1]
            x = mjd - peak
            if x < -30.0 * rise:
                return 0.0
            fall = obj.params[2 + band]
            return obj.amplitude[band] * math.exp(-x / fall) / (1.0 + math.exp(-x / rise))
        if kind == _PERIODIC:
            period, phase0, sawtooth = obj.params
            phase = (mjd / period + phase0) % 1.0
            if sawtooth:
                bright = phase / 0.15 if phase < 0.15 else 1.0 - (phase - 0.15) / 0.85
                delta_mag = obj.amplitude[band] * (0.5 - bright)
            else:
                delta_mag = 0.5 * obj.amplitude[band] * math.sin(2.0 * math.pi * phase)
            return obj.static[band] * (10.0 ** (-0.4 * delta_mag) - 1.0)
        if kind == _AGN:
            tau, sigma = obj.params[0], obj.params[1]
            if obj.agn_time is not None and mjd > obj.agn_time:
                # Exact Ornstein-Uhlenbeck step of the damped random walk, in magnitudes.
                decay = math.exp(-(mjd - obj.agn_time) / tau)
                spread = sigma * math.sqrt(1.0 - decay * decay)
                obj.agn_state = obj.agn_state * decay + self._rng.gauss(0.0, spread)
            obj.agn_time = mjd
            nucleus = obj.params[2 + band]
            return nucleus * (10.0 ** (-0.4 * obj.agn_state * obj.amplitude[band]) - 1.0)
        return 0.0

    # ---- observing -----------------------------------------------------------------------------

    def _visit_id(self, mjd: float) -> int:
        # LSSTCam: dayObs (the date twelve hours before, UTC) * 100000 + sequence number.
        shifted = mjd - 0.5
        day = math.floor(shifted)
        day_obs = self._day_obs.get(day)
        if day_obs is None:
            date = dt.date(1858, 11, 17) + dt.timedelta(days=day)
            day_obs = date.year * 10000 + date.month * 100 + date.day
            self._day_obs[day] = day_obs
        seq = max(1, int((shifted - day - 0.4) * 86400.0 / _SEQ_EXPOSURE_S))
        return day_obs * 100000 + seq

    def _next_record(self, *, share: bool) -> dict[str, Any]:
        assert self._arrivals is not None
        for _ in range(_MAX_IDLE_VISITS):
            arrivals = self._arrivals
            if self._next_arrival < len(arrivals) and (
                not self._queue or arrivals[self._next_arrival] <= self._queue[0][0]
            ):
                mjd = arrivals[self._next_arrival]
                self._next_arrival += 1
                kind = self._draw_kind()
                obj = self._new_object(kind, mjd, past=True)
                self._push(obj, self._plan_night(mjd))
                continue
            _, _, obj, visit = heapq.heappop(self._queue)
            record = self._observe(obj, visit, emit=True)
            following = self._following(visit)
            if obj.retire_mjd is not None and following.mjd > obj.retire_mjd:
                replacement = self._new_object(obj.kind, following.mjd, past=False)
                self._push(replacement, following)
            else:
                self._push(obj, following)
            if record is not None:
                return record if share else _copy_record(record)
        msg = f"no detection in {_MAX_IDLE_VISITS} visits; the population cannot be detected"
        raise RuntimeError(msg)

    def _draw_kind(self) -> int:
        return self._rng.choices(range(4), cum_weights=_CLASS_CUM)[0]

    def _measure(self, obj: _Object, visit: _Visit) -> _Measurement:
        """Draw the visit's conditions and the object's forced photometry on it."""
        rng = self._rng
        mjd, band = visit.mjd, visit.band
        m5 = _M5[band] + rng.gauss(0.0, _M5_SCATTER)
        sky_sigma = _mag_to_njy(m5) / _DETECTION_SIGMA
        seeing = _SEEING_MEDIAN_ARCSEC * math.exp(rng.gauss(0.0, 0.15))
        true_diff = self._difference_flux(obj, mjd, band)
        total = max(obj.static[band] + true_diff, 0.0)
        photon_var = total / _ELECTRONS_PER_NJY
        sky_var = sky_sigma * sky_sigma
        err = math.sqrt(sky_var * (1.0 + _TEMPLATE_VARIANCE_RATIO) + photon_var)
        sci_err = math.sqrt(sky_var + photon_var + (_CALIBRATION_FLOOR * total) ** 2)
        flux = true_diff + rng.gauss(0.0, err)
        # The detection's own PSF fit sits a hair away from the forced one on the same image.
        detection_flux = flux + rng.gauss(0.0, 0.05 * err)
        science = total + rng.gauss(0.0, sci_err)
        if obj.kind == _FLAT:
            detected = rng.random() < _FLAT_DETECTION_PROBABILITY
            if detected:
                # A noise spike or a subtraction artefact, either sign, also on the visit image.
                sign = 1.0 if rng.random() < 0.6 else -1.0
                flux = detection_flux = sign * err * (_DETECTION_SIGMA + rng.expovariate(1.5))
                science += flux
        else:
            detected = abs(detection_flux) >= _DETECTION_SIGMA * err
        return _Measurement(
            visit=visit,
            visit_id=self._visit_id(mjd),
            detector=rng.randrange(_N_DETECTORS),
            processed=mjd + rng.uniform(60.0, 120.0) / 86400.0,
            seeing=seeing,
            sky_sigma=sky_sigma,
            true_diff=true_diff,
            flux=flux,
            detection_flux=detection_flux,
            err=err,
            science=science,
            sci_err=sci_err,
            detected=detected,
        )

    def _observe(self, obj: _Object, visit: _Visit, *, emit: bool) -> dict[str, Any] | None:
        """Measure one object at one visit; return its alert if detected and ``emit``."""
        m = self._measure(obj, visit)
        mjd, band = visit.mjd, visit.band
        obj_ra, obj_dec, _ = obj.mean_position()
        forced_record = self._plan.forced.build(
            {
                "diaForcedSourceId": self._next_id(),
                "diaObjectId": obj.dia_object_id,
                "ra": obj_ra,
                "dec": obj_dec,
                "visit": m.visit_id,
                "detector": m.detector,
                "psfFlux": m.flux,
                "psfFluxErr": m.err,
                "midpointMjdTai": mjd,
                "scienceFlux": m.science,
                "scienceFluxErr": m.sci_err,
                "band": RUBIN_BANDS[band],
                "timeProcessedMjdTai": m.processed,
                "_timeProcessedMicros": _unix_micros(m.processed),
            }
        )
        stats = obj.forced_stats[band]
        weight = 1.0 / (m.err * m.err)
        sci_weight = 1.0 / (m.sci_err * m.sci_err)
        stats[0] += weight
        stats[1] += weight * m.flux
        stats[2] += sci_weight
        stats[3] += sci_weight * m.science

        horizon = mjd - HISTORY_DAYS
        forced = obj.forced
        while forced and forced[0][0] < horizon:
            forced.popleft()
        detections = obj.detections
        while detections and detections[0][0] < horizon:
            detections.popleft()
        previous_forced = [r for _, r in forced]
        forced.append((mjd, forced_record))
        if not m.detected:
            return None

        source, values = self._detect(obj, m)
        record: dict[str, Any] | None = None
        if emit:
            cutouts: tuple[bytes | None, ...] = (None, None, None)
            if self._cutouts:
                cutouts = self._cutout_images(obj, values, m)
            record = self._plan.alert.build(
                {
                    "diaSourceId": values["diaSourceId"],
                    "observation_reason": visit.reason,
                    "target_name": obj.target_name,
                    "diaSource": source,
                    "prvDiaSources": [r for _, r in detections] or None,
                    "prvDiaForcedSources": previous_forced or None,
                    "diaObject": self._dia_object(obj, m.processed),
                    "cutoutScience": cutouts[0],
                    "cutoutTemplate": cutouts[1],
                    "cutoutDifference": cutouts[2],
                }
            )
        detections.append((mjd, source))
        return record

    def _detect(self, obj: _Object, m: _Measurement) -> tuple[dict[str, Any], dict[str, Any]]:
        """Build the diaSource of a detection and fold it into the object's summaries.

        Returns the record and the simulated values it was built from (the latter under the
        newest field names, whatever the schema version).
        """
        rng = self._rng
        mjd, band = m.visit.mjd, m.visit.band
        err, seeing, visit_id, detector = m.err, m.seeing, m.visit_id, m.detector
        flux = m.detection_flux
        snr = abs(flux) / err
        sigma_pos = math.hypot(0.6 * seeing / snr, 0.01)  # arcsec
        dx, dy = rng.gauss(0.0, sigma_pos), rng.gauss(0.0, sigma_pos)
        ra = (obj.ra + dx / 3600.0 / obj.cos_dec) % 360.0
        dec = max(-90.0, min(90.0, obj.dec + dy / 3600.0))
        ra_err = sigma_pos * rng.uniform(0.9, 1.1) / 3600.0
        dec_err = sigma_pos * rng.uniform(0.9, 1.1) / 3600.0
        psf_sigma_px = seeing / 2.3548 / PIXEL_SCALE_ARCSEC
        bbox = int(min(max(10.0 * psf_sigma_px * (1.0 + 0.3 * math.log10(snr / 5.0)), 9.0), 61.0))
        ndata = bbox * bbox
        chi2 = ndata * math.exp(rng.gauss(0.0, 0.1))
        psf_moment = (seeing / 2.3548) ** 2
        shape_noise = 1.0 + rng.gauss(0.0, 0.5 / snr)
        bogus = obj.kind == _FLAT
        reliability = rng.uniform(0.0, 0.6) if bogus else 1.0 - 0.3 * rng.random() ** 2
        ap_err = err * 12.0 / (2.0 * psf_sigma_px)
        template = obj.static[band] + rng.gauss(0.0, err * math.sqrt(_TEMPLATE_VARIANCE_RATIO))
        diff_err_dipole = err * math.sqrt(2.0)
        source_id = self._next_id()
        values = {
            "diaSourceId": source_id,
            "visit": visit_id,
            "ccdVisitId": visit_id * 1000 + detector,
            "detector": detector,
            "diaObjectId": obj.dia_object_id,
            "midpointMjdTai": mjd,
            "exposureTime": _EXPOSURE_S[band],
            "ra": ra,
            "raErr": ra_err,
            "dec": dec,
            "decErr": dec_err,
            "ra_dec_Cov": rng.uniform(-0.2, 0.2) * ra_err * dec_err,
            "x": rng.uniform(0.0, _DETECTOR_PIXELS[0]),
            "xErr": sigma_pos / PIXEL_SCALE_ARCSEC,
            "y": rng.uniform(0.0, _DETECTOR_PIXELS[1]),
            "yErr": sigma_pos / PIXEL_SCALE_ARCSEC,
            "apFlux": 0.99 * m.true_diff + rng.gauss(0.0, ap_err) if not bogus else flux,
            "apFluxErr": ap_err,
            "isNegative": flux < 0.0,
            "snr": snr,
            "psfFlux": flux,
            "psfFluxErr": err,
            "psfLnL": -0.5 * chi2 - ndata * 2.0,
            "psfChi2": chi2,
            "psfNdata": ndata,
            "trailFlux": flux * rng.uniform(0.97, 1.03),
            "trailFluxErr": err * 1.1,
            "trailRa": ra,
            "trailRaErr": ra_err * 1.5,
            "trailDec": dec,
            "trailDecErr": dec_err * 1.5,
            "trailLength": abs(rng.gauss(0.0, 0.3)),
            "trailLengthErr": 0.2 + 2.0 / snr,
            "trailAngle": rng.uniform(0.0, 180.0),
            "trailAngleErr": min(90.0, 300.0 / snr),
            "trailChi2": chi2 * rng.uniform(1.0, 1.05),
            "trailNdata": ndata,
            "trailAlgorithm": 1,
            "dipoleMeanFlux": abs(flux) * rng.uniform(0.45, 0.55),
            "dipoleMeanFluxErr": diff_err_dipole,
            "dipoleFluxDiff": abs(flux) * rng.uniform(0.9, 1.1),
            "dipoleFluxDiffErr": diff_err_dipole,
            "dipoleLength": abs(rng.gauss(0.0, 0.2)),
            "dipoleAngle": rng.uniform(0.0, 360.0),
            "dipoleChi2": chi2 * rng.uniform(1.0, 1.1),
            "dipoleNdata": ndata,
            "scienceFlux": m.science,
            "scienceFluxErr": m.sci_err,
            "templateFlux": template,
            "templateFluxErr": err * math.sqrt(_TEMPLATE_VARIANCE_RATIO),
            "ixx": psf_moment * shape_noise,
            "iyy": psf_moment * (1.0 + rng.gauss(0.0, 0.5 / snr)),
            "ixy": psf_moment * rng.gauss(0.0, 0.02),
            "ixxPSF": psf_moment,
            "iyyPSF": psf_moment * rng.uniform(0.97, 1.03),
            "ixyPSF": psf_moment * rng.gauss(0.0, 0.01),
            "extendedness": rng.random() if bogus else rng.uniform(0.0, 0.3),
            "reliability": reliability,
            "reliabilityVersion": "lanner-sim-1",
            "band": RUBIN_BANDS[band],
            "isDipole": bogus and rng.random() < 0.2,
            "dipoleFitAttempted": True,
            "timeProcessedMjdTai": m.processed,
            "_timeProcessedMicros": _unix_micros(m.processed),
            "bboxSize": bbox,
            "pixelFlags_cr": rng.random() < 0.02,
            "pixelFlags_interpolated": rng.random() < 0.05,
        }
        source = self._plan.source.build(values)

        # Running summaries for the diaObject.
        stats = obj.source_stats[band]
        weight = 1.0 / (err * err)
        if stats[0] > 0 and mjd > stats[8]:
            stats[7] = max(stats[7], (flux - stats[9]) / (mjd - stats[8]))
        stats[0] += 1
        stats[1] += weight
        stats[2] += weight * flux
        stats[3] += flux
        stats[4] += flux * flux
        stats[5] = min(stats[5], flux)
        stats[6] = max(stats[6], flux)
        stats[8], stats[9] = mjd, flux
        stats[10] += err
        pos_weight = 1.0 / (sigma_pos * sigma_pos)
        sums = obj.pos_sums
        sums[0] += pos_weight
        sums[1] += pos_weight * dx
        sums[2] += pos_weight * dy
        obj.n_sources += 1
        if obj.first_mjd is None:
            obj.first_mjd = mjd
        obj.last_mjd = mjd
        return source, values

    def _dia_object(self, obj: _Object, processed: float) -> dict[str, Any]:
        ra, dec, err_arcsec = obj.mean_position()
        err = err_arcsec / 3600.0
        values: dict[str, Any] = {
            "diaObjectId": obj.dia_object_id,
            "validityStartMjdTai": processed,
            "_validityStartMicros": _unix_micros(processed),
            "ra": ra,
            "raErr": err,
            "dec": dec,
            "decErr": err,
            "ra_dec_Cov": 0.0,
            "firstDiaSourceMjdTai": obj.first_mjd,
            "lastDiaSourceMjdTai": obj.last_mjd,
            "nDiaSources": obj.n_sources,
        }
        for band, keys in enumerate(_OBJECT_KEYS):
            n, sw, swf, sf, sff, low, high, slope, _, _, serr = obj.source_stats[band]
            n = int(n)
            values[keys[0]] = n
            if n:
                values[keys[1]] = swf / sw
                values[keys[2]] = 1.0 / math.sqrt(sw)
                values[keys[4]] = low
                values[keys[5]] = high
                values[keys[7]] = serr / n
            if n > 1:
                values[keys[3]] = math.sqrt(max(sff - sf * sf / n, 0.0) / (n - 1))
                if slope > -math.inf:
                    values[keys[6]] = slope
            fw, fwf, sw_sci, swf_sci = obj.forced_stats[band]
            if fw > 0.0:
                values[keys[8]] = fwf / fw
                values[keys[9]] = 1.0 / math.sqrt(fw)
                values[keys[10]] = swf_sci / sw_sci
                values[keys[11]] = 1.0 / math.sqrt(sw_sci)
        return self._plan.dia_object.build(values)

    def _cutout_images(
        self, obj: _Object, source: Mapping[str, Any], m: _Measurement
    ) -> tuple[bytes, bytes, bytes]:
        """Science, template and difference stamps as FITS files, centred on the diaSource."""
        band = m.visit.band
        psf_sigma = m.seeing / 2.3548 / PIXEL_SCALE_ARCSEC
        psf = _gaussian(psf_sigma, 0.0, 0.0)
        pixel_sigma = m.sky_sigma / (math.sqrt(4.0 * math.pi) * psf_sigma)
        noise = self._images.standard_normal((2, CUTOUT_SIZE, CUTOUT_SIZE))
        static = obj.static[band]
        scene = np.zeros((CUTOUT_SIZE, CUTOUT_SIZE))
        host = obj.host
        if host is not None:
            host_sigma = math.hypot(host.sigma_px, psf_sigma)
            scene += host.flux[band] * _gaussian(host_sigma, host.dx, host.dy)
            static -= host.flux[band] * _host_psf_fraction(
                host.sigma_px, math.hypot(host.dx, host.dy)
            )
        scene += max(static, 0.0) * psf
        template = scene + (pixel_sigma * math.sqrt(_TEMPLATE_VARIANCE_RATIO)) * noise[0]
        science = scene + m.true_diff * psf + pixel_sigma * noise[1]
        stack = np.empty((3, CUTOUT_SIZE, CUTOUT_SIZE), dtype=">f4")
        stack[0] = science
        stack[1] = template
        stack[2] = stack[0] - stack[1]
        data = stack.tobytes()
        cards = {
            "CRVAL1": _card("CRVAL1", _fits_real(source["ra"]), "[deg] RA of the diaSource"),
            "CRVAL2": _card("CRVAL2", _fits_real(source["dec"]), "[deg] Dec of the diaSource"),
            "MJD-OBS": _card(
                "MJD-OBS", _fits_real(source["midpointMjdTai"]), "[d] visit midpoint, TAI"
            ),
            "BAND": _card("BAND", f"'{RUBIN_BANDS[band]:<8}'", "Rubin band"),
            "DIASRCID": _card("DIASRCID", str(source["diaSourceId"]), "diaSourceId of the alert"),
        }
        images = []
        for index, kind in enumerate(_CUTOUT_KINDS):
            header = _header_template(kind)
            image = bytearray(header.image)
            for key, offset in header.offsets.items():
                image[offset : offset + _CARD] = cards[key]
            start = index * _DATA_BYTES
            image += data[start : start + _DATA_BYTES]
            image += _DATA_PADDING
            images.append(bytes(image))
        return images[0], images[1], images[2]


_OBJECT_KEYS = tuple(
    tuple(
        f"{band}_{suffix}"
        for suffix in (
            "psfFluxNdata",
            "psfFluxMean",
            "psfFluxMeanErr",
            "psfFluxSigma",
            "psfFluxMin",
            "psfFluxMax",
            "psfFluxMaxSlope",
            "psfFluxErrMean",
            "fpFluxMean",
            "fpFluxMeanErr",
            "scienceFluxMean",
            "scienceFluxMeanErr",
        )
    )
    for band in RUBIN_BANDS
)


def _unix_micros(mjd: float) -> int:
    return round((mjd - _MJD_UNIX_EPOCH) * 86400e6)


def _copy_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of an alert that shares nothing mutable with the simulator's history."""
    out = dict(record)
    for key, value in record.items():
        if isinstance(value, dict):
            out[key] = dict(value)
        elif isinstance(value, list):
            out[key] = [dict(v) if isinstance(v, dict) else v for v in value]
    return out
