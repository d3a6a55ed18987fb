"""Light-curve models: what an object's flux is in each band at any time.

Fluxes are in nJy (``m = -2.5 log10(f) + 31.4``). Four classes:

- **Supernova-like transients** with a Bazin rise and decline, per-band peaks, colours and decline
  times, on a host galaxy (80 %) that only the template and science images see; a supernova
  retires about six decline times after its peak.
- **Periodic variables**: sine or RR Lyrae-like sawtooth in magnitude, periods log-uniform in
  0.1-100 d, larger amplitudes in bluer bands.
- **AGN** with a damped random walk (an exact Ornstein-Uhlenbeck step between visits), on a host
  galaxy (70 %).
- **Flat sources** whose only detections are noise spikes and subtraction artefacts.

``static`` is an object's flux on the template (its host's share within the PSF included);
`difference_flux` is the model's flux above it. Every draw comes from the caller's seeded
``random.Random``, in a fixed order.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.constants import NJY_AB_ZEROPOINT
from broker.simulator.instrument import BANDS, PIXEL_SCALE_ARCSEC, SEEING_MEDIAN_ARCSEC

if TYPE_CHECKING:
    from broker.simulator.objects import SimObject

__all__ = [
    "AGN",
    "FLAT",
    "FLAT_DETECTION_PROBABILITY",
    "GALAXY_COLOURS",
    "PERIODIC",
    "SN",
    "Host",
    "difference_flux",
    "draw_kind",
    "host_psf_fraction",
    "init_model",
    "mag_to_njy",
]

# Light-curve classes and their share of the population.
SN, PERIODIC, AGN, FLAT = range(4)
_CLASS_CUM = tuple(itertools.accumulate((0.35, 0.30, 0.20, 0.15)))
#: Chance that a flat source shows a spurious detection on a visit.
FLAT_DETECTION_PROBABILITY = 0.25

GALAXY_COLOURS = (1.5, 0.6, 0.0, -0.4, -0.6, -0.7)  # band minus r, mag
_AGN_COLOURS = (0.4, 0.2, 0.0, -0.2, -0.3, -0.4)
_AMPLITUDE_SCALE = (1.5, 1.25, 1.0, 0.85, 0.75, 0.7)
_SN_COLOURS = (0.6, 0.0, 0.0, 0.3, 0.45, 0.6)
_SN_COLOUR_SLOPE = (1.5, 0.8, 0.0, -0.5, -0.8, -1.0)
_SN_DECLINE_SCALE = (0.8, 0.9, 1.0, 1.15, 1.25, 1.3)


def mag_to_njy(mag: float) -> float:
    """An AB magnitude as a flux in nJy."""
    return 10.0 ** (-0.4 * (mag - NJY_AB_ZEROPOINT))


def _powerlaw_mag(rng: random.Random, low: float, high: float, slope: float) -> float:
    """A magnitude with counts N(<m) proportional to 10**(slope * m) between low and high."""
    a, b = 10.0 ** (slope * low), 10.0 ** (slope * high)
    return math.log10(a + rng.random() * (b - a)) / slope


@dataclass(slots=True)
class Host:
    """A Gaussian host galaxy: total flux per band, size and offset in pixels."""

    flux: tuple[float, ...]
    sigma_px: float
    dx: float
    dy: float


def host_psf_fraction(sigma_px: float, offset_px: float) -> float:
    """Per-band PSF-flux fraction of an extended host for the median seeing."""
    psf = SEEING_MEDIAN_ARCSEC / 2.3548 / PIXEL_SCALE_ARCSEC
    total = psf * psf + sigma_px * sigma_px
    return 2.0 * psf * psf / total * math.exp(-offset_px * offset_px / (2.0 * total))


def draw_kind(rng: random.Random, shares: tuple[float, ...] | None = None) -> int:
    """A light-curve class, by its share of the population (``shares``: SN, periodic, AGN, flat;
    by default 35, 30, 20 and 15 %)."""
    cum = _CLASS_CUM if shares is None else tuple(itertools.accumulate(shares))
    return rng.choices(range(4), cum_weights=cum)[0]


def init_model(rng: random.Random, obj: SimObject, first_mjd: float, *, past: bool) -> float:
    """Draw the model of a new object of its class; return its birth (supernovae only).

    For other classes the birth returned is ``first_mjd``; the caller draws their age.
    """
    kind = obj.kind
    birth = first_mjd
    if kind == SN:
        birth = _init_supernova(rng, obj, first_mjd, past=past)
    elif kind == PERIODIC:
        _init_periodic(rng, obj)
    elif kind == AGN:
        _init_agn(rng, obj)
    else:
        mag_r = _powerlaw_mag(rng, 17.0, 23.0, 0.3)
        obj.static = tuple(mag_to_njy(mag_r + 0.5 * c) for c in GALAXY_COLOURS)
    return birth


def _init_supernova(rng: random.Random, obj: SimObject, first_mjd: float, *, past: bool) -> float:
    # At the start of the stream supernovae are caught at every phase; later ones are new.
    peak = first_mjd + (rng.uniform(-40.0, 20.0) if past else rng.uniform(8.0, 25.0))
    rise = rng.uniform(1.5, 5.0)
    fall = rng.uniform(15.0, 50.0)
    peak_r = _powerlaw_mag(rng, 18.0, 23.0, 0.6)
    colour = rng.gauss(0.0, 0.2)
    amplitudes = []
    falls = []
    for band in range(BANDS):
        band_fall = fall * _SN_DECLINE_SCALE[band]
        ratio = rise / band_fall
        # Bazin f = A exp(-x/fall) / (1 + exp(-x/rise)) peaks at x_p = -rise ln(r/(1-r)).
        x_peak = -rise * math.log(ratio / (1.0 - ratio))
        peak_flux = mag_to_njy(peak_r + _SN_COLOURS[band] + colour * _SN_COLOUR_SLOPE[band])
        amplitudes.append(peak_flux / ((1.0 - ratio) * math.exp(-x_peak / band_fall)))
        falls.append(band_fall)
    obj.amplitude = tuple(amplitudes)
    obj.params = (peak, rise, *falls)
    obj.retire_mjd = peak + 6.0 * fall + 30.0
    if rng.random() < 0.8:
        obj.host = _draw_host(rng, offset=True)
        fraction = host_psf_fraction(obj.host.sigma_px, math.hypot(obj.host.dx, obj.host.dy))
        obj.static = tuple(f * fraction for f in obj.host.flux)
    return peak - rng.uniform(15.0, 40.0)


def _init_periodic(rng: random.Random, obj: SimObject) -> None:
    mean_r = _powerlaw_mag(rng, 16.8, 21.5, 0.35)
    g_r = rng.uniform(0.2, 1.2)
    colours = (0.5 + 2.0 * g_r, g_r, 0.0, -0.35 * g_r, -0.5 * g_r, -0.6 * g_r)
    obj.static = tuple(mag_to_njy(mean_r + c) for c in colours)
    amplitude = rng.uniform(0.2, 1.2)
    obj.amplitude = tuple(amplitude * s for s in _AMPLITUDE_SCALE)
    period = 10.0 ** rng.uniform(-1.0, 2.0)
    sawtooth = 1.0 if rng.random() < 0.5 else 0.0
    obj.params = (period, rng.random(), sawtooth)


def _init_agn(rng: random.Random, obj: SimObject) -> None:
    mean_r = _powerlaw_mag(rng, 18.0, 21.5, 0.5)
    nucleus = tuple(mag_to_njy(mean_r + c) for c in _AGN_COLOURS)
    host = _draw_host(rng, offset=False) if rng.random() < 0.7 else None
    obj.host = host
    if host is not None:
        fraction = host_psf_fraction(host.sigma_px, 0.0)
        obj.static = tuple(n + f * fraction for n, f in zip(nucleus, host.flux, strict=True))
    else:
        obj.static = nucleus
    tau = 10.0 ** rng.uniform(math.log10(50.0), math.log10(500.0))
    structure = rng.uniform(0.1, 0.35)
    obj.amplitude = _AMPLITUDE_SCALE
    obj.params = (tau, structure / math.sqrt(2.0), *nucleus)
    obj.agn_state = rng.gauss(0.0, structure / math.sqrt(2.0))


def _draw_host(rng: random.Random, *, offset: bool) -> Host:
    mag_r = rng.uniform(19.0, 23.5)
    flux = tuple(mag_to_njy(mag_r + c) for c in GALAXY_COLOURS)
    sigma_px = rng.uniform(2.5, 6.0)
    distance = rng.uniform(0.5, 3.0) / PIXEL_SCALE_ARCSEC if offset else 0.0
    angle = rng.uniform(0.0, 2.0 * math.pi)
    return Host(flux, sigma_px, distance * math.cos(angle), distance * math.sin(angle))


def difference_flux(rng: random.Random, obj: SimObject, mjd: float, band: int) -> float:
    """The model's flux above the template at a time, in nJy (an AGN steps its walk to ``mjd``)."""
    kind = obj.kind
    if kind == SN:
        peak, rise = obj.params[0], obj.params[1]
        x = mjd - peak
        if x < -30.0 * rise:
            return 0.0
        fall = obj.params[2 + band]
        return obj.amplitude[band] * math.exp(-x / fall) / (1.0 + math.exp(-x / rise))
    if kind == PERIODIC:
        period, phase0, sawtooth = obj.params
        phase = (mjd / period + phase0) % 1.0
        if sawtooth:
            bright = phase / 0.15 if phase < 0.15 else 1.0 - (phase - 0.15) / 0.85
            delta_mag = obj.amplitude[band] * (0.5 - bright)
        else:
            delta_mag = 0.5 * obj.amplitude[band] * math.sin(2.0 * math.pi * phase)
        return obj.static[band] * (10.0 ** (-0.4 * delta_mag) - 1.0)
    if kind == AGN:
        tau, sigma = obj.params[0], obj.params[1]
        if obj.agn_time is not None and mjd > obj.agn_time:
            # Exact Ornstein-Uhlenbeck step of the damped random walk, in magnitudes.
            decay = math.exp(-(mjd - obj.agn_time) / tau)
            spread = sigma * math.sqrt(1.0 - decay * decay)
            obj.agn_state = obj.agn_state * decay + rng.gauss(0.0, spread)
        obj.agn_time = mjd
        nucleus = obj.params[2 + band]
        return nucleus * (10.0 ** (-0.4 * obj.agn_state * obj.amplitude[band]) - 1.0)
    return 0.0
