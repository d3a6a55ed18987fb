"""Cutouts: three 30 x 30 float32 FITS stamps (science, template, difference) per alert.

Pixels are in nJy, with a Gaussian PSF of the visit's seeing on sky noise, the host galaxy on
science and template, and a TAN WCS (0.2 arcsec per pixel) centred on the diaSource; difference
= science - template. The header is built once with astropy and only its varying cards are
rewritten per packet. The noise comes from the caller's seeded numpy ``Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from astropy.io import fits

from broker.constants import RUBIN_BANDS
from broker.simulator.instrument import PIXEL_SCALE_ARCSEC, TEMPLATE_VARIANCE_RATIO
from broker.simulator.lightcurves import host_psf_fraction
from broker.simulator.measure import Measurement
from broker.simulator.objects import SimObject

__all__ = ["CUTOUT_SIZE", "cutout_images"]

#: Side of the square cutouts, in pixels (Rubin's nominal stamps are about 30 x 30).
CUTOUT_SIZE = 30

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



def cutout_images(
    images: np.random.Generator, obj: SimObject, source: Mapping[str, Any], m: Measurement
) -> tuple[bytes, bytes, bytes]:
    """Science, template and difference stamps as FITS files, centred on the diaSource."""
    band = m.visit.band
    psf_sigma = m.seeing / 2.3548 / PIXEL_SCALE_ARCSEC
    psf = _gaussian(psf_sigma, 0.0, 0.0)
    pixel_sigma = m.sky_sigma / (math.sqrt(4.0 * math.pi) * psf_sigma)
    noise = images.standard_normal((2, CUTOUT_SIZE, CUTOUT_SIZE))
    static = obj.static[band]
    scene = np.zeros((CUTOUT_SIZE, CUTOUT_SIZE))
    host = obj.host
    if host is not None:
        host_sigma = math.hypot(host.sigma_px, psf_sigma)
        scene += host.flux[band] * _gaussian(host_sigma, host.dx, host.dy)
        static -= host.flux[band] * host_psf_fraction(
            host.sigma_px, math.hypot(host.dx, host.dy)
        )
    scene += max(static, 0.0) * psf
    template = scene + (pixel_sigma * math.sqrt(TEMPLATE_VARIANCE_RATIO)) * noise[0]
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
    stamps = []
    for index, kind in enumerate(_CUTOUT_KINDS):
        header = _header_template(kind)
        image = bytearray(header.image)
        for key, offset in header.offsets.items():
            image[offset : offset + _CARD] = cards[key]
        start = index * _DATA_BYTES
        image += data[start : start + _DATA_BYTES]
        image += _DATA_PADDING
        stamps.append(bytes(image))
    return stamps[0], stamps[1], stamps[2]
