"""Watchmaps: sky areas as MOCs (mocpy), uploaded as such or made from a probability skymap.

- `parse_moc` reads a MOC given as FITS (the IVOA MOC 2.0 serialisation), JSON
  (``{"order": [cells...]}``) or ASCII (``"3/1-4 5/100"``).
- `moc_from_skymap` makes the smallest area holding a given share of the probability of a
  HEALPix skymap, as LIGO/Virgo/KAGRA publish them: multi-order (a ``UNIQ`` column with
  ``PROBDENSITY``, per steradian) or flat (an ``NSIDE`` header, ``ORDERING`` NESTED or RING, and
  a ``PROB`` column, per pixel). The credible level is in (0, 1]; cells are taken by
  decreasing probability density until their summed probability reaches it, the cell that
  reaches it included, so the area holds at least that share.
- `contains` tells, for many positions at once, which lie in a MOC.

Every failure is a `WatchmapError` whose message says what is wrong with the upload.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from typing import Any

import numpy as np
from astropy.io import fits
from mocpy import MOC

from broker.domain.sky import MAX_COVER_CELLS, MAX_COVER_ORDER, SkyCells

#: Square degrees of the whole sky.
SKY_SQ_DEG = 4.0 * math.pi * (180.0 / math.pi) ** 2
#: Deepest order of the MOCs Lanner keeps (cells of about 3.2 arcsec; a skymap's own order is
#: rarely beyond 12).
MAX_DEPTH = 16


class WatchmapError(ValueError):
    """A MOC or skymap that cannot be used, with the reason."""


def parse_moc(body: bytes, fmt: str) -> MOC:
    """A MOC from its FITS, JSON or ASCII serialisation."""
    try:
        if fmt == "fits":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                moc = MOC.from_fits(io.BytesIO(body))
        elif fmt == "json":
            data = json.loads(body.decode("utf-8"))
            if not isinstance(data, dict) or not all(
                    isinstance(k, str) and k.isdigit() and isinstance(v, list)
                    for k, v in data.items()):
                msg = 'a JSON MOC is {"ORDER": [cell, ...], ...}, orders 0 to 29'
                raise WatchmapError(msg)
            moc = MOC.from_json({k: [int(c) for c in v] for k, v in data.items()})
        elif fmt == "ascii":
            text = body.decode("utf-8").strip()
            if not text:
                msg = "the MOC covers no part of the sky (the body is empty)"
                raise WatchmapError(msg)
            moc = MOC.from_str(text)
        else:
            msg = f"MOC format {fmt!r} is not fits, json or ascii"
            raise WatchmapError(msg)
    except WatchmapError:
        raise
    except Exception as exc:  # mocpy and astropy raise many kinds for a body that is not a MOC
        msg = f"the body is not a {fmt.upper()} MOC: {_reason(exc)}"
        raise WatchmapError(msg) from None
    if moc.empty():
        msg = "the MOC covers no part of the sky"
        raise WatchmapError(msg)
    return moc


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _table(body: bytes) -> tuple[Any, Any]:
    try:
        hdus = fits.open(io.BytesIO(body), memmap=False)
    except Exception as exc:  # astropy raises OSError, ValueError, ... for a non-FITS body
        msg = f"the body is not a FITS file: {_reason(exc)}"
        raise WatchmapError(msg) from None
    for hdu in hdus[1:]:
        if isinstance(hdu, fits.BinTableHDU):
            return hdu.header, hdu.data
    msg = "the FITS file has no binary table (a skymap's pixels are in one)"
    raise WatchmapError(msg)


def moc_from_skymap(body: bytes, credible_level: float) -> MOC:
    """The credible region of a HEALPix probability skymap (multi-order or flat) at a level in
    (0, 1]."""
    if not (isinstance(credible_level, float | int) and 0.0 < credible_level <= 1.0):
        msg = f"the credible level {credible_level!r} is not in (0, 1]"
        raise WatchmapError(msg)
    header, data = _table(body)
    names = [n.upper() for n in data.columns.names]
    if "UNIQ" in names and "PROBDENSITY" in names:
        uniq = np.asarray(data["UNIQ"], dtype=np.uint64)
        density = np.asarray(data["PROBDENSITY"], dtype=np.float64)
        order = (np.floor(np.log2(uniq.astype(np.float64) / 4.0) / 2.0)).astype(np.int64)
        if np.any(uniq < 4) or np.any(order > 29):
            msg = "the UNIQ column holds values that are not HEALPix NUNIQ cells"
            raise WatchmapError(msg)
        area_sr = 4.0 * math.pi / (12.0 * 4.0 ** order)
        probability = density * area_sr
    elif "PROB" in names or "PROBABILITY" in names:
        column = "PROB" if "PROB" in names else "PROBABILITY"
        probability = np.asarray(data[column], dtype=np.float64).ravel()
        nside = int(header.get("NSIDE", 0) or round(math.sqrt(probability.size / 12)))
        depth = round(math.log2(nside)) if nside > 0 else -1
        if nside <= 0 or 2 ** depth != nside or probability.size != 12 * nside * nside:
            msg = (f"the flat skymap has {probability.size} pixels, which is not 12 NSIDE^2 "
                   f"for a power of two (NSIDE {nside})")
            raise WatchmapError(msg)
        pixels = np.arange(probability.size, dtype=np.uint64)
        if str(header.get("ORDERING", "RING")).upper().startswith("RING"):
            pixels = ring_to_nested(pixels, depth)
        uniq = pixels + np.uint64(4 * 4 ** depth)
    else:
        msg = ("the table has neither UNIQ and PROBDENSITY (a multi-order skymap) nor PROB "
               f"(a flat one); its columns: {', '.join(names)}")
        raise WatchmapError(msg)
    good = np.isfinite(probability) & (probability >= 0.0)
    if not good.all():
        msg = f"{int((~good).sum())} pixels have a probability that is negative or not finite"
        raise WatchmapError(msg)
    total = float(probability.sum())
    if total <= 0.0:
        msg = "the skymap's probabilities sum to zero"
        raise WatchmapError(msg)
    # The densest cells first, up to and including the one whose probability brings the sum to
    # the level (as ligo.skymap's searched area does; mocpy's own cumul_to stops short of it).
    orders = (np.floor(np.log2(uniq.astype(np.float64) / 4.0) / 2.0)).astype(np.int64)
    density = probability / (4.0 * math.pi / (12.0 * 4.0 ** orders))
    ranked = np.argsort(-density, kind="stable")
    cumulative = np.cumsum(probability[ranked]) / total
    keep = ranked[: int(np.searchsorted(cumulative, credible_level * (1 - 1e-12))) + 1]
    ipix = uniq[keep] - (np.uint64(4) << (np.uint64(2) * orders[keep].astype(np.uint64)))
    moc = MOC.from_healpix_cells(ipix.astype(np.uint64), orders[keep].astype(np.uint8),
                                 MAX_DEPTH)
    if moc.empty():
        msg = f"the {credible_level:g} credible region is empty"
        raise WatchmapError(msg)
    return moc


def ring_to_nested(pixels: np.ndarray, depth: int) -> np.ndarray:
    """Nested indices of RING pixels at ``depth`` (through their centres, which each scheme
    maps to the same pixel; cdshealpix has no direct conversion)."""
    from cdshealpix import nested, ring  # noqa: PLC0415

    lon, lat = ring.healpix_to_lonlat(pixels.astype(np.int64), 2 ** depth)
    return np.asarray(nested.lonlat_to_healpix(lon, lat, depth), dtype=np.uint64)


def area_sq_deg(moc: MOC) -> float:
    """A MOC's area in square degrees."""
    return float(moc.sky_fraction) * SKY_SQ_DEG


def contains(moc: MOC, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Which of the positions (degrees) lie in the MOC."""
    from astropy import units as u  # noqa: PLC0415

    if len(ra) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moc.contains_lonlat(np.asarray(ra) % 360.0 * u.deg,
                                          np.asarray(dec) * u.deg), dtype=bool)


def to_text(moc: MOC) -> str:
    """The MOC's ASCII serialisation, as stored."""
    return str(moc.serialize(format="str"))


def from_text(text: str) -> MOC:
    return MOC.from_str(text)


def cover(moc: MOC) -> SkyCells:
    """The MOC's cells at the deepest order up to `MAX_COVER_ORDER` that needs at most
    `MAX_COVER_CELLS` of them (so a retroactive match reads only the archive there)."""
    for order in range(min(MAX_COVER_ORDER, int(moc.max_order)), -1, -1):
        coarse = moc if order >= int(moc.max_order) else moc.degrade_to_order(order)
        cells = np.asarray(coarse.flatten(), dtype=np.int64)
        if cells.size <= MAX_COVER_CELLS or order == 0:
            return SkyCells(order, np.unique(cells))
    raise AssertionError("unreachable")  # pragma: no cover
