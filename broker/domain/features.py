"""Per-object light-curve features: what a filter can select on without reading the light curve.

`compute_features` turns an object's stored history (detections and forced measurements as
archive rows, plus Rubin's diaObject record when there is one) into one flat row of columns, named
and described once in `FEATURES` so that the felis schema can be generated from, or checked
against, it. docs/features.md gives every column's unit, formula, window and meaning of None;
this docstring states how the computation is organised and what it guarantees.

Invariant: the result depends only on the *set* of rows, on ``max(now_mjd, newest detection)``
and on the diaObject record passed (copied as it is). Rows are first reduced to one per id
(``source_id`` for detections, ``forced_id`` for forced measurements; should two rows of one id
disagree, the same one is kept whatever the order), then sorted by ``(mjd, id)``, and every sum
is taken in that order, so shuffled, repeated or late rows give bit-identical features. A late
packet (older than rows already stored) therefore changes nothing once its rows are in the
history, and a redelivered packet changes nothing at all.

Photometry is the signed difference-image PSF flux (nJy), the one measurement both surveys give
for every detection; magnitudes are AB magnitudes of its absolute value (zero point 31.4). Rates
and colours only combine fluxes of one sign, because the magnitude of ``|flux|`` describes a
change relative to the template and a light curve that crosses zero has no meaningful slope in
magnitudes across the crossing. Missing or non-finite values are treated as absent; undefined
features are None, never NaN. Bands outside ``ugrizy`` count in the overall columns only.

Everything per band is vectorised with numpy over the object's few hundred points; the cost is
dominated by reading the row dicts. The tests (tests/domain/test_features.py) check each feature
on light curves built by hand, the invariants above, real ZTF and Rubin sample packets, and the
UCDs and units against felis's validator.

Why one file: `FEATURES` (the column catalogue the felis schema and the docs are checked
against) and `compute_features` describe the same columns, and a feature's definition and its
code are read together; about half the file is that catalogue.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from broker.constants import NJY_AB_ZEROPOINT, RUBIN_BANDS
from broker.domain.alerts import Alert, flux_to_mag

#: Days either side of the peak over which the rise and decline rates are fitted (as for the
#: customary 15-day post-peak decline, so ``15 * decline_rate`` approximates that decline).
RATE_WINDOW_DAYS = 15.0
#: Fewest detections (the peak included) a rate is fitted on.
RATE_MIN_POINTS = 2
#: Shortest time span those detections must cover: a rate across nights, never within a visit pair.
RATE_MIN_BASELINE_DAYS = 0.5
#: Magnitude error added in quadrature in the rate fits (calibration floor), so one very bright
#: point cannot carry a whole fit.
RATE_MAG_ERR_FLOOR = 0.01
#: Largest time between the two detections of a colour.
COLOUR_WINDOW_DAYS = 1.0
#: Fewest points a variability measure is computed on.
VARIABILITY_MIN_POINTS = 2

#: Neighbouring band pairs whose colours are computed (bluer band first).
COLOUR_PAIRS = tuple(pairwise(RUBIN_BANDS))

#: 2.5 / ln 10: magnitude error per unit of fractional flux error.
_MAG_PER_LN = 2.5 / math.log(10.0)

#: The UCD1+ spectral word of each band, by effective wavelength (u ~ 360 nm, g ~ 480 nm,
#: r ~ 620 nm, i ~ 750 nm, z ~ 870 nm, y ~ 970 nm): the vocabulary has no finer optical words.
BAND_UCD = {"u": "em.opt.U", "g": "em.opt.B", "r": "em.opt.R", "i": "em.opt.I",
            "z": "em.opt.I", "y": "em.opt.I"}

Kind = Literal["int", "float"]
Value = int | float | None


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature column: what the felis schema and the docs say about it.

    ``unit`` is a FITS/astropy unit string (None for dimensionless numbers and counts), ``ucd``
    an IVOA UCD1+ string, ``nullable`` False only for counts, which are 0 rather than None.
    """

    name: str
    kind: Kind
    unit: str | None
    ucd: str
    description: str
    nullable: bool = True


# ---- the catalogue of columns -----------------------------------------------------------------

