"""What one batch of alerts adds to the archive, decided before anything is written.

Every packet repeats up to a year of its object's history. The archive keeps, per object, the
time of the newest detection and forced measurement it already holds; a batch writes only what is
newer, plus each packet's own detection, cutouts and bytes (those are keyed by the alert, so a
late or repeated packet rewrites them harmlessly). Because every write is keyed by source ids, a
batch written twice, or cut short and written again, leaves the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from broker.constants import RUBIN_BANDS
from broker.domain.alerts import Alert, Detection, ForcedMeasurement
from broker.domain.sky import Chunker, hpx29

#: Bands with their own columns in the objects table (ZTF's g, r, i share Rubin's columns).
BANDS = RUBIN_BANDS


@dataclass(frozen=True, slots=True)
class Seen:
    """What the archive already holds of one object."""

    last_detection_mjd: float = -math.inf
    last_forced_mjd: float = -math.inf
    chunk_id: int | None = None


@dataclass(frozen=True, slots=True)
class PlacedDetection:
    """A detection with its sky index and the chunk of its object."""

    detection: Detection
    chunk_id: int
    hpx29: int
    survey: str


@dataclass(frozen=True, slots=True)
class ObjectUpdate:
    """The object row a batch upserts; counts and times are recomputed from stored rows."""

    object_id: str
    survey: str
    ra: float
    dec: float
    chunk_id: int
    hpx29: int
    latest: Mapping[str, Detection]  # newest detection per band in this batch


@dataclass(slots=True)
class ArchiveBatch:
    """Everything one batch writes."""

    alerts: list[Alert] = field(default_factory=list)
    detections: list[PlacedDetection] = field(default_factory=list)
    forced: list[ForcedMeasurement] = field(default_factory=list)
    objects: list[ObjectUpdate] = field(default_factory=list)

    @property
    def object_ids(self) -> list[str]:
        return [o.object_id for o in self.objects]


def mean_position(detections: Iterable[Detection]) -> tuple[float, float]:
    """Mean sky position of detections (through unit vectors: safe across RA = 0 and poles)."""
    ra = np.radians([d.ra for d in detections])
    dec = np.radians([d.dec for d in detections])
    x = np.mean(np.cos(dec) * np.cos(ra))
    y = np.mean(np.cos(dec) * np.sin(ra))
    z = np.mean(np.sin(dec))
    lon = math.degrees(math.atan2(y, x)) % 360.0
    lat = math.degrees(math.atan2(z, math.hypot(x, y)))
    return lon, lat


def _position(alert: Alert) -> tuple[float, float]:
    """The survey's object position when it is a real sky position, else the mean detection."""
    if alert.position is not None:
        ra, dec = alert.position
        if math.isfinite(ra) and math.isfinite(dec) and 0 <= ra <= 360 and -90 <= dec <= 90:
            return ra % 360.0, dec
    return mean_position(alert.detections())


def plan(alerts: Iterable[Alert], seen: Mapping[str, Seen], chunker: Chunker) -> ArchiveBatch:
    """Decide what a batch of (valid, decoded) alerts writes.

    ``seen`` maps object ids to what the archive already holds. An object keeps the chunk it was
    first placed in, so its alert rows stay together even as its mean position drifts by
    fractions of an arcsecond.
    """
    batch = ArchiveBatch()
    by_alert: dict[int, Alert] = {}
    for alert in alerts:
        by_alert.setdefault(alert.alert_id, alert)
    batch.alerts = list(by_alert.values())

    per_object: dict[str, list[Alert]] = {}
    for alert in batch.alerts:
        per_object.setdefault(alert.object_id, []).append(alert)

    object_ids = list(per_object)
    detections_of: dict[str, dict[int, Detection]] = {}
    for object_id in object_ids:
        stored = seen.get(object_id, Seen())
        wanted: dict[int, Detection] = {}
        forced: dict[int, ForcedMeasurement] = {}
        for alert in per_object[object_id]:
            wanted[alert.detection.source_id] = alert.detection
            for previous in alert.history:
                if previous.mjd > stored.last_detection_mjd:
                    wanted.setdefault(previous.source_id, previous)
            for measurement in alert.forced:
                if measurement.mjd > stored.last_forced_mjd:
                    forced.setdefault(measurement.forced_id, measurement)
        detections_of[object_id] = wanted
        batch.forced.extend(forced.values())

    positions = []
    for object_id in object_ids:
        newest = max(per_object[object_id], key=lambda a: (a.detection.mjd, a.alert_id))
        positions.append(_position(newest))
    ras = np.array([p[0] for p in positions])
    decs = np.array([p[1] for p in positions])
    chunks = chunker.locate(ras, decs) if object_ids else np.array([], dtype=np.int64)
    indices = hpx29(ras, decs) if object_ids else np.array([], dtype=np.int64)

    all_new = [d for o in object_ids for d in detections_of[o].values()]
    det_hpx = hpx29(np.array([d.ra for d in all_new]), np.array([d.dec for d in all_new])) \
        if all_new else np.array([], dtype=np.int64)
    det_iter = iter(det_hpx.tolist())

    for i, object_id in enumerate(object_ids):
        stored = seen.get(object_id, Seen())
        chunk_id = stored.chunk_id if stored.chunk_id is not None else int(chunks[i])
        survey = per_object[object_id][0].survey.value
        latest: dict[str, Detection] = {}
        for detection in detections_of[object_id].values():
            batch.detections.append(PlacedDetection(detection, chunk_id, next(det_iter), survey))
            current = latest.get(detection.band)
            if current is None or (detection.mjd, detection.source_id) > (current.mjd,
                                                                          current.source_id):
                latest[detection.band] = detection
        batch.objects.append(ObjectUpdate(
            object_id=object_id, survey=survey, ra=float(ras[i]), dec=float(decs[i]),
            chunk_id=chunk_id, hpx29=int(indices[i]), latest=latest,
        ))
    return batch
