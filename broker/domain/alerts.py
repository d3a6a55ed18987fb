"""The internal alert model: what every survey's packet becomes after decoding.

Rubin and ZTF packets differ in names, units and ids; the stages after ingest only see these
classes. Fluxes are difference-image PSF fluxes in nanojansky (ZTF magnitudes are converted with
the AB zero point), times are MJD, bands are single letters (u g r i z y). Object ids are text so
that Rubin's integer ``diaObjectId`` and ZTF's ``objectId`` names live in one column; source ids
are 64-bit integers in both surveys and are the idempotency keys of every write.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.constants import NJY_AB_ZEROPOINT
from broker.exceptions import PermanentError

CUTOUT_KINDS = ("science", "template", "difference")


class Survey(enum.StrEnum):
    """Where an alert comes from."""

    lsst = "lsst"
    ztf = "ztf"


class InvalidAlertError(PermanentError):
    """A packet decoded but holds values no real alert can have."""

    reason = "invalid_alert"

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Detection:
    """One detection on a difference image (a Rubin diaSource, a ZTF candidate)."""

    source_id: int
    object_id: str
    mjd: float
    ra: float
    dec: float
    band: str
    psf_flux: float | None
    psf_flux_err: float | None
    science_flux: float | None = None
    science_flux_err: float | None = None
    snr: float | None = None
    reliability: float | None = None

    @property
    def mag(self) -> float | None:
        """AB magnitude of the absolute difference flux, when there is a flux."""
        return flux_to_mag(self.psf_flux)

    @property
    def mag_err(self) -> float | None:
        if self.psf_flux in (None, 0.0) or self.psf_flux_err is None:
            return None
        return 2.5 / math.log(10) * self.psf_flux_err / abs(self.psf_flux)


@dataclass(frozen=True, slots=True)
class ForcedMeasurement:
    """Forced photometry at the object's position on one visit."""

    forced_id: int
    object_id: str
    mjd: float
    band: str
    psf_flux: float | None
    psf_flux_err: float | None
    science_flux: float | None = None
    science_flux_err: float | None = None


@dataclass(slots=True)
class Alert:
    """A decoded, normalised alert packet.

    ``history`` holds the previous detections the packet repeats (it never includes
    ``detection``); ``packet`` keeps the original bytes for replay.
    """

    survey: Survey
    schema: str
    detection: Detection
    history: tuple[Detection, ...] = ()
    forced: tuple[ForcedMeasurement, ...] = ()
    cutouts: Mapping[str, bytes] = field(default_factory=dict)
    packet: bytes = b""
    #: The survey's own object position (Rubin's diaObject ra, dec), when the packet has one.
    position: tuple[float, float] | None = None
    #: Detections and forced measurements the packet carries, including any left out of
    #: ``history`` and ``forced`` because the archive already holds them.
    n_detections: int = 0
    n_forced: int = 0
    #: Rubin's ``ssObjectId`` when the detection was associated with a known solar-system
    #: object (the alert then has no diaObject, and its object id is `ss_object_key`'s).
    ss_object_id: int | None = None
    #: The packet's diaObject record (Rubin), whose fields the features carry through.
    dia_object: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.n_detections = self.n_detections or len(self.history) + 1
        self.n_forced = self.n_forced or len(self.forced)

    @property
    def alert_id(self) -> int:
        return self.detection.source_id

    @property
    def object_id(self) -> str:
        return self.detection.object_id

    def detections(self) -> tuple[Detection, ...]:
        """History and the triggering detection, oldest first."""
        return (*self.history, self.detection)


def flux_to_mag(flux_njy: float | None) -> float | None:
    """AB magnitude of a flux in nJy (of its absolute value); None for no or zero flux."""
    if flux_njy is None or flux_njy == 0.0 or not math.isfinite(flux_njy):
        return None
    return -2.5 * math.log10(abs(flux_njy)) + NJY_AB_ZEROPOINT


def mag_err(flux: float | None, flux_err: float | None) -> float | None:
    """Magnitude error of a flux measurement (first order), None without both values."""
    if flux is None or flux_err is None or flux == 0.0:
        return None
    value = 2.5 / math.log(10) * flux_err / abs(flux)
    return value if math.isfinite(value) else None


def mag_to_flux(mag: float) -> float:
    """Flux in nJy of an AB magnitude."""
    return 10.0 ** (-0.4 * (mag - NJY_AB_ZEROPOINT))