#: Rubin diaObject fields carried through per band: (suffix of our column, Rubin's field suffix,
#: kind, unit, UCD with ``{em}`` for the band's word, description). Present from alert schema 8.0
#: on (earlier schemas lack some; those columns are then None).
_DIA_BAND_FIELDS: tuple[tuple[str, str, Kind, str | None, str, str], ...] = (
    ("psf_flux_mean", "psfFluxMean", "float", "nJy", "phot.flux.density;stat.mean;{em}",
     "Rubin's weighted mean difference-image PSF flux of the object's diaSources"),
    ("psf_flux_mean_err", "psfFluxMeanErr", "float", "nJy",
     "stat.error;phot.flux.density;stat.mean;{em}", "Rubin's standard error of that mean"),
    ("psf_flux_sigma", "psfFluxSigma", "float", "nJy", "stat.stdev;phot.flux.density;{em}",
     "Rubin's standard deviation of the diaSources' difference-image PSF fluxes"),
    ("psf_flux_ndata", "psfFluxNdata", "int", None, "meta.number",
     "Rubin's number of diaSources in the band"),
    ("fp_flux_mean", "fpFluxMean", "float", "nJy", "phot.flux.density;stat.mean;{em}",
     "Rubin's weighted mean forced-photometry difference flux"),
    ("fp_flux_mean_err", "fpFluxMeanErr", "float", "nJy",
     "stat.error;phot.flux.density;stat.mean;{em}", "Rubin's standard error of that mean"),
    ("science_flux_mean", "scienceFluxMean", "float", "nJy",
     "phot.flux.density;stat.mean;{em}",
     "Rubin's weighted mean flux on the science (direct) image, the total brightness"),
    ("psf_flux_max_slope", "psfFluxMaxSlope", "float", "nJy/d",
     "arith.rate;phot.flux.density;{em}",
     "Rubin's largest slope between consecutive difference fluxes, max(delta flux / delta time)"),
)

#: Rubin diaObject fields that are not per band: (our column, Rubin's field, kind, unit, UCD,
#: description).
_DIA_OBJECT_FIELDS: tuple[tuple[str, str, Kind, str | None, str, str], ...] = (
    ("dia_n_dia_sources", "nDiaSources", "int", None, "meta.number",
     "Rubin's count of diaSources associated with the diaObject"),
    ("dia_first_dia_source_mjd", "firstDiaSourceMjdTai", "float", "d", "time.epoch",
     "Rubin's time of the object's first diaSource (MJD, TAI)"),
    ("dia_last_dia_source_mjd", "lastDiaSourceMjdTai", "float", "d", "time.epoch",
     "Rubin's time of the object's newest diaSource (MJD, TAI)"),
)

#: Our column -> (Rubin diaObject field, kind), in column order.
DIA_OBJECT_FIELDS: dict[str, tuple[str, Kind]] = {
    **{f"dia_{band}_{suffix}": (f"{band}_{field}", kind)
       for band in RUBIN_BANDS for suffix, field, kind, *_ in _DIA_BAND_FIELDS},
    **{name: (field, kind) for name, field, kind, *_ in _DIA_OBJECT_FIELDS},
}


