"""ZTF alert packets mapped into the internal alert model (`broker.domain.alerts`).

A decoded ZTF alert (schema 3.x or 4.x, see `broker.streaming.ztf`) becomes an `Alert` like a
Rubin one. The mapping, field by field:

- **Ids.** ``object_id`` is the text ``objectId`` (``"ZTF18abmmoot"``); a detection's
  ``source_id`` is its ``candid``, ZTF's 64-bit id of one candidate on one difference image
  (``pid * 10**6 + source number``), so it is the idempotency key exactly like a ``diaSourceId``.
- **Time.** ``mjd = jd - 2400000.5``. ZTF's ``jd`` is the *start* of the 30 s exposure, Rubin's
  ``midpointMjdTai`` the middle; the 15 s difference is left alone so that the stored time is the
  one ZTF publishes.
- **Band.** ``fid`` 1, 2, 3 are ZTF g, r, i, stored as ``"g"``, ``"r"``, ``"i"`` (the same columns
  as Rubin's bands; the filter curves differ, which colour work must keep in mind).
- **Difference flux.** ``psf_flux`` is ``magpsf`` in nJy through the AB zero point (31.4), negative
  when ``isdiffpos`` is ``"f"``/``"0"`` (the science image is fainter than the reference), and
  ``psf_flux_err = |psf_flux| * ln(10)/2.5 * sigmapsf``. ``snr = 2.5/ln(10) / sigmapsf``
  (= ``|psf_flux| / psf_flux_err``), ``reliability`` the deep-learning real-bogus score ``drb``
  when present, else the older random-forest ``rb``.
- **Total flux.** Rubin's ``scienceFlux`` is the flux on the direct image. ZTF publishes no such
  measurement, but the reference-image source nearest the candidate (``magnr``, ``sigmagnr``,
  ``distnr``) gives it when that source *is* the object: ``science_flux = reference flux +
  signed difference flux``, errors added in quadrature. This is only done when ``distnr`` is at
  most `REFERENCE_MATCH_ARCSEC` (1.5 arcsec, about one ZTF pixel and the usual choice of ZTF
  brokers) and the sum is positive; otherwise (a new source, a host galaxy, a neighbour)
  ``science_flux`` is ``None`` rather than a wrong number.
- **History.** ``prv_candidates`` mixes earlier detections (with a ``candid`` and ``magpsf``)
  and non-detections (``candid`` null, only ``diffmaglim``). Only detections enter ``history``;
  non-detections are 5-sigma upper limits with no id of their own, returned by `upper_limits`
  and never given an invented id.
- **Forced photometry** (``fp_hists``, schema 4.x only). ``forcediffimflux`` is in DN of the
  science image, whose zero point is ``magzpsci``, so ``flux_nJy = DN * 10**(-0.4 * (magzpsci -
  31.4))``; entries with a null flux, the ``-99999`` sentinel or no zero point are skipped. ZTF
  gives a forced measurement no id; `forced_id` derives one from ``(objectId, pid)`` (see there).
- **Cutouts.** The three ``stampData`` byte strings (gzip-compressed FITS), unchanged, under
  ``"science"``, ``"template"`` and ``"difference"``.
- **Schema.** ``"ztf:<schemavsn>"``, e.g. ``"ztf:3.3"``.

Impossible values raise `InvalidAlertError` with a reason: ``missing_id`` (no ``objectId`` or
``candid``), ``missing_field`` (a required value is absent or of the wrong type), ``bad_band``
(an unknown ``fid``), ``bad_sign`` (an unknown ``isdiffpos``), ``nan_value`` (a non-finite
``magpsf``), ``inconsistent_ids`` (the alert's ``candid`` is not its candidate's), and the reasons
of `broker.domain.alerts.validate` (``bad_coordinates``, ``bad_time``, ``negative_error``, ...).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from broker.constants import NJY_AB_ZEROPOINT
from broker.domain.alerts import (
    CUTOUT_KINDS,
    Alert,
    Detection,
    ForcedMeasurement,
    InvalidAlertError,
    Survey,
    _sorted_unique,
    mag_to_flux,
    validate,
)

__all__ = [
    "FORCED_FLUX_SENTINEL",
    "REFERENCE_MATCH_ARCSEC",
    "ZTF_BANDS",
    "forced_id",
    "from_ztf",
    "jd_to_mjd",
    "upper_limits",
]

#: ZTF filter ids (``fid``) and the band letters they are stored as.
ZTF_BANDS: Mapping[int, str] = {1: "g", 2: "r", 3: "i"}

#: Largest ``distnr`` (arcsec) at which the nearest reference source is taken to be the object.
REFERENCE_MATCH_ARCSEC = 1.5

#: The value ZTF's forced photometry writes for a flux it could not measure.
FORCED_FLUX_SENTINEL = -99999.0

#: Julian date of MJD 0.
_MJD_OFFSET = 2400000.5

#: d(mag) / d(ln flux): an error of sigma mag is a relative flux error of sigma / this.
_MAG_PER_LN = 2.5 / math.log(10.0)

_POSITIVE = frozenset({"t", "1"})
_NEGATIVE = frozenset({"f", "0"})


def jd_to_mjd(jd: float) -> float:
    """Modified Julian date of a Julian date."""
    return float(jd) - _MJD_OFFSET


def _band(fid: Any) -> str:
    band = ZTF_BANDS.get(fid) if isinstance(fid, int) else None
    if band is None:
        raise InvalidAlertError("bad_band", f"ZTF filter id {fid!r} is not 1 (g), 2 (r) or 3 (i)")
    return band


def _sign(isdiffpos: Any, candid: int) -> float:
    if isdiffpos in _POSITIVE:
        return 1.0
    if isdiffpos in _NEGATIVE:
        return -1.0
    raise InvalidAlertError(
        "bad_sign", f"candidate {candid} has isdiffpos={isdiffpos!r}, not 't'/'1' or 'f'/'0'"
    )


def _total_flux(
    entry: Mapping[str, Any], diff_flux: float, diff_err: float | None
) -> tuple[float | None, float | None]:
    """Reference flux plus the signed difference flux, when the reference source is the object."""
    magnr, sigmagnr, distnr = entry.get("magnr"), entry.get("sigmagnr"), entry.get("distnr")
    if magnr is None or distnr is None or not 0.0 <= distnr <= REFERENCE_MATCH_ARCSEC:
        return None, None
    if not math.isfinite(magnr):
        return None, None
    reference = mag_to_flux(magnr)
    total = reference + diff_flux
    if not total > 0.0:
        # A fainter-than-nothing total means the reference source is not (only) the object.
        return None, None
    if sigmagnr is None or diff_err is None or not math.isfinite(sigmagnr) or sigmagnr < 0:
        return total, None
    reference_err = reference * sigmagnr / _MAG_PER_LN
    return total, math.hypot(reference_err, diff_err)


def _detection(entry: Mapping[str, Any], object_id: str) -> Detection:
    """A ZTF candidate (or detected prv_candidate) as a Detection."""
    candid = entry.get("candid")
    if not isinstance(candid, int) or isinstance(candid, bool):
        raise InvalidAlertError("missing_id", f"candidate of {object_id} has no integer candid")
    magpsf, sigmapsf = entry.get("magpsf"), entry.get("sigmapsf")
    if magpsf is None:
        raise InvalidAlertError("missing_field", f"candidate {candid} has no magpsf")
    if not math.isfinite(magpsf):
        # Checked here because the error derived from it would otherwise be reported first.
        raise InvalidAlertError("nan_value", f"candidate {candid} has magpsf = {magpsf}")
    flux = _sign(entry.get("isdiffpos"), candid) * mag_to_flux(float(magpsf))
    flux_err = None if sigmapsf is None else abs(flux) * float(sigmapsf) / _MAG_PER_LN
    science, science_err = _total_flux(entry, flux, flux_err)
    snr = _MAG_PER_LN / sigmapsf if sigmapsf is not None and sigmapsf > 0 else None
    drb = entry.get("drb")
    return Detection(
        source_id=candid,
        object_id=object_id,
        mjd=jd_to_mjd(entry["jd"]),
        ra=float(entry["ra"]),
        dec=float(entry["dec"]),
        band=_band(entry.get("fid")),
        psf_flux=flux,
        psf_flux_err=flux_err,
        science_flux=science,
        science_flux_err=science_err,
        snr=snr,
        reliability=drb if drb is not None else entry.get("rb"),
    )


def _is_detection(entry: Mapping[str, Any]) -> bool:
    return entry.get("candid") is not None and entry.get("magpsf") is not None


def forced_id(object_id: str, pid: int) -> int:
    """The id of the forced measurement of an object on one ZTF image.

    ZTF's ``pid`` names one processed image (an exposure's readout-channel quadrant) and an
    object is measured at most once per image, so ``(objectId, pid)`` identifies the
    measurement; but ``pid`` alone is shared by every object of that quadrant and the pair does
    not fit in 63 bits (``pid`` takes 41, an ``objectId`` about 40). The id is therefore the
    first 63 bits of the BLAKE2b-64 digest of ``"<objectId>:<pid>"`` (plus one if that is
    zero): deterministic, so a replayed or repeated ``fp_hists`` entry gets the same id, and
    positive. Within one object a collision is practically impossible (~n**2 / 2**64 for n
    measurements); across the whole archive the chance of any collision among 10**8
    measurements is about 5e-4, so stores should key forced rows by ``(object_id, forced_id)``.
    """
    digest = hashlib.blake2b(f"{object_id}:{int(pid)}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def _forced(entry: Mapping[str, Any], object_id: str) -> ForcedMeasurement | None:
    """A fp_hists entry as a ForcedMeasurement; None when it holds no usable flux."""
    dn, dn_err, zero_point = (
        entry.get("forcediffimflux"),
        entry.get("forcediffimfluxunc"),
        entry.get("magzpsci"),
    )
    if dn is None or zero_point is None or dn == FORCED_FLUX_SENTINEL or not math.isfinite(dn):
        return None
    if not math.isfinite(zero_point):
        return None
    # One DN on the science image is magzpsci in AB magnitude: scale it to nJy.
    scale = 10.0 ** (-0.4 * (float(zero_point) - NJY_AB_ZEROPOINT))
    flux = float(dn) * scale
    flux_err = (
        None if dn_err is None or dn_err == FORCED_FLUX_SENTINEL else float(dn_err) * scale
    )
    science, science_err = _total_flux(entry, flux, flux_err)
    return ForcedMeasurement(
        forced_id=forced_id(object_id, entry["pid"]),
        object_id=object_id,
        mjd=jd_to_mjd(entry["jd"]),
        band=_band(entry.get("fid")),
        psf_flux=flux,
        psf_flux_err=flux_err,
        science_flux=science,
        science_flux_err=science_err,
    )


def upper_limits(record: Mapping[str, Any]) -> list[tuple[float, str, float]]:
    """The non-detections a ZTF alert repeats, as ``(mjd, band, diffmaglim)``, oldest first.

    These are the ``prv_candidates`` entries that are not detections: no ``candid`` (or no
    ``magpsf``) because ZTF looked and saw nothing down to ``diffmaglim``, the 5-sigma limiting
    magnitude of the difference image. They carry no id, so they are kept out of
    `Alert.history`; entries without a limit are skipped.

    Raises
    ------
    InvalidAlertError
        If a non-detection has an unknown ``fid`` or no ``jd``.
    """
    limits = []
    for entry in record.get("prv_candidates") or ():
        if _is_detection(entry) or entry.get("diffmaglim") is None:
            continue
        if entry.get("jd") is None:
            raise InvalidAlertError("missing_field", "a ZTF non-detection has no jd")
        limits.append((jd_to_mjd(entry["jd"]), _band(entry.get("fid")),
                       float(entry["diffmaglim"])))
    return sorted(limits)


def from_ztf(
    record: Mapping[str, Any], packet: bytes = b"", schema_version: str | None = None
) -> Alert:
    """Normalise a decoded ZTF alert record (see the module docstring for the mapping).

    Parameters
    ----------
    record
        The alert as fastavro reads it from the container (`broker.streaming.ztf`).
    packet
        The original message bytes, kept on the alert for replay.
    schema_version
        The ZTF schema version; defaults to the record's own ``schemavsn``.

    Returns
    -------
    Alert
        A validated alert with ``survey`` ZTF and ``schema`` ``"ztf:<version>"``.

    Raises
    ------
    InvalidAlertError
        If the record lacks an id or a required value, or holds an impossible one.
    """
    object_id = record.get("objectId")
    if not isinstance(object_id, str) or not object_id:
        raise InvalidAlertError("missing_id", "ZTF alert has no objectId")
    candidate = record.get("candidate")
    if not isinstance(candidate, Mapping):
        raise InvalidAlertError("missing_field", f"ZTF alert of {object_id} has no candidate")
    try:
        detection = _detection(candidate, object_id)
        top_candid = record.get("candid")
        if top_candid is not None and top_candid != detection.source_id:
            raise InvalidAlertError(
                "inconsistent_ids",
                f"ZTF alert of {object_id} names candid {top_candid} but its candidate is "
                f"{detection.source_id}",
            )
        history = tuple(
            _detection(entry, object_id)
            for entry in (record.get("prv_candidates") or ())
            if _is_detection(entry)
        )
        forced_all = (_forced(entry, object_id) for entry in (record.get("fp_hists") or ()))
        forced = {f.forced_id: f for f in forced_all if f is not None}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidAlertError(
            "missing_field", f"ZTF alert of {object_id} lacks a required value: {exc}"
        ) from exc
    cutouts = {}
    for kind in CUTOUT_KINDS:
        cutout = record.get(f"cutout{kind.capitalize()}")
        stamp = cutout.get("stampData") if isinstance(cutout, Mapping) else None
        if stamp:
            cutouts[kind] = bytes(stamp)
    version = schema_version or record.get("schemavsn") or "unknown"
    alert = Alert(
        survey=Survey.ztf,
        schema=f"ztf:{version}",
        detection=detection,
        history=_sorted_unique(history, exclude=detection.source_id),
        forced=tuple(sorted(forced.values(), key=lambda f: (f.mjd, f.forced_id))),
        cutouts=cutouts,
        packet=packet,
    )
    return validate(alert)
