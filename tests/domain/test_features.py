"""Per-object features (broker.domain.features): each feature on light curves built by hand,
the invariants (order, duplicates, late packets), None where undefined, real ZTF and Rubin
sample packets, and the catalogue of columns against felis's validators."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from astropy import units as u
from felis.datamodel import Column
from lsst.alert.packet import schema as lsst_schema

from broker.constants import NJY_AB_ZEROPOINT, RUBIN_BANDS
from broker.domain.alerts import from_rubin, mag_to_flux
from broker.domain.features import (
    COLOUR_PAIRS,
    COLOUR_WINDOW_DAYS,
    DIA_OBJECT_FIELDS,
    FEATURES,
    RATE_MAG_ERR_FLOOR,
    RATE_WINDOW_DAYS,
    compute_features,
)
from broker.domain.ztf import from_ztf
from broker.storage.archive import DETECTION_COLUMNS, FORCED_COLUMNS, OBJECT_COLUMNS
from broker.streaming.ztf import decode_container
from tests.support.data import REPO_ROOT, ZTF_SAMPLES, rubin_sample_alert

OBJECT = "1234"
NAMES = [f.name for f in FEATURES]
KINDS = {f.name: f.kind for f in FEATURES}
#: ZTF17aaacxxf: a variable star seen in g and r, 23 detections with total fluxes.
XXF = ZTF_SAMPLES / "single" / "2019_01_10_739260766315010006.avro"


def det(source_id: int, mjd: float, band: str, flux: float | None, err: float | None = 10.0,
        total: float | None = None, total_err: float | None = None) -> dict[str, Any]:
    """A detection row with every stored column."""
    row: dict[str, Any] = dict.fromkeys(DETECTION_COLUMNS)
    row.update(source_id=source_id, object_id=OBJECT, survey="lsst", mjd=mjd, ra=10.0,
               dec=-5.0, band=band, psf_flux=flux, psf_flux_err=err, science_flux=total,
               science_flux_err=total_err)
    return row


def forced(forced_id: int, mjd: float, band: str, flux: float | None,
           err: float | None = 10.0) -> dict[str, Any]:
    """A forced-photometry row with every stored column."""
    row: dict[str, Any] = dict.fromkeys(FORCED_COLUMNS)
    row.update(forced_id=forced_id, object_id=OBJECT, mjd=mjd, band=band, psf_flux=flux,
               psf_flux_err=err)
    return row


def at_mag(source_id: int, mjd: float, band: str, mag: float, sign: float = 1.0,
           err: float = 10.0) -> dict[str, Any]:
    return det(source_id, mjd, band, sign * mag_to_flux(mag), err)


def features(detections: list[dict[str, Any]], forced_rows: list[dict[str, Any]] | None = None,
             now: float = 60100.0, dia: dict[str, Any] | None = None) -> dict[str, Any]:
    return compute_features(detections, forced_rows or [], now_mjd=now, dia_object=dia)


def random_history(seed: int, n_det: int = 300, n_forced: int = 300,
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A year of noisy multi-band photometry with both flux signs and some gaps in values."""
    rng = np.random.default_rng(seed)
    detections = []
    for i in range(n_det):
        flux = float(rng.normal(2000.0, 1500.0))
        detections.append(det(
            1000 + i, float(60000.0 + rng.uniform(0, 365)), str(rng.choice(list(RUBIN_BANDS))),
            flux, float(rng.uniform(20, 200)) if i % 17 else None,
            total=float(flux + 5000.0) if i % 5 else None, total_err=30.0))
    forced_rows = [forced(5000 + i, float(60000.0 + rng.uniform(0, 365)),
                          str(rng.choice(list(RUBIN_BANDS))), float(rng.normal(500, 300)),
                          float(rng.uniform(20, 60)))
                   for i in range(n_forced)]
    return detections, forced_rows


def assert_valid_row(row: dict[str, Any]) -> None:
    """Exactly the FEATURES names, each None or of its kind, never NaN."""
    assert list(row) == NAMES
    for name, value in row.items():
        if value is None:
            continue
        if KINDS[name] == "int":
            assert type(value) is int, name
        else:
            assert type(value) is float, name
            assert math.isfinite(value), name


