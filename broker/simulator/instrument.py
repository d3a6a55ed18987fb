"""LSSTCam and the survey's observing conditions, as the simulator models them.

The fixed numbers that the measurements, the light-curve models and the cutouts share. Noise is
sky-limited, from per-band single-visit 5-sigma depths (LSST SRD, Ivezic et al. 2019: u 23.9,
g 25.0, r 24.7, i 24.0, z 23.3, y 22.1, with 0.25 mag visit-to-visit scatter), plus the template's
noise and the source's photon noise.
"""

from __future__ import annotations

from broker.constants import RUBIN_BANDS

__all__ = [
    "BANDS",
    "CALIBRATION_FLOOR",
    "DETECTION_SIGMA",
    "DETECTOR_PIXELS",
    "ELECTRONS_PER_NJY",
    "EXPOSURE_S",
    "M5",
    "M5_SCATTER",
    "N_DETECTORS",
    "PIXEL_SCALE_ARCSEC",
    "SEEING_MEDIAN_ARCSEC",
    "TEMPLATE_VARIANCE_RATIO",
]

#: LSSTCam pixel scale.
PIXEL_SCALE_ARCSEC = 0.2
#: LSSTCam science detectors 0-188.
N_DETECTORS = 189
DETECTOR_PIXELS = (4072, 4000)
BANDS = len(RUBIN_BANDS)
#: LSST SRD single-visit 5-sigma point-source depths (Ivezic et al. 2019), in band order.
M5 = (23.9, 25.0, 24.7, 24.0, 23.3, 22.1)
M5_SCATTER = 0.25
SEEING_MEDIAN_ARCSEC = 0.8
EXPOSURE_S = (38.0, 30.0, 30.0, 30.0, 30.0, 30.0)
#: Photo-electrons per nJy in a 30 s visit, for the source's own Poisson noise.
ELECTRONS_PER_NJY = 2.0
#: A template coadd is ~9x deeper in variance than one visit.
TEMPLATE_VARIANCE_RATIO = 1.0 / 9.0
CALIBRATION_FLOOR = 0.005
DETECTION_SIGMA = 5.0
