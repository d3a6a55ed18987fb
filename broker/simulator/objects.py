"""One simulated DIA object: its model, its history and the running sums of its diaObject.

The ``diaObject`` summary (position, per-band means, sigmas, extremes, slopes, counts, first and
last detection times) is kept by running sums over *every* detection and forced measurement of
the object, so ``nDiaSources`` may exceed the sources a packet shows. The history a packet
carries is only the last `HISTORY_DAYS`: at most ``MAX_PRV_SOURCES`` detections (no limit in the
realistic profile) and the forced measurements of that window (of the profile's shorter one).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from broker.constants import MAX_PRV_SOURCES, RUBIN_BANDS
from broker.simulator.cadence import unix_micros
from broker.simulator.instrument import BANDS
from broker.simulator.lightcurves import Host

__all__ = ["HISTORY_DAYS", "SimObject"]

#: Days of history an alert carries (prvDiaSources and prvDiaForcedSources).
HISTORY_DAYS = 365.0


class SimObject:
    """One DIA object: its model, its cadence position and its accumulated history."""

    __slots__ = (
        "agn_state",
        "agn_time",
        "amplitude",
        "cos_dec",
        "dec",
        "detections",
        "dia_object_id",
        "first_mjd",
        "forced",
        "forced_stats",
        "host",
        "kind",
        "last_mjd",
        "n_sources",
        "params",
        "pos_sums",
        "ra",
        "retire_mjd",
        "source_stats",
        "static",
        "target_name",
    )

    def __init__(self, dia_object_id: int, kind: int, ra: float, dec: float,
                 max_sources: int | None = MAX_PRV_SOURCES) -> None:
        self.dia_object_id = dia_object_id
        self.kind = kind
        self.ra = ra
        self.dec = dec
        self.cos_dec = max(math.cos(math.radians(dec)), 1e-6)
        self.static: tuple[float, ...] = (0.0,) * BANDS
        self.amplitude: tuple[float, ...] = (0.0,) * BANDS
        self.params: tuple[float, ...] = ()
        self.host: Host | None = None
        self.agn_state = 0.0
        self.agn_time: float | None = None
        self.retire_mjd: float | None = None
        self.target_name = "lowdust"
        self.detections: deque[tuple[float, dict[str, Any]]] = deque(maxlen=max_sources)
        self.forced: deque[tuple[float, dict[str, Any]]] = deque()
        # Per band: n, sum w, sum w f, sum f, sum f^2, min, max, max slope, last t, last f, sum err.
        self.source_stats: list[list[float]] = [
            [0, 0.0, 0.0, 0.0, 0.0, math.inf, -math.inf, -math.inf, 0.0, 0.0, 0.0]
            for _ in range(BANDS)
        ]
        # Per band: sum w, sum w f (difference), sum w, sum w f (science).
        self.forced_stats: list[list[float]] = [[0.0, 0.0, 0.0, 0.0] for _ in range(BANDS)]
        # Inverse-variance sums of the detections' offsets from the true position (arcsec).
        self.pos_sums = [0.0, 0.0, 0.0]
        self.n_sources = 0
        self.first_mjd: float | None = None
        self.last_mjd: float | None = None

    def mean_position(self) -> tuple[float, float, float]:
        """Weighted mean of the detections: ra, dec (deg) and its error (arcsec)."""
        weight, wdx, wdy = self.pos_sums
        if weight <= 0.0:
            return self.ra, self.dec, 0.1
        dx, dy = wdx / weight, wdy / weight
        ra = (self.ra + dx / 3600.0 / self.cos_dec) % 360.0
        dec = max(-90.0, min(90.0, self.dec + dy / 3600.0))
        return ra, dec, 1.0 / math.sqrt(weight)

    def add_forced(self, band: int, flux: float, err: float, science: float,
                   sci_err: float) -> None:
        """Fold one forced measurement into the per-band sums."""
        stats = self.forced_stats[band]
        weight = 1.0 / (err * err)
        sci_weight = 1.0 / (sci_err * sci_err)
        stats[0] += weight
        stats[1] += weight * flux
        stats[2] += sci_weight
        stats[3] += sci_weight * science

    def forget_before(self, horizon: float, forced_horizon: float | None = None) -> None:
        """Drop the detections older than ``horizon`` (MJD) and the forced measurements older
        than ``forced_horizon`` (by default the same)."""
        if forced_horizon is None:
            forced_horizon = horizon
        forced = self.forced
        while forced and forced[0][0] < forced_horizon:
            forced.popleft()
        detections = self.detections
        while detections and detections[0][0] < horizon:
            detections.popleft()

    def add_detection(self, band: int, mjd: float, flux: float, err: float, sigma_pos: float,
                      dx: float, dy: float) -> None:
        """Fold one detection (its flux and its offset from the true position) into the sums."""
        stats = self.source_stats[band]
        weight = 1.0 / (err * err)
        if stats[0] > 0 and mjd > stats[8]:
            stats[7] = max(stats[7], (flux - stats[9]) / (mjd - stats[8]))
        stats[0] += 1
        stats[1] += weight
        stats[2] += weight * flux
        stats[3] += flux
        stats[4] += flux * flux
        stats[5] = min(stats[5], flux)
        stats[6] = max(stats[6], flux)
        stats[8], stats[9] = mjd, flux
        stats[10] += err
        pos_weight = 1.0 / (sigma_pos * sigma_pos)
        sums = self.pos_sums
        sums[0] += pos_weight
        sums[1] += pos_weight * dx
        sums[2] += pos_weight * dy
        self.n_sources += 1
        if self.first_mjd is None:
            self.first_mjd = mjd
        self.last_mjd = mjd

    def summary(self, processed: float) -> dict[str, Any]:
        """The diaObject's values (newest field names) as of a processing time."""
        ra, dec, err_arcsec = self.mean_position()
        err = err_arcsec / 3600.0
        values: dict[str, Any] = {
            "diaObjectId": self.dia_object_id,
            "validityStartMjdTai": processed,
            "_validityStartMicros": unix_micros(processed),
            "ra": ra,
            "raErr": err,
            "dec": dec,
            "decErr": err,
            "ra_dec_Cov": 0.0,
            "firstDiaSourceMjdTai": self.first_mjd,
            "lastDiaSourceMjdTai": self.last_mjd,
            "nDiaSources": self.n_sources,
        }
        for band, keys in enumerate(_OBJECT_KEYS):
            n, sw, swf, sf, sff, low, high, slope, _, _, serr = self.source_stats[band]
            n = int(n)
            values[keys[0]] = n
            if n:
                values[keys[1]] = swf / sw
                values[keys[2]] = 1.0 / math.sqrt(sw)
                values[keys[4]] = low
                values[keys[5]] = high
                values[keys[7]] = serr / n
            if n > 1:
                values[keys[3]] = math.sqrt(max(sff - sf * sf / n, 0.0) / (n - 1))
                if slope > -math.inf:
                    values[keys[6]] = slope
            fw, fwf, sw_sci, swf_sci = self.forced_stats[band]
            if fw > 0.0:
                values[keys[8]] = fwf / fw
                values[keys[9]] = 1.0 / math.sqrt(fw)
                values[keys[10]] = swf_sci / sw_sci
                values[keys[11]] = 1.0 / math.sqrt(sw_sci)
        return values


_OBJECT_KEYS = tuple(
    tuple(
        f"{band}_{suffix}"
        for suffix in (
            "psfFluxNdata",
            "psfFluxMean",
            "psfFluxMeanErr",
            "psfFluxSigma",
            "psfFluxMin",
            "psfFluxMax",
            "psfFluxMaxSlope",
            "psfFluxErrMean",
            "fpFluxMean",
            "fpFluxMeanErr",
            "scienceFluxMean",
            "scienceFluxMeanErr",
        )
    )
    for band in RUBIN_BANDS
)