# ---- the catalogue -----------------------------------------------------------------------------


def test_names_are_unique_and_are_the_output_keys() -> None:
    assert len(set(NAMES)) == len(NAMES)
    detections, forced_rows = random_history(1)
    for row in (features([]), features(detections, forced_rows, dia={"nDiaSources": 3})):
        assert_valid_row(row)


def test_every_feature_is_a_valid_felis_column() -> None:
    """UCDs pass felis's UCD1+ check (controlled vocabulary), units parse in astropy."""
    for feature in FEATURES:
        column = Column.model_validate({
            "name": feature.name, "@id": f"#objects.{feature.name}",
            "datatype": "int" if feature.kind == "int" else "double",
            "nullable": feature.nullable, "description": feature.description,
            "ivoa:ucd": feature.ucd, "fits:tunit": feature.unit,
        })
        assert column.ivoa_ucd == feature.ucd
        if feature.unit is not None:
            u.Unit(feature.unit)
        assert feature.description.endswith("."), feature.name
        assert not feature.nullable or feature.kind == "float" or feature.name.startswith("dia_")


def test_names_leave_the_existing_object_columns_alone() -> None:
    # The enrich stage adds these to the objects table: no name may change an existing column.
    assert not set(NAMES) & set(OBJECT_COLUMNS)


def test_counts_are_never_none() -> None:
    row = features([])
    for feature in FEATURES:
        if not feature.nullable:
            assert row[feature.name] == 0


# ---- counts and times --------------------------------------------------------------------------


def test_counts_per_band_and_overall() -> None:
    detections = [det(1, 60000.0, "g", 100.0), det(2, 60001.0, "g", 120.0),
                  det(3, 60001.5, "r", 90.0), det(4, 60002.0, "?", 50.0)]
    forced_rows = [forced(11, 60000.0, "g", 5.0), forced(12, 60003.0, "y", 6.0),
                   forced(13, 60004.0, "y", 7.0)]
    row = features(detections, forced_rows)
    assert (row["ndet"], row["nforced"]) == (4, 3)  # an unknown band counts overall only
    assert (row["g_ndet"], row["r_ndet"], row["u_ndet"]) == (2, 1, 0)
    assert (row["g_nforced"], row["y_nforced"], row["r_nforced"]) == (1, 2, 0)


def test_first_and_last_detection_times() -> None:
    detections = [det(5, 60010.0, "r", 100.0), det(1, 60001.0, "g", 100.0),
                  det(3, 60005.0, "g", 100.0), det(4, 60012.5, "i", 100.0)]
    row = features(detections)
    assert (row["first_det_mjd"], row["last_det_mjd"]) == (60001.0, 60012.5)
    assert (row["g_first_det_mjd"], row["g_last_det_mjd"]) == (60001.0, 60005.0)
    assert (row["r_first_det_mjd"], row["r_last_det_mjd"]) == (60010.0, 60010.0)
    assert row["z_first_det_mjd"] is None


def test_days_since_first_detection_runs_to_now_or_to_the_newest_detection() -> None:
    detections = [det(1, 60001.0, "g", 100.0), det(2, 60011.0, "g", 100.0)]
    assert features(detections, now=60020.25)["days_since_first_det"] == 19.25
    # A late packet (its own time older than rows already stored) makes nothing younger.
    assert features(detections, now=60005.0)["days_since_first_det"] == 10.0
    assert features([], now=60005.0)["days_since_first_det"] is None


# ---- magnitudes --------------------------------------------------------------------------------


def test_last_and_peak_magnitudes() -> None:
    detections = [at_mag(1, 60000.0, "r", 21.0), at_mag(2, 60003.0, "r", 19.5),
                  at_mag(3, 60006.0, "r", 20.25)]
    row = features(detections)
    assert row["r_last_mag"] == pytest.approx(20.25, abs=1e-12)
    assert row["r_peak_mag"] == pytest.approx(19.5, abs=1e-12)
    assert row["r_peak_mjd"] == 60003.0
    # The zero point is the AB one for nJy: 3631 Jy is magnitude 0 (31.4 is 2.5 log10(3631e9)
    # rounded, hence the tolerance).
    one = features([det(1, 60000.0, "g", 3631e9)])
    assert one["g_last_mag"] == pytest.approx(0.0, abs=1e-3)
    assert NJY_AB_ZEROPOINT == 31.4