def _band_features(band: str) -> list[Feature]:
    em = BAND_UCD[band]
    b = band
    return [
        Feature(f"{b}_ndet", "int", None, "meta.number",
                f"Detections in band {b} (distinct source ids).", nullable=False),
        Feature(f"{b}_nforced", "int", None, "meta.number",
                f"Forced measurements in band {b} (distinct forced ids).", nullable=False),
        Feature(f"{b}_first_det_mjd", "float", "d", "time.epoch",
                f"Time of the first detection in band {b} (MJD)."),
        Feature(f"{b}_last_det_mjd", "float", "d", "time.epoch",
                f"Time of the newest detection in band {b} (MJD; ties broken by source id)."),
        Feature(f"{b}_last_mag", "float", "mag", f"phot.mag;{em}",
                f"AB magnitude of |difference flux| of the newest detection in band {b}."),
        Feature(f"{b}_last_total_mag", "float", "mag", f"phot.mag;{em}",
                f"AB magnitude of the science-image (total) flux of the newest detection in "
                f"band {b}, when it has a positive one."),
        Feature(f"{b}_peak_mag", "float", "mag", f"phot.mag;{em}",
                f"AB magnitude of the largest |difference flux| among detections in band {b}."),
        Feature(f"{b}_peak_mjd", "float", "d", "time.epoch",
                f"Time of the detection giving {b}_peak_mag (the earliest if tied)."),
        Feature(f"{b}_rise_rate", "float", "mag/d", f"arith.rate;phot.mag;{em}",
                f"Brightening rate before the peak in band {b}: minus the weighted least-squares "
                f"slope of magnitude against time over detections from {RATE_WINDOW_DAYS:g} d "
                f"before the peak to the peak; positive when the object brightened."),
        Feature(f"{b}_decline_rate", "float", "mag/d", f"arith.rate;phot.mag;{em}",
                f"Fading rate after the peak in band {b}: the weighted least-squares slope of "
                f"magnitude against time over detections from the peak to "
                f"{RATE_WINDOW_DAYS:g} d after it; positive when the object faded."),
        Feature(f"{b}_chi2_red", "float", None, f"stat.fit.chi2;src.var;{em}",
                f"Reduced chi-square of the detections' difference fluxes in band {b} about "
                f"their weighted mean (1 for a constant source with right errors)."),
        Feature(f"{b}_excess_var", "float", None, f"stat.variance;src.var;{em}",
                f"Normalised excess variance of the detections' science-image (total) fluxes "
                f"in band {b}: (sample variance - mean squared error) / mean squared."),
        Feature(f"{b}_forced_chi2_red", "float", None, f"stat.fit.chi2;src.var;{em}",
                f"Reduced chi-square of the forced difference fluxes in band {b} about their "
                f"weighted mean: variability free of the detection threshold's selection."),
    ]


def _catalogue() -> tuple[Feature, ...]:
    features = [
        Feature("ndet", "int", None, "meta.number",
                "Detections of the object (distinct source ids), all bands.", nullable=False),
        Feature("nforced", "int", None, "meta.number",
                "Forced measurements of the object (distinct forced ids), all bands.",
                nullable=False),
        Feature("first_det_mjd", "float", "d", "time.epoch",
                "Time of the first detection (MJD; TAI for Rubin, UTC for ZTF)."),
        Feature("last_det_mjd", "float", "d", "time.epoch",
                "Time of the newest detection (MJD)."),
        Feature("days_since_first_det", "float", "d", "time.interval",
                "Days from the first detection to the alert's time, or to the newest detection "
                "when a late packet's time is older."),
    ]
    for band in RUBIN_BANDS:
        features.extend(_band_features(band))
    for blue, red in COLOUR_PAIRS:
        em = f"{BAND_UCD[blue]};{BAND_UCD[red]}"
        features.append(Feature(
            f"colour_{blue}_{red}", "float", "mag", f"phot.color;{em}",
            f"{blue} - {red} from the |difference fluxes| of the newest pair of same-sign "
            f"detections at most {COLOUR_WINDOW_DAYS:g} d apart."))
        features.append(Feature(
            f"colour_{blue}_{red}_mjd", "float", "d", "time.epoch",
            f"Mean time of the two detections giving colour_{blue}_{red} (MJD)."))
    for band in RUBIN_BANDS:
        for suffix, _field, kind, unit, ucd, text in _DIA_BAND_FIELDS:
            features.append(Feature(f"dia_{band}_{suffix}", kind, unit,
                                    ucd.format(em=BAND_UCD[band]),
                                    f"{text}, band {band} (Rubin only)."))
    for name, _field, kind, unit, ucd, text in _DIA_OBJECT_FIELDS:
        features.append(Feature(name, kind, unit, ucd, f"{text} (Rubin only)."))
    return tuple(features)


#: Every feature column, in the order `compute_features` returns them.
FEATURES: tuple[Feature, ...] = _catalogue()


# ---- reading rows -----------------------------------------------------------------------------

_VALUE_COLUMNS = ("mjd", "band", "psf_flux", "psf_flux_err", "science_flux", "science_flux_err")


def _float(value: Any) -> float:
    """A float, NaN for None or anything that is not a finite number."""
    if value is None or isinstance(value, (str, bytes)):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _order_key(row: Mapping[str, Any]) -> tuple[tuple[int, Any], ...]:
    """A total order on a row's values, used only to pick one of two rows sharing an id."""
    key: list[tuple[int, Any]] = []
    for column in _VALUE_COLUMNS:
        value = row.get(column)
        if isinstance(value, str):
            key.append((0, value))
        else:
            number = _float(value)
            key.append((1, 0.0) if math.isnan(number) else (0, number))
    return tuple(key)