# ---- validation ---------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _check_detection(d: Detection, what: str) -> None:
    if d.source_id is None or d.source_id <= 0:
        raise InvalidAlertError("missing_id", f"{what} has no positive source id")
    if not d.object_id:
        raise InvalidAlertError("missing_id", f"{what} {d.source_id} has no object id")
    if not (_finite(d.ra) and _finite(d.dec)):
        raise InvalidAlertError("bad_coordinates",
                                f"{what} {d.source_id} has non-finite coordinates")
    if not (0.0 <= d.ra <= 360.0 and -90.0 <= d.dec <= 90.0):
        raise InvalidAlertError(
            "bad_coordinates", f"{what} {d.source_id} is at ra={d.ra}, dec={d.dec}, off the sky"
        )
    if not _finite(d.mjd):
        raise InvalidAlertError("bad_time", f"{what} {d.source_id} has no finite time")
    for name in ("psf_flux_err", "science_flux_err"):
        err = getattr(d, name)
        if err is not None and (math.isnan(err) or err < 0):
            raise InvalidAlertError("negative_error",
                                    f"{what} {d.source_id} has {name} = {err}")
    for name in ("psf_flux", "science_flux"):
        value = getattr(d, name)
        if value is not None and math.isnan(value):
            raise InvalidAlertError("nan_value", f"{what} {d.source_id} has {name} = NaN")


def validate(alert: Alert) -> Alert:
    """Return the alert if every value is possible; raise InvalidAlertError otherwise."""
    _check_detection(alert.detection, "detection")
    for previous in alert.history:
        _check_detection(previous, "previous detection")
        if previous.object_id != alert.object_id:
            raise InvalidAlertError(
                "inconsistent_ids",
                f"previous detection {previous.source_id} belongs to object {previous.object_id}, "
                f"not {alert.object_id}",
            )
    for forced in alert.forced:
        if forced.forced_id is None or forced.forced_id <= 0:
            raise InvalidAlertError("missing_id", "forced measurement has no positive id")
        if forced.psf_flux_err is not None and (math.isnan(forced.psf_flux_err)
                                                or forced.psf_flux_err < 0):
            raise InvalidAlertError("negative_error",
                                    f"forced measurement {forced.forced_id} has a negative error")
    return alert


# ---- Rubin ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RubinNames:
    """Field names of one Rubin schema version (they changed over versions: decl -> dec, ...)."""

    mjd: str
    dec: str
    band: str
    psf_flux: str
    psf_flux_err: str
    science_flux: str
    science_flux_err: str

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> _RubinNames:
        def first(*names: str) -> str:
            return next((n for n in names if n in record), names[0])

        return cls(
            mjd=first("midpointMjdTai", "midPointTai", "midpointTai"),
            dec=first("dec", "decl"),
            band=first("band", "filterName"),
            psf_flux=first("psfFlux", "psFlux"),
            psf_flux_err=first("psfFluxErr", "psFluxErr"),
            science_flux=first("scienceFlux", "totFlux"),
            science_flux_err=first("scienceFluxErr", "totFluxErr"),
        )


# Resolved once per (schema id, record kind): normalising is on the hot path of ingest.
_NAMES: dict[tuple[int, str], _RubinNames] = {}


def _names(schema_id: int, kind: str, record: Mapping[str, Any]) -> _RubinNames:
    names = _NAMES.get((schema_id, kind))
    if names is None:
        names = _NAMES[(schema_id, kind)] = _RubinNames.of(record)
    return names


def _rubin_detection(source: Mapping[str, Any], fallback_object: int | str | None,
                     n: _RubinNames) -> Detection:
    object_id = source.get("diaObjectId") or fallback_object
    source_id = source.get("diaSourceId")
    return Detection(
        source_id=int(source_id) if source_id is not None else 0,
        object_id=str(object_id) if object_id else "",
        mjd=float(source[n.mjd]),
        ra=float(source["ra"]),
        dec=float(source[n.dec]),
        band=str(source.get(n.band) or "?"),
        psf_flux=source.get(n.psf_flux),
        psf_flux_err=source.get(n.psf_flux_err),
        science_flux=source.get(n.science_flux),
        science_flux_err=source.get(n.science_flux_err),
        snr=source.get("snr"),
        reliability=source.get("reliability"),
    )


def _rubin_forced(forced: Mapping[str, Any], n: _RubinNames) -> ForcedMeasurement:
    return ForcedMeasurement(
        forced_id=int(forced["diaForcedSourceId"]),
        object_id=str(forced["diaObjectId"]),
        mjd=float(forced[n.mjd]),
        band=str(forced.get(n.band) or "?"),
        psf_flux=forced.get(n.psf_flux),
        psf_flux_err=forced.get(n.psf_flux_err),
        science_flux=forced.get(n.science_flux),
        science_flux_err=forced.get(n.science_flux_err),
    )