def test_newest_detection_is_chosen_by_time_then_source_id() -> None:
    detections = [at_mag(7, 60000.0, "g", 20.0), at_mag(9, 60000.0, "g", 21.0),
                  at_mag(8, 60000.0, "g", 22.0)]
    assert features(detections)["g_last_mag"] == pytest.approx(21.0)
    # A tie on the peak goes to the earliest detection.
    tied = [at_mag(1, 60000.0, "g", 19.0), at_mag(2, 60002.0, "g", 19.0)]
    assert features(tied)["g_peak_mjd"] == 60000.0


def test_total_magnitude_comes_from_the_science_flux_of_the_newest_detection() -> None:
    detections = [det(1, 60000.0, "i", 100.0, total=mag_to_flux(18.0)),
                  det(2, 60001.0, "i", 150.0, total=mag_to_flux(17.5))]
    assert features(detections)["i_last_total_mag"] == pytest.approx(17.5)
    for total in (None, 0.0, -30.0):
        detections[1]["science_flux"] = total
        assert features(detections)["i_last_total_mag"] is None


def test_negative_and_zero_difference_fluxes() -> None:
    # A source fainter than its template: magnitudes describe |flux|, the size of the change.
    detections = [at_mag(1, 60000.0, "r", 20.0), at_mag(2, 60002.0, "r", 18.0, sign=-1.0),
                  at_mag(3, 60004.0, "r", 19.0, sign=-1.0)]
    row = features(detections)
    assert row["r_last_mag"] == pytest.approx(19.0)
    assert (row["r_peak_mag"], row["r_peak_mjd"]) == (pytest.approx(18.0), 60002.0)
    # A zero flux has no magnitude and never makes a peak.
    detections.append(det(4, 60006.0, "r", 0.0))
    row = features(detections)
    assert row["r_last_mag"] is None
    assert row["r_peak_mag"] == pytest.approx(18.0)
    assert row["r_ndet"] == 4
    only_zero = features([det(1, 60000.0, "g", 0.0), det(2, 60001.0, "g", None)])
    assert (only_zero["g_ndet"], only_zero["g_peak_mag"], only_zero["g_rise_rate"]) == (2, None,
                                                                                       None)


# ---- rise and decline --------------------------------------------------------------------------


def test_rates_of_a_linear_light_curve() -> None:
    """Rising 0.2 mag/d to a peak at day 10, then fading 0.05 mag/d; points outside the
    windows (off both lines) must not count."""
    t0, peak = 60000.0, 60010.0
    rows = [at_mag(i, t0 + d, "g", 18.0 + 0.2 * (10 - d)) for i, d in enumerate(range(11))]
    rows += [at_mag(100 + i, peak + d, "g", 18.0 + 0.05 * d) for i, d in enumerate((2, 5, 9, 14))]
    rows += [at_mag(200, peak - RATE_WINDOW_DAYS - 1, "g", 25.0),
             at_mag(201, peak + RATE_WINDOW_DAYS + 1, "g", 23.0)]
    row = features(rows)
    assert row["g_peak_mjd"] == peak
    assert row["g_rise_rate"] == pytest.approx(0.2, rel=1e-9)
    assert row["g_decline_rate"] == pytest.approx(0.05, rel=1e-9)


def test_rates_are_error_weighted_least_squares() -> None:
    rows = [det(1, 60000.0, "r", 1000.0, 100.0), det(2, 60001.0, "r", 1500.0, 20.0),
            det(3, 60002.5, "r", 2600.0, 300.0), det(4, 60004.0, "r", 4000.0, 40.0)]
    t = np.array([r["mjd"] for r in rows])
    f = np.array([r["psf_flux"] for r in rows])
    e = np.array([r["psf_flux_err"] for r in rows])
    m = -2.5 * np.log10(f) + 31.4
    sigma = np.hypot(2.5 / np.log(10) * e / f, RATE_MAG_ERR_FLOOR)
    expected = np.polyfit(t - t[0], m, 1, w=1 / sigma)[0]  # polyfit's weights are 1/sigma
    assert features(rows)["r_rise_rate"] == pytest.approx(-expected, rel=1e-9)
    assert features(rows)["r_decline_rate"] is None  # nothing after the peak