#: Band letter -> its code in `_Points.band` (anything else is -1).
_BAND_CODE = {band: code for code, band in enumerate(RUBIN_BANDS)}


@dataclass(frozen=True, slots=True)
class _Points:
    """One kind of measurement, one per id, sorted by (mjd, id); NaN for absent values.

    ``band`` holds band codes (the index in ``RUBIN_BANDS``, -1 for any other band) and
    ``in_band`` the indices of each band's points, in time order.
    """

    ids: np.ndarray
    mjd: np.ndarray
    band: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    total: np.ndarray
    total_err: np.ndarray
    in_band: dict[str, np.ndarray]

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]], id_column: str) -> _Points:
        chosen: dict[int, Mapping[str, Any]] = {}
        for row in rows:
            ident = int(row[id_column])
            current = chosen.get(ident)
            if current is None or _order_key(row) < _order_key(current):
                chosen[ident] = row
        unique = list(chosen.values())
        ids = np.fromiter(chosen, dtype=np.int64, count=len(unique))
        mjd = _column(unique, "mjd")
        order = np.lexsort((ids, mjd))
        order = order[~np.isnan(mjd[order])]  # a row without a time cannot be placed
        codes = np.fromiter((_BAND_CODE.get(str(row.get("band")), -1) for row in unique),
                            dtype=np.int8, count=len(unique))[order]
        return cls(
            ids=ids[order],
            mjd=mjd[order],
            band=codes,
            flux=_column(unique, "psf_flux")[order],
            flux_err=_column(unique, "psf_flux_err")[order],
            total=_column(unique, "science_flux")[order],
            total_err=_column(unique, "science_flux_err")[order],
            in_band={band: np.flatnonzero(codes == code) for band, code in _BAND_CODE.items()},
        )


