"""Synthetic Rubin alert packets: a realistic, deterministic stream for tests, demos and benchmarks.

`AlertSimulator` keeps a population of DIA objects on the sky and observes them visit by visit with
a survey-like cadence. Every visit yields forced photometry; a visit whose difference-image flux is
detected at 5 sigma or more (either sign) yields a ``diaSource`` and an alert packet carrying that
object's history. The records are built for any alert schema version shipped by
``lsst-alert-packet`` (tested on 10.0, 11.0 and 11.1, and validated on every shipped version).

The package, one module per concern (each module's docstring states its part of the model):

- `broker.simulator.stream`: `AlertSimulator`, the population and the time-ordered stream.
- `broker.simulator.schema`: the schema walk that turns simulated values into records.
- `broker.simulator.lightcurves`: supernovae, periodic variables, AGN and flat sources.
- `broker.simulator.cadence`: nights, band pairs, visit ids.
- `broker.simulator.measure`: a visit's conditions, forced photometry, detections.
- `broker.simulator.objects`: an object's history and its diaObject summary.
- `broker.simulator.cutouts`: the three FITS stamps.
- `broker.simulator.instrument`: LSSTCam and the survey's fixed numbers.

**History.** ``prvDiaSources`` are the object's own earlier ``diaSource`` records within
`HISTORY_DAYS` (365 d), at most ``MAX_PRV_SOURCES`` (30), oldest first, or ``null`` when there are
none; ``prvDiaForcedSources`` its forced measurements at earlier visits within the same window.

**Ids.** One 64-bit serial per simulator, ``(prefix << 41) | n``, with a prefix drawn from the
seed: ``diaObjectId``, ``diaSourceId`` and ``diaForcedSourceId`` never collide within a stream, and
two seeds almost surely give disjoint ids. The alert's ``diaSourceId`` is its diaSource's.

**Population size.** ``n_objects`` objects are alive at any time. Left as ``None``, it is fixed on
the first call of `AlertSimulator.packets` or `AlertSimulator.encoded` to ``max(1, count // 5)``,
so a stream of N packets holds about five in-stream detections per object.

**Determinism.** The seed fixes everything (a Python ``random.Random`` for the scalar draws, a
numpy ``Generator`` for the images, and the id prefix); nothing reads the clock, and
``timeProcessedMjdTai`` is ``midpointMjdTai`` plus a drawn latency. The same seed, arguments and
sequence of calls give byte-identical encoded packets. The scalar generator is shared by every
module, so the order of the draws, across modules, is part of the output.

Records share their history sub-records internally; `AlertSimulator.packets` hands out copies, so
a caller may change a packet without changing later ones.

Plain Python and numpy (plus astropy for the FITS template and the schema walk over
``lsst-alert-packet``); it imports no Kafka or database driver.
"""

from __future__ import annotations

from broker.simulator.cutouts import CUTOUT_SIZE
from broker.simulator.instrument import PIXEL_SCALE_ARCSEC
from broker.simulator.objects import HISTORY_DAYS
from broker.simulator.stream import AlertSimulator

__all__ = ["CUTOUT_SIZE", "HISTORY_DAYS", "PIXEL_SCALE_ARCSEC", "AlertSimulator"]