def test_rates_need_two_points_across_half_a_day() -> None:
    one = features([at_mag(1, 60000.0, "i", 20.0)])
    assert (one["i_rise_rate"], one["i_decline_rate"]) == (None, None)
    same_night = features([at_mag(1, 60000.0, "i", 20.0), at_mag(2, 60000.4, "i", 19.0)])
    assert same_night["i_rise_rate"] is None
    two_nights = features([at_mag(1, 60000.0, "i", 20.0), at_mag(2, 60001.0, "i", 19.0)])
    assert two_nights["i_rise_rate"] == pytest.approx(1.0)


def test_rates_use_points_of_the_peaks_sign_only() -> None:
    # Fading below the template: the peak is the most negative flux; the early positive points
    # are another quantity and stay out of the fit.
    rows = [at_mag(1, 60000.0, "z", 21.5), at_mag(2, 60001.0, "z", 22.0),
            at_mag(3, 60003.0, "z", 21.0, sign=-1.0), at_mag(4, 60005.0, "z", 20.0, sign=-1.0),
            at_mag(5, 60007.0, "z", 20.5, sign=-1.0)]
    row = features(rows)
    assert row["z_peak_mjd"] == 60005.0
    assert row["z_rise_rate"] == pytest.approx(0.5)
    assert row["z_decline_rate"] == pytest.approx(0.25)


def test_points_without_an_error_stay_out_of_the_fits() -> None:
    rows = [at_mag(1, 60000.0, "y", 20.0), at_mag(2, 60002.0, "y", 19.0)]
    rows.append(det(3, 60001.0, "y", mag_to_flux(10.0), None))
    assert features(rows)["y_peak_mjd"] == 60001.0  # it is still the brightest detection
    rows[2]["psf_flux"] = mag_to_flux(19.9)  # off the line: it would change the slope
    assert features(rows)["y_rise_rate"] == pytest.approx(0.5)


# ---- colours -----------------------------------------------------------------------------------


def test_colour_of_the_newest_pair_within_the_window() -> None:
    rows = [at_mag(1, 60000.0, "g", 20.0), at_mag(2, 60000.2, "r", 19.7),   # g-r = 0.3
            at_mag(3, 60005.0, "g", 20.5), at_mag(4, 60005.8, "r", 20.0),   # g-r = 0.5, newer
            at_mag(5, 60009.0, "g", 21.0), at_mag(6, 60010.5, "r", 19.0)]   # too far apart
    row = features(rows)
    assert row["colour_g_r"] == pytest.approx(0.5)
    assert row["colour_g_r_mjd"] == pytest.approx(60005.4)
    assert row["colour_r_i"] is None
    rows[3]["mjd"] = 60005.0 + COLOUR_WINDOW_DAYS + 0.01
    assert features(rows)["colour_g_r"] == pytest.approx(0.3)


def test_colour_ties_go_to_the_closest_pair_and_signs_must_agree() -> None:
    rows = [at_mag(1, 60000.0, "r", 19.0), at_mag(2, 60000.1, "i", 18.8),
            at_mag(3, 60000.2, "i", 18.5), at_mag(4, 60000.3, "r", 19.1)]
    # Mean times: (1,2) 60000.05, (1,3) 60000.1, (4,2) 60000.2, (4,3) 60000.25, the newest.
    assert features(rows)["colour_r_i"] == pytest.approx(19.1 - 18.5)
    rows[2]["psf_flux"] = -rows[2]["psf_flux"]  # 3 now has the other sign
    assert features(rows)["colour_r_i"] == pytest.approx(19.1 - 18.8)
    assert features(rows)["colour_r_i_mjd"] == pytest.approx(60000.2)
    # (1,2) and (3,4) share the newest mean time, 60000.2 (the crossed pairs differ in sign):
    # the closer pair, (3,4), wins.
    tie = [at_mag(1, 60000.0, "z", 19.0, sign=-1.0), at_mag(2, 60000.4, "y", 18.0, sign=-1.0),
           at_mag(3, 60000.2, "z", 19.2), at_mag(4, 60000.2, "y", 18.5)]
    assert features(tie)["colour_z_y"] == pytest.approx(19.2 - 18.5)
    assert features(tie)["colour_z_y_mjd"] == pytest.approx(60000.2)


