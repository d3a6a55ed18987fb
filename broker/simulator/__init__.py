"""Synthetic Rubin alert packets: a realistic, deterministic stream for tests, demos and benchmarks.

`AlertSimulator` keeps a population of DIA objects on the sky and observes them visit by visit with
a survey-like cadence. Every visit yields forced photometry; a visit whose difference-image flux is
detected at 5 sigma or more (either sign) yields a ``diaSource`` and an alert packet carrying that
object's history. The records are built for any alert schema version shipped by
``lsst-alert-packet`` (tested on 10.0, 11.0 and 11.1, and validated on every shipped version).

**Profiles.** How big the packets are is a packet profile (`broker.simulator.profiles`, the
``profile`` argument). ``small``, the library's default, is the simulator's original output,
byte for byte for a given seed: up to 30 previous sources, single-HDU 30 x 30 stamps, about 37 kB
with history. ``realistic``, the default of ``lanner simulate`` and of the benchmarks, is sized
on Rubin's packets as measured in April 2026 (measured April-2026 medians, shared notes: about
176 kB for an alert with history, of which cutouts 58 kB and prvDiaSources 116 kB; solar-system
alerts about 60 kB): the whole 12-month window of previous sources on a denser cadence, stamps
in Rubin's ``CCDData`` layout (image and variance, 30-102 pixels), a month of forced photometry,
and one alert in ten a main-belt asteroid's (`broker.simulator.solar`). Over 400 packets of seed
1 it gives 170 kB, 51.8 kB, 115 kB and 52.9 kB; the profiles module says how each number was
reached and where it falls short.

The package, one module per concern (each module's docstring states its part of the model):

- `broker.simulator.stream`: `AlertSimulator`, the population and the time-ordered stream.
- `broker.simulator.profiles`: the packet profiles and the measured sizes they aim at.
- `broker.simulator.schema`: the schema walk that turns simulated values into records.
- `broker.simulator.lightcurves`: supernovae, periodic variables, AGN and flat sources.
- `broker.simulator.cadence`: nights, band pairs, visit ids.
- `broker.simulator.measure`: a visit's conditions, forced photometry, detections.
- `broker.simulator.objects`: an object's history and its diaObject summary.
- `broker.simulator.cutouts`: the three FITS stamps.
- `broker.simulator.solar`: main-belt asteroids and their alerts (realistic profile).
- `broker.simulator.instrument`: LSSTCam and the survey's fixed numbers.

**History.** ``prvDiaSources`` are the object's own earlier ``diaSource`` records within
`HISTORY_DAYS` (365 d), at most ``MAX_PRV_SOURCES`` (30; no limit in the realistic profile),
oldest first, or ``null`` when there are none; ``prvDiaForcedSources`` its forced measurements at
earlier visits within the same window (the last 30 days in the realistic profile).

**Ids.** One 64-bit serial per simulator, ``(prefix << 41) | n``, with a prefix drawn from the
seed: ``diaObjectId``, ``diaSourceId`` and ``diaForcedSourceId`` never collide within a stream, and
two seeds almost surely give disjoint ids. The alert's ``diaSourceId`` is its diaSource's.

**Population size.** ``n_objects`` objects are alive at any time. Left as ``None``, it is fixed on
the first call of `AlertSimulator.packets` or `AlertSimulator.encoded` to ``max(1, count // 5)``
(``count // 10`` in the realistic profile), so a stream of N packets holds about five (ten)
in-stream detections per object.

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
from broker.simulator.profiles import PacketProfile
from broker.simulator.stream import AlertSimulator

__all__ = ["CUTOUT_SIZE", "HISTORY_DAYS", "PIXEL_SCALE_ARCSEC", "AlertSimulator", "PacketProfile"]
