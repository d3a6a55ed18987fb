"""What one visit measures of one object: the visit's conditions, forced photometry, detection.

Every visit yields forced photometry; a visit whose difference-image flux is detected at 5 sigma
or more (either sign) also yields a ``diaSource``. ``psfFlux`` is the difference flux,
``scienceFlux`` the total flux on the visit image, ``templateFlux`` the static part. Errors are
sky-limited (`broker.simulator.instrument`) plus the template's noise and the source's photon
noise. Positions scatter by ``0.6 FWHM / SNR`` (about 0.1 arcsec at 5 sigma) with a 10 mas floor.
Flat sources are detected only through noise spikes and subtraction artefacts (low
``reliability``). The detector (0-188) and the pixel position change with every visit.

Every draw comes from the caller's seeded ``random.Random``, in a fixed order: the order of the
statements below is part of the simulator's output.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from broker.constants import RUBIN_BANDS
from broker.simulator.cadence import Visit, unix_micros
from broker.simulator.instrument import (
    CALIBRATION_FLOOR,
    DETECTION_SIGMA,
    DETECTOR_PIXELS,
    ELECTRONS_PER_NJY,
    EXPOSURE_S,
    M5,
    M5_SCATTER,
    N_DETECTORS,
    PIXEL_SCALE_ARCSEC,
    SEEING_MEDIAN_ARCSEC,
    TEMPLATE_VARIANCE_RATIO,
)
from broker.simulator.lightcurves import (
    FLAT,
    FLAT_DETECTION_PROBABILITY,
    difference_flux,
    mag_to_njy,
)
from broker.simulator.objects import SimObject

__all__ = ["Measurement", "detect", "forced_values", "measure"]


@dataclass(slots=True)
class Measurement:
    """What one visit measured of one object (forced photometry and the visit's conditions)."""

    visit: Visit
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


def measure(rng: random.Random, obj: SimObject, visit: Visit, visit_id: int,
            true_diff: float | None = None) -> Measurement:
    """Draw the visit's conditions and the object's forced photometry on it.

    ``true_diff`` (nJy) replaces the light-curve model's difference flux (a moving object's).
    """
    mjd, band = visit.mjd, visit.band
    m5 = M5[band] + rng.gauss(0.0, M5_SCATTER)
    sky_sigma = mag_to_njy(m5) / DETECTION_SIGMA
    seeing = SEEING_MEDIAN_ARCSEC * math.exp(rng.gauss(0.0, 0.15))
    if true_diff is None:
        true_diff = difference_flux(rng, obj, mjd, band)
    total = max(obj.static[band] + true_diff, 0.0)
    photon_var = total / ELECTRONS_PER_NJY
    sky_var = sky_sigma * sky_sigma
    err = math.sqrt(sky_var * (1.0 + TEMPLATE_VARIANCE_RATIO) + photon_var)
    sci_err = math.sqrt(sky_var + photon_var + (CALIBRATION_FLOOR * total) ** 2)
    flux = true_diff + rng.gauss(0.0, err)
    # The detection's own PSF fit sits a hair away from the forced one on the same image.
    detection_flux = flux + rng.gauss(0.0, 0.05 * err)
    science = total + rng.gauss(0.0, sci_err)
    if obj.kind == FLAT:
        detected = rng.random() < FLAT_DETECTION_PROBABILITY
        if detected:
            # A noise spike or a subtraction artefact, either sign, also on the visit image.
            sign = 1.0 if rng.random() < 0.6 else -1.0
            flux = detection_flux = sign * err * (DETECTION_SIGMA + rng.expovariate(1.5))
            science += flux
    else:
        detected = abs(detection_flux) >= DETECTION_SIGMA * err
    return Measurement(
        visit=visit,
        visit_id=visit_id,
        detector=rng.randrange(N_DETECTORS),
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


def forced_values(obj: SimObject, m: Measurement, forced_id: int) -> dict[str, Any]:
    """The diaForcedSource's values (newest field names), at the object's mean position."""
    obj_ra, obj_dec, _ = obj.mean_position()
    return {
        "diaForcedSourceId": forced_id,
        "diaObjectId": obj.dia_object_id,
        "ra": obj_ra,
        "dec": obj_dec,
        "visit": m.visit_id,
        "detector": m.detector,
        "psfFlux": m.flux,
        "psfFluxErr": m.err,
        "midpointMjdTai": m.visit.mjd,
        "scienceFlux": m.science,
        "scienceFluxErr": m.sci_err,
        "band": RUBIN_BANDS[m.visit.band],
        "timeProcessedMjdTai": m.processed,
        "_timeProcessedMicros": unix_micros(m.processed),
    }


def detect(rng: random.Random, obj: SimObject, m: Measurement, source_id: int) -> dict[str, Any]:
    """The diaSource values of a detection (newest field names, whatever the schema version).

    Also folds the detection into the object's summaries.
    """
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
    bogus = obj.kind == FLAT
    reliability = rng.uniform(0.0, 0.6) if bogus else 1.0 - 0.3 * rng.random() ** 2
    ap_err = err * 12.0 / (2.0 * psf_sigma_px)
    template = obj.static[band] + rng.gauss(0.0, err * math.sqrt(TEMPLATE_VARIANCE_RATIO))
    diff_err_dipole = err * math.sqrt(2.0)
    values = {
        "diaSourceId": source_id,
        "visit": visit_id,
        "ccdVisitId": visit_id * 1000 + detector,
        "detector": detector,
        "diaObjectId": obj.dia_object_id,
        "midpointMjdTai": mjd,
        "exposureTime": EXPOSURE_S[band],
        "ra": ra,
        "raErr": ra_err,
        "dec": dec,
        "decErr": dec_err,
        "ra_dec_Cov": rng.uniform(-0.2, 0.2) * ra_err * dec_err,
        "x": rng.uniform(0.0, DETECTOR_PIXELS[0]),
        "xErr": sigma_pos / PIXEL_SCALE_ARCSEC,
        "y": rng.uniform(0.0, DETECTOR_PIXELS[1]),
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
        "templateFluxErr": err * math.sqrt(TEMPLATE_VARIANCE_RATIO),
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
        "_timeProcessedMicros": unix_micros(m.processed),
        "bboxSize": bbox,
        "pixelFlags_cr": rng.random() < 0.02,
        "pixelFlags_interpolated": rng.random() < 0.05,
    }
    obj.add_detection(band, mjd, flux, err, sigma_pos, dx, dy)
    return values