def test_colours_are_of_neighbouring_bands_only() -> None:
    assert COLOUR_PAIRS == (("u", "g"), ("g", "r"), ("r", "i"), ("i", "z"), ("z", "y"))
    rows = [at_mag(1, 60000.0, "g", 20.0), at_mag(2, 60000.1, "i", 19.0)]
    row = features(rows)
    assert all(row[f"colour_{a}_{b}"] is None for a, b in COLOUR_PAIRS)


# ---- variability -------------------------------------------------------------------------------


def test_reduced_chi_square_about_the_weighted_mean() -> None:
    rows = [det(1, 60000.0, "u", 100.0, 10.0), det(2, 60001.0, "u", 200.0, 10.0),
            det(3, 60002.0, "u", 300.0, 10.0)]
    # Mean 200; chi2 = (100^2 + 0 + 100^2) / 10^2 = 200 over 2 degrees of freedom.
    assert features(rows)["u_chi2_red"] == pytest.approx(100.0)
    # Unequal errors: weights 1/4, 1, mean (100/4 + 400) / 1.25 = 340.
    rows2 = [det(1, 60000.0, "u", 100.0, 20.0), det(2, 60001.0, "u", 400.0, 10.0)]
    expected = ((100 - 340) / 20) ** 2 + ((400 - 340) / 10) ** 2
    assert features(rows2)["u_chi2_red"] == pytest.approx(expected)
    # A point with no or zero error is left out; one point left is not enough.
    rows2.append(det(3, 60002.0, "u", 1e6, 0.0))
    rows2[0]["psf_flux_err"] = None
    assert features(rows2)["u_chi2_red"] is None


def test_forced_photometry_chi_square() -> None:
    forced_rows = [forced(1, 60000.0, "g", -10.0, 5.0), forced(2, 60001.0, "g", 10.0, 5.0),
                   forced(3, 60002.0, "r", 50.0, 5.0)]
    row = features([], forced_rows)
    assert row["g_forced_chi2_red"] == pytest.approx(8.0)  # (2^2 + 2^2) / 1
    assert row["r_forced_chi2_red"] is None
    assert row["g_chi2_red"] is None


def test_normalised_excess_variance_of_the_total_flux() -> None:
    rows = [det(i, 60000.0 + i, "i", 50.0, 5.0, total=t, total_err=10.0)
            for i, t in enumerate((100.0, 200.0, 300.0), start=1)]
    # S^2 = 10000, mean error^2 = 100, mean = 200: (10000 - 100) / 40000.
    assert features(rows)["i_excess_var"] == pytest.approx(0.2475)
    # Errors larger than the scatter give a negative value, reported as it is.
    for row in rows:
        row["science_flux_err"] = 200.0
    assert features(rows)["i_excess_var"] == pytest.approx((10000 - 40000) / 40000)
    # No positive mean, no fractional variance.
    for row, t in zip(rows, (-100.0, 50.0, 20.0), strict=True):
        row["science_flux"] = t
    assert features(rows)["i_excess_var"] is None
    assert features(rows[:1])["i_excess_var"] is None


# ---- empty, single, odd values ------------------------------------------------------------------


def test_empty_history() -> None:
    row = features([])
    assert_valid_row(row)
    assert {name for name, value in row.items() if value is not None} == {
        f.name for f in FEATURES if not f.nullable}


def test_a_single_detection() -> None:
    row = features([det(1, 60000.0, "r", 1000.0, 10.0, total=3000.0, total_err=12.0)],
                   now=60000.5)
    assert (row["ndet"], row["r_ndet"], row["days_since_first_det"]) == (1, 1, 0.5)
    assert row["r_last_mag"] == row["r_peak_mag"] == pytest.approx(31.4 - 7.5)
    for name in ("r_rise_rate", "r_decline_rate", "r_chi2_red", "r_excess_var",
                 "r_forced_chi2_red", "colour_g_r", "g_last_mag", "g_first_det_mjd"):
        assert row[name] is None, name