def _column(rows: list[Mapping[str, Any]], name: str) -> np.ndarray:
    """One numeric column as float64, NaN where absent or not finite."""
    try:
        # numpy turns None into NaN for a float dtype; the fallback handles anything odder.
        values = np.array([row.get(name) for row in rows], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.array([_float(row.get(name)) for row in rows], dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return values


def _check_one_object(*row_sets: list[Mapping[str, Any]]) -> None:
    objects = {str(row["object_id"]) for rows in row_sets for row in rows
               if row.get("object_id") is not None}
    if len(objects) > 1:
        msg = f"rows of more than one object given: {sorted(objects)[:5]}"
        raise ValueError(msg)


# ---- the features -----------------------------------------------------------------------------


def _slope(t: np.ndarray, m: np.ndarray, m_err: np.ndarray) -> float | None:
    """Weighted least-squares slope of m against t, under the minimum points and baseline."""
    if t.size < RATE_MIN_POINTS or t[-1] - t[0] < RATE_MIN_BASELINE_DAYS:
        return None
    w = 1.0 / (m_err * m_err + RATE_MAG_ERR_FLOOR * RATE_MAG_ERR_FLOOR)
    dt = t - np.sum(w * t) / np.sum(w)
    dm = m - np.sum(w * m) / np.sum(w)
    return float(np.sum(w * dt * dm) / np.sum(w * dt * dt))


def _rates(t: np.ndarray, flux: np.ndarray, err: np.ndarray,
           peak: int) -> tuple[float | None, float | None]:
    """(rise rate, decline rate) of one band's detections around its peak (index ``peak``)."""
    t_peak = t[peak]
    usable = (np.sign(flux) == np.sign(flux[peak])) & (err >= 0.0)  # NaN compares False
    t, flux, err = t[usable], np.abs(flux[usable]), err[usable]
    mag = -2.5 * np.log10(flux) + NJY_AB_ZEROPOINT  # flux_to_mag, vectorised
    mag_err = _MAG_PER_LN * err / flux
    before = (t >= t_peak - RATE_WINDOW_DAYS) & (t <= t_peak)
    after = (t >= t_peak) & (t <= t_peak + RATE_WINDOW_DAYS)
    rise = _slope(t[before], mag[before], mag_err[before])
    decline = _slope(t[after], mag[after], mag_err[after])
    return (None if rise is None else -rise), decline


def _reduced_chi2(flux: np.ndarray, err: np.ndarray) -> float | None:
    """Reduced chi-square about the weighted mean, over points with a positive error."""
    if flux.size < VARIABILITY_MIN_POINTS:
        return None
    ok = ~np.isnan(flux) & (err > 0.0)
    f, e = flux[ok], err[ok]
    if f.size < VARIABILITY_MIN_POINTS:
        return None
    w = 1.0 / (e * e)
    mean = np.dot(w, f) / w.sum()
    return float(np.dot(w, (f - mean) ** 2) / (f.size - 1))


def _excess_variance(flux: np.ndarray, err: np.ndarray) -> float | None:
    """Normalised excess variance (S^2 - <err^2>) / mean^2; None unless the mean is positive."""
    if flux.size < VARIABILITY_MIN_POINTS:
        return None
    ok = ~np.isnan(flux) & ~np.isnan(err)
    f, e = flux[ok], err[ok]
    if f.size < VARIABILITY_MIN_POINTS:
        return None
    mean = f.sum() / f.size
    if mean <= 0.0:
        return None
    variance = np.dot(f - mean, f - mean) / (f.size - 1)
    return float((variance - np.dot(e, e) / e.size) / (mean * mean))


def _colour(p: _Points, blue: str, red: str) -> tuple[float | None, float | None]:
    """(colour, mean time) of the newest same-sign pair of detections within the window."""
    a, b = p.in_band[blue], p.in_band[red]
    if a.size == 0 or b.size == 0:
        return None, None
    a = a[np.abs(p.flux[a]) > 0.0]  # NaN compares False: only real, nonzero fluxes
    b = b[np.abs(p.flux[b]) > 0.0]
    gap = np.abs(p.mjd[a][:, None] - p.mjd[b][None, :])
    ok = (gap <= COLOUR_WINDOW_DAYS) & (np.sign(p.flux[a])[:, None] == np.sign(p.flux[b])[None, :])
    ia, ib = np.nonzero(ok)
    if ia.size == 0:
        return None, None
    mean_t = 0.5 * (p.mjd[a][ia] + p.mjd[b][ib])
    # Newest mean time, then the closest pair, then the smallest ids (np.lexsort: last key first).
    best = np.lexsort((p.ids[b][ib], p.ids[a][ia], gap[ia, ib], -mean_t))[0]
    i, j = a[ia[best]], b[ib[best]]
    colour = -2.5 * math.log10(abs(p.flux[i]) / abs(p.flux[j]))
    return colour, float(mean_t[best])


def _per_band(out: dict[str, Value], det: _Points, forced: _Points, band: str) -> None:
    """Fill in the columns of one band (they are None in ``out`` until then)."""
    rows, forced_rows = det.in_band[band], forced.in_band[band]
    out[f"{band}_ndet"] = int(rows.size)
    out[f"{band}_nforced"] = int(forced_rows.size)
    out[f"{band}_forced_chi2_red"] = _reduced_chi2(forced.flux[forced_rows],
                                                   forced.flux_err[forced_rows])
    if rows.size == 0:
        return
    t, flux, err = det.mjd[rows], det.flux[rows], det.flux_err[rows]
    total, total_err = det.total[rows], det.total_err[rows]
    out[f"{band}_first_det_mjd"] = float(t[0])  # rows are sorted by (mjd, source id)
    out[f"{band}_last_det_mjd"] = float(t[-1])
    out[f"{band}_last_mag"] = flux_to_mag(float(flux[-1]))
    out[f"{band}_last_total_mag"] = flux_to_mag(float(total[-1])) if total[-1] > 0.0 else None
    size = np.abs(flux)
    if np.any(size > 0.0):  # NaN compares False: absent fluxes never make a peak
        peak = int(np.argmax(np.where(size > 0.0, size, -1.0)))  # first maximum: earliest
        out[f"{band}_peak_mag"] = flux_to_mag(float(flux[peak]))
        out[f"{band}_peak_mjd"] = float(t[peak])
        out[f"{band}_rise_rate"], out[f"{band}_decline_rate"] = _rates(t, flux, err, peak)
    out[f"{band}_chi2_red"] = _reduced_chi2(flux, err)
    out[f"{band}_excess_var"] = _excess_variance(total, total_err)


def dia_object_values(dia_object: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """The diaObject fields `DIA_OBJECT_FIELDS` reads, by Rubin's names, as floats (None where
    absent or not finite): what the ingest stage passes on for the features; None without a
    diaObject."""
    if not dia_object:
        return None
    out: dict[str, float | None] = {}
    for field, _kind in DIA_OBJECT_FIELDS.values():
        number = _float(dia_object.get(field))
        out[field] = None if math.isnan(number) else number
    return out


def _dia_values(dia_object: Mapping[str, Any] | None) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for name, (field, kind) in DIA_OBJECT_FIELDS.items():
        number = _float(dia_object.get(field)) if dia_object is not None else math.nan
        if math.isnan(number):
            out[name] = None
        else:
            out[name] = int(number) if kind == "int" else number
    return out


def history_rows(alert: Alert) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An alert's detections (its own and its packet's history) and forced measurements as the
    rows `compute_features` reads."""
    detections = [{"source_id": d.source_id, "object_id": d.object_id, "mjd": d.mjd,
                   "band": d.band, "psf_flux": d.psf_flux, "psf_flux_err": d.psf_flux_err,
                   "science_flux": d.science_flux, "science_flux_err": d.science_flux_err}
                  for d in alert.detections()]
    forced = [{"forced_id": f.forced_id, "object_id": f.object_id, "mjd": f.mjd, "band": f.band,
               "psf_flux": f.psf_flux, "psf_flux_err": f.psf_flux_err,
               "science_flux": f.science_flux, "science_flux_err": f.science_flux_err}
              for f in alert.forced]
    return detections, forced


def compute_features(
    detections: Iterable[Mapping[str, Any]],
    forced: Iterable[Mapping[str, Any]],
    *,
    now_mjd: float,
    dia_object: Mapping[str, Any] | None = None,
) -> dict[str, int | float | None]:
    """The feature row of one object, keyed by the names of `FEATURES`, in that order.

    Parameters
    ----------
    detections
        The object's detections as archive rows (the columns of
        ``broker.storage.archive.DETECTION_COLUMNS``; ``source_id``, ``mjd``, ``band`` and the
        flux columns are read). Any order; repeated rows count once.
    forced
        The object's forced measurements as archive rows (``FORCED_COLUMNS``; ``forced_id``,
        ``mjd``, ``band``, ``psf_flux`` and ``psf_flux_err`` are read).
    now_mjd
        The alert's time: ``days_since_first_det`` runs to the later of it and the newest
        detection.
    dia_object
        Rubin's diaObject record, whose fields `DIA_OBJECT_FIELDS` carries through; None for
        ZTF or when unknown (those columns are then None). It must be the record of the packet
        with the newest triggering detection: a late packet carries an older diaObject, and
        only the caller knows which one it already stored.

    Returns
    -------
    dict
        Every feature name to an int, a float or None (never NaN).

    Raises
    ------
    ValueError
        If ``now_mjd`` is not finite, or the rows belong to more than one object.
    """
    if not math.isfinite(now_mjd):
        msg = f"now_mjd must be a finite MJD, not {now_mjd}"
        raise ValueError(msg)
    detection_rows, forced_rows = list(detections), list(forced)
    _check_one_object(detection_rows, forced_rows)
    det = _Points.of(detection_rows, "source_id")
    fp = _Points.of(forced_rows, "forced_id")

    out: dict[str, Value] = dict.fromkeys(f.name for f in FEATURES)
    out["ndet"] = int(det.ids.size)
    out["nforced"] = int(fp.ids.size)
    if det.ids.size:
        first, last = float(det.mjd[0]), float(det.mjd[-1])
        out["first_det_mjd"] = first
        out["last_det_mjd"] = last
        out["days_since_first_det"] = max(float(now_mjd), last) - first
    for band in RUBIN_BANDS:
        _per_band(out, det, fp, band)
    for blue, red in COLOUR_PAIRS:
        out[f"colour_{blue}_{red}"], out[f"colour_{blue}_{red}_mjd"] = _colour(det, blue, red)
    out.update(_dia_values(dia_object))
    # A guard, not a rule: no arithmetic above should overflow, but a NaN must never leave here.
    return {name: None if isinstance(v, float) and not math.isfinite(v) else v
            for name, v in out.items()}
