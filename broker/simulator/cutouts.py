"""Cutouts: the three FITS stamps (science, template, difference) of an alert.

Pixels are in nJy, with a Gaussian PSF of the visit's seeing on sky noise, the host galaxy on
science and template, and a TAN WCS (0.2 arcsec per pixel) centred on the diaSource; difference
= science - template. Headers are built once with astropy and only their varying cards are
rewritten per packet. The noise comes from the caller's seeded numpy ``Generator``.

Two layouts (`broker.simulator.profiles.CutoutLayout`):

- `cutout_images` (small profile): one primary HDU, 30 x 30 float32, sky noise only.
- `ccd_cutout_images` (realistic profile): Rubin's ``CCDData`` files, the image in the primary
  HDU and its variance in an ``UNCERT`` extension (``UTYPE = 'VarianceUncertainty'``, so
  ``astropy.nddata.CCDData.read`` restores it), the side the diaSource's ``bboxSize`` clipped to
  the layout's range. The noise adds the photon noise of the scene and the source to the sky's,
  the template's scaled down by its depth, and the variance plane is the one the noise was drawn
  from (the difference's is the sum of the other two).
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
from broker.simulator.instrument import (
    ELECTRONS_PER_NJY,
    PIXEL_SCALE_ARCSEC,
    TEMPLATE_VARIANCE_RATIO,
)
from broker.simulator.lightcurves import host_psf_fraction
from broker.simulator.measure import Measurement
from broker.simulator.objects import SimObject
from broker.simulator.profiles import CutoutLayout

__all__ = ["CUTOUT_SIZE", "ccd_cutout_images", "cutout_images"]

#: Side of the square cutouts, in pixels (Rubin's nominal stamps are about 30 x 30).
CUTOUT_SIZE = 30

_CARD = 80
_BLOCK = 2880
_CUTOUT_KINDS = ("science", "template", "difference")
_VARYING = ("CRVAL1", "CRVAL2", "MJD-OBS", "BAND", "DIASRCID")
_CCD_VARYING = (*_VARYING, "CUTMINX", "CUTMINY")


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


def _stamp_cards(header: fits.Header, kind: str, side: int) -> None:
    """The WCS and provenance cards every stamp carries, placeholders filled per alert."""
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    centre = (side + 1) / 2.0
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


def _alert_cards(source: Mapping[str, Any], band: int) -> dict[str, bytes]:
    """The header cards of a stamp that are the alert's own: position, time, band, id."""
    return {
        "CRVAL1": _card("CRVAL1", _fits_real(source["ra"]), "[deg] RA of the diaSource"),
        "CRVAL2": _card("CRVAL2", _fits_real(source["dec"]), "[deg] Dec of the diaSource"),
        "MJD-OBS": _card(
            "MJD-OBS", _fits_real(source["midpointMjdTai"]), "[d] visit midpoint, TAI"
        ),
        "BAND": _card("BAND", f"'{RUBIN_BANDS[band]:<8}'", "Rubin band"),
        "DIASRCID": _card("DIASRCID", str(source["diaSourceId"]), "diaSourceId of the alert"),
    }


@cache
def _header_template(kind: str) -> _HeaderTemplate:
    data = np.zeros((CUTOUT_SIZE, CUTOUT_SIZE), dtype=">f4")
    header = fits.PrimaryHDU(data=data).header
    _stamp_cards(header, kind, CUTOUT_SIZE)
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


def _gaussian(sigma: float, dx: float, dy: float, pixels: np.ndarray = _PIXELS) -> np.ndarray:
    """A unit-sum 2-D Gaussian on the stamp grid, centred (dx, dy) pixels from the centre."""
    gx = np.exp(-0.5 * ((pixels - dx) / sigma) ** 2)
    gy = np.exp(-0.5 * ((pixels - dy) / sigma) ** 2)
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
        **_alert_cards(source, band),
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


# ---- Rubin's CCDData layout (realistic profile) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _CcdTemplate:
    primary: _HeaderTemplate
    uncert: bytes  # the UNCERT extension's header
    pixels: np.ndarray  # pixel offsets from the stamp's centre along one axis
    padding: bytes  # after each data unit, up to a whole FITS block