def ss_object_key(ss_object_id: int) -> str:
    """The archive's object id of a known solar-system object: ``ss`` and Rubin's ssObjectId
    in decimal, apart from every diaObjectId (digits only) and ZTF objectId (``ZTF...``)."""
    return f"ss{ss_object_id}"


def _ss_object_id(record: Mapping[str, Any]) -> int | None:
    """Rubin's ssObjectId of a solar-system alert (on its diaSource, else its ssSource)."""
    for part in ("diaSource", "ssSource"):
        value = record.get(part)
        ss = value.get("ssObjectId") if isinstance(value, Mapping) else None
        if ss:
            return int(ss)
    return None


def rubin_object_id(record: Mapping[str, Any]) -> str | None:
    """The object id of a decoded Rubin record, without normalising it: its diaObjectId, or
    for a solar-system alert (no diaObject) `ss_object_key` of its ssObjectId."""
    source = record.get("diaSource")
    object_id = source.get("diaObjectId") if isinstance(source, Mapping) else None
    if not object_id:
        dia_object = record.get("diaObject")
        object_id = dia_object.get("diaObjectId") if isinstance(dia_object, Mapping) else None
    if not object_id:
        ss = _ss_object_id(record)
        return ss_object_key(ss) if ss is not None else None
    return str(object_id)


def from_rubin(record: Mapping[str, Any], schema_id: int, packet: bytes = b"", *,
               detections_after: float = -math.inf, forced_after: float = -math.inf) -> Alert:
    """Normalise a decoded Rubin alert record; raise InvalidAlertError if it is impossible.

    Previous detections at or before ``detections_after`` and forced measurements at or before
    ``forced_after`` (MJD) are left out: the archive already holds them, and building them is
    most of the cost of normalising a packet that repeats a year of history.
    """
    source = record.get("diaSource")
    if not isinstance(source, Mapping):
        raise InvalidAlertError("missing_id", "packet has no diaSource")
    dia_object = record.get("diaObject") or {}
    object_ref: int | str | None = (dia_object.get("diaObjectId")
                                    if isinstance(dia_object, Mapping) else None)
    ss_object_id = None
    if not object_ref and not source.get("diaObjectId"):
        # A solar-system alert: archived under its solar-system object (docs/architecture.md).
        ss_object_id = _ss_object_id(record)
        object_ref = ss_object_key(ss_object_id) if ss_object_id is not None else None
    try:
        names = _names(schema_id, "source", source)
        detection = _rubin_detection(source, object_ref, names)
        previous = record.get("prvDiaSources") or ()
        history = tuple(_rubin_detection(prv, object_ref, names) for prv in previous
                        if not prv[names.mjd] <= detections_after)
        forced_records = record.get("prvDiaForcedSources") or ()
        forced_names = _names(schema_id, "forced", forced_records[0]) if forced_records else names
        forced = tuple(_rubin_forced(f, forced_names) for f in forced_records
                       if not f[forced_names.mjd] <= forced_after)
        position = None
        if isinstance(dia_object, Mapping) and dia_object.get("ra") is not None:
            position = (float(dia_object["ra"]), float(dia_object[names.dec]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidAlertError("missing_field", f"packet lacks a required value: {exc}") from exc
    cutouts = {
        kind: record[f"cutout{kind.capitalize()}"]
        for kind in CUTOUT_KINDS
        if record.get(f"cutout{kind.capitalize()}")
    }
    alert = Alert(
        survey=Survey.lsst,
        schema=f"lsst:{schema_id}",
        detection=detection,
        history=_sorted_unique(history, exclude=detection.source_id),
        forced=forced,
        cutouts=cutouts,
        packet=packet,
        position=position,
        n_detections=len(previous) + 1,
        n_forced=len(forced_records),
        ss_object_id=ss_object_id,
        dia_object=dia_object if isinstance(dia_object, Mapping) and dia_object else None,
    )
    return validate(alert)


def _sorted_unique(history: Iterable[Detection], exclude: int) -> tuple[Detection, ...]:
    seen: dict[int, Detection] = {}
    for d in history:
        if d.source_id != exclude:
            seen.setdefault(d.source_id, d)
    return tuple(sorted(seen.values(), key=lambda d: (d.mjd, d.source_id)))