def test_missing_and_non_finite_values_never_give_nan() -> None:
    rows = [det(1, 60000.0, "g", math.nan, math.inf), det(2, math.nan, "g", 10.0),
            det(3, 60001.0, "g", math.inf, 1.0), det(4, 60002.0, "g", 40.0, -math.inf),
            det(5, 60003.0, None, 40.0)]  # type: ignore[arg-type]
    row = features(rows, [forced(1, 60000.0, "g", math.nan, None)],
                   dia={"g_psfFluxMean": math.nan})
    assert_valid_row(row)
    assert row["ndet"] == 4  # the row without a time cannot be placed and is left out
    assert row["g_ndet"] == 3
    assert row["g_peak_mag"] == pytest.approx(31.4 - 2.5 * math.log10(40.0))
    assert row["dia_g_psf_flux_mean"] is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="now_mjd"):
        features([], now=math.nan)
    other = det(2, 60001.0, "g", 1.0)
    other["object_id"] = "999"
    with pytest.raises(ValueError, match="more than one object"):
        features([det(1, 60000.0, "g", 1.0), other])


# ---- invariants --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_order_and_duplicates_do_not_matter(seed: int) -> None:
    detections, forced_rows = random_history(seed)
    expected = features(detections, forced_rows, now=60400.0)
    shuffler = random.Random(seed)
    for _ in range(3):
        noisy_det = detections + shuffler.sample(detections, 100)
        noisy_forced = forced_rows + shuffler.sample(forced_rows, 50)
        shuffler.shuffle(noisy_det)
        shuffler.shuffle(noisy_forced)
        # Bit-identical: sums are taken in one canonical order.
        assert features(noisy_det, noisy_forced, now=60400.0) == expected


def test_conflicting_duplicates_resolve_the_same_way_in_any_order() -> None:
    a = det(1, 60000.0, "g", 100.0)
    b = det(1, 60000.0, "g", 250.0)
    c = det(2, 60003.0, "g", 120.0)
    first = features([a, b, c])
    assert features([c, b, a]) == first
    assert first["g_ndet"] == 2


def test_late_and_repeated_packets_give_the_whole_historys_answer() -> None:
    """Packets carry a trailing window of the history; they arrive out of order and some
    twice. Once the archive holds their union, the features are those of the whole history in
    order, whatever packet was processed last."""
    detections, forced_rows = random_history(7, n_det=120, n_forced=120)
    detections.sort(key=lambda r: r["mjd"])
    forced_rows.sort(key=lambda r: r["mjd"])
    newest = detections[-1]["mjd"]
    whole = features(detections, forced_rows, now=newest)

    packets = []
    for i, trigger in enumerate(detections):
        window = [r for r in detections[: i + 1] if r["mjd"] > trigger["mjd"] - 200.0]
        fp = [r for r in forced_rows if trigger["mjd"] - 200.0 < r["mjd"] <= trigger["mjd"]]
        packets.append((trigger["mjd"], window, fp))
    order = random.Random(7).sample(packets, len(packets)) + packets[:10]
    # The archive is keyed by ids, as the stores are; the packet's own rows are passed too, so
    # the rows of a repeated packet arrive twice.
    archive_det: dict[int, dict[str, Any]] = {}
    archive_forced: dict[int, dict[str, Any]] = {}
    for now, window, fp in order:  # as the stage does: store the packet, then recompute
        archive_det.update((r["source_id"], r) for r in window)
        archive_forced.update((r["forced_id"], r) for r in fp)
        row = features([*archive_det.values(), *window], [*archive_forced.values(), *fp],
                       now=now)
    # The last packet processed is an old one (from packets[:10]): its time is in the past.
    assert order[-1][0] < newest
    forced_seen = set(archive_forced)
    expected = features(detections, [r for r in forced_rows if r["forced_id"] in forced_seen],
                        now=newest)
    assert row == expected
    # And the detections alone (every packet carries its trigger) are the whole history's.
    assert {k: v for k, v in expected.items() if "forced" not in k} == \
        {k: v for k, v in whole.items() if "forced" not in k}