@cache
def _ccd_template(kind: str, side: int) -> _CcdTemplate:
    data = np.zeros((side, side), dtype=">f4")
    header = fits.PrimaryHDU(data=data).header
    header["EXTEND"] = (True, "the variance follows in extension UNCERT")
    _stamp_cards(header, kind, side)
    header["CUTMINX"] = (0, "detector x of the first column, less one")
    header["CUTMINY"] = (0, "detector y of the first row, less one")
    header["ORIGIN"] = ("Lanner simulator", "synthetic data")
    image = header.tostring().encode("ascii")
    offsets = {}
    for start in range(0, len(image), _CARD):
        key = image[start : start + 8].decode("ascii").strip()
        if key in _CCD_VARYING:
            offsets[key] = start
    uncert = fits.ImageHDU(data=data, name="UNCERT").header
    uncert["UTYPE"] = ("VarianceUncertainty", "astropy.nddata uncertainty class")
    uncert["BUNIT"] = ("nJy2", "variance of the pixel values")
    return _CcdTemplate(
        primary=_HeaderTemplate(image, offsets),
        uncert=uncert.tostring().encode("ascii"),
        pixels=np.arange(side, dtype=np.float64) - (side - 1) / 2.0,
        padding=b"\0" * (-(side * side * 4) % _BLOCK),
    )


def ccd_cutout_images(
    images: np.random.Generator,
    obj: SimObject,
    source: Mapping[str, Any],
    m: Measurement,
    layout: CutoutLayout,
) -> tuple[bytes, bytes, bytes]:
    """Science, template and difference stamps in Rubin's ``CCDData`` layout (image + variance)."""
    side = min(max(int(source["bboxSize"]), layout.min_side), layout.max_side)
    templates = {kind: _ccd_template(kind, side) for kind in _CUTOUT_KINDS}
    pixels = templates["science"].pixels
    band = m.visit.band
    psf_sigma = m.seeing / 2.3548 / PIXEL_SCALE_ARCSEC
    psf = _gaussian(psf_sigma, 0.0, 0.0, pixels)
    pixel_sigma = m.sky_sigma / (math.sqrt(4.0 * math.pi) * psf_sigma)
    noise = images.standard_normal((2, side, side))
    static = obj.static[band]
    scene = np.zeros((side, side))
    host = obj.host
    if host is not None:
        host_sigma = math.hypot(host.sigma_px, psf_sigma)
        scene += host.flux[band] * _gaussian(host_sigma, host.dx, host.dy, pixels)
        static -= host.flux[band] * host_psf_fraction(
            host.sigma_px, math.hypot(host.dx, host.dy)
        )
    scene += max(static, 0.0) * psf
    signal = scene + m.true_diff * psf
    # Photon noise of what is on the pixel, in nJy^2 (ELECTRONS_PER_NJY per nJy of flux).
    template_var = TEMPLATE_VARIANCE_RATIO * (
        pixel_sigma * pixel_sigma + np.maximum(scene, 0.0) / ELECTRONS_PER_NJY
    )
    science_var = pixel_sigma * pixel_sigma + np.maximum(signal, 0.0) / ELECTRONS_PER_NJY
    planes = np.empty((6, side, side), dtype=">f4")
    planes[0] = signal + np.sqrt(science_var) * noise[1]
    planes[1] = scene + np.sqrt(template_var) * noise[0]
    planes[2] = planes[0] - planes[1]
    planes[3] = science_var
    planes[4] = template_var
    planes[5] = planes[3] + planes[4]
    x, y = float(source["x"]), float(source["y"])
    cards = {
        **_alert_cards(source, band),
        "CUTMINX": _card("CUTMINX", str(math.floor(x) - side // 2),
                         "detector x of the first column, less one"),
        "CUTMINY": _card("CUTMINY", str(math.floor(y) - side // 2),
                         "detector y of the first row, less one"),
    }
    stamps = []
    for index, kind in enumerate(_CUTOUT_KINDS):
        template = templates[kind]
        image = bytearray(template.primary.image)
        for key, offset in template.primary.offsets.items():
            image[offset : offset + _CARD] = cards[key]
        image += planes[index].tobytes()
        image += template.padding
        image += template.uncert
        image += planes[3 + index].tobytes()
        image += template.padding
        stamps.append(bytes(image))
    return stamps[0], stamps[1], stamps[2]