# ---- real packets ------------------------------------------------------------------------------


def _rows(alert: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    detections = [dict(dataclasses.asdict(d), survey=alert.survey.value)
                  for d in alert.detections()]
    forced_rows = [dataclasses.asdict(f) for f in alert.forced]
    return detections, forced_rows


def test_a_real_ztf_variable_star() -> None:
    """ZTF17aaacxxf: g and r only, 23 detections, fading below its template (negative
    difference fluxes) with total fluxes from the reference source."""
    _, record = decode_container(XXF.read_bytes())
    alert = from_ztf(record)
    detections, forced_rows = _rows(alert)
    row = compute_features(detections, forced_rows, now_mjd=alert.detection.mjd)
    assert_valid_row(row)
    assert (row["ndet"], row["g_ndet"], row["r_ndet"]) == (23, 10, 13)
    assert all(row[f"{b}_ndet"] == 0 and row[f"{b}_last_mag"] is None for b in "uizy")
    assert row["r_last_mag"] == pytest.approx(alert.detection.mag)
    assert row["r_peak_mag"] == pytest.approx(min(d.mag or math.inf for d in alert.detections()
                                                  if d.band == "r"))
    assert row["r_last_total_mag"] is not None
    assert row["g_rise_rate"] is not None
    assert row["colour_g_r"] is not None
    assert row["colour_u_g"] is None
    assert all(row[name] is None for name in DIA_OBJECT_FIELDS)


def _rubin_sample() -> dict[str, Any]:
    with rubin_sample_alert("11.1").open("rb") as stream:
        record: dict[str, Any] = next(fastavro.reader(stream))  # type: ignore[arg-type]
        return record


def test_a_real_rubin_packet_carries_its_dia_object() -> None:
    record = _rubin_sample()
    alert = from_rubin(record, 1101)
    detections, forced_rows = _rows(alert)
    dia = record["diaObject"]
    row = compute_features(detections, forced_rows, now_mjd=alert.detection.mjd, dia_object=dia)
    assert_valid_row(row)
    for name, (field, _kind) in DIA_OBJECT_FIELDS.items():
        value = dia.get(field)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            assert row[name] is None, name
        else:
            assert row[name] == pytest.approx(value), name
    assert row["dia_n_dia_sources"] == dia["nDiaSources"]
    assert row["ndet"] == len(detections)


def test_dia_fields_exist_in_the_rubin_schema_with_their_kinds() -> None:
    path = Path(lsst_schema.get_schema_path(11, 1)) / "lsst.v11_1.diaObject.avsc"
    fields = {f["name"]: f["type"] for f in json.loads(path.read_text())["fields"]}
    for name, (field, kind) in DIA_OBJECT_FIELDS.items():
        assert field in fields, f"{name}: {field} is not a v11.1 diaObject field"
        types = fields[field] if isinstance(fields[field], list) else [fields[field]]
        wanted = {"int", "long"} if kind == "int" else {"float", "double"}
        assert wanted & set(types), (name, types)


def test_dia_fields_map_and_convert() -> None:
    dia = {field: (7 if kind == "int" else 1.5) for field, kind in DIA_OBJECT_FIELDS.values()}
    row = features([], dia=dia)
    for name, (_field, kind) in DIA_OBJECT_FIELDS.items():
        assert row[name] == (7 if kind == "int" else 1.5)
        assert type(row[name]) is (int if kind == "int" else float)
    assert row["dia_r_psf_flux_mean"] == 1.5
    assert all(features([])[name] is None for name in DIA_OBJECT_FIELDS)
    assert features([], dia={})["dia_n_dia_sources"] is None  # an older schema lacks it


def test_every_feature_is_documented() -> None:
    """docs/features.md names every column (per-band ones as ``{b}_...``)."""
    text = (REPO_ROOT / "docs" / "features.md").read_text()
    for name in NAMES:
        pattern = name
        for band in RUBIN_BANDS:
            if name.startswith(f"{band}_"):
                pattern = "{b}_" + name.removeprefix(f"{band}_")
            elif name.startswith(f"dia_{band}_"):
                pattern = "dia_{b}_" + name.removeprefix(f"dia_{band}_")
        assert f"`{pattern}`" in text, name
