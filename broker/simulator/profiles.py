"""Packet profiles: how much history, forced photometry and stamp area a stream's packets carry.

Two profiles, chosen by name (`PacketProfile`) when a simulator is built:

``small``
    The simulator's first output, kept byte for byte for a given seed: at most
    ``MAX_PRV_SOURCES`` (30) previous sources within `HISTORY_DAYS`, forced photometry of the
    same window, a survey-like cadence (a visit or a pair of visits on nights about 5 days
    apart), three single-HDU 30 x 30 stamps, no solar-system alerts. A median packet with
    history is about 37 kB. It is the library's default, which the tests rely on for their
    sizes and speed.

``realistic``
    Sized on Rubin's packets as measured in April 2026 (`MEASURED_MEDIANS`: measured April-2026
    medians, shared notes): about 176 kB for an alert with history, of which the three cutouts
    58 kB and ``prvDiaSources`` 116 kB, and about 60 kB for a solar-system alert. It is the
    default of ``lanner simulate`` and of the benchmarks.

How the realistic profile gets there, part by part (kB = 1000 bytes):

- **prvDiaSources, 116 kB.** One simulated ``diaSource`` encodes to about 397 bytes (nearly
  every field of schema 11.1 is filled, as in Rubin's packets), so the median alert with
  history carries about 290 previous sources: far more than 30, hence no cap but the 12-month
  window. With about two visits in three of a variable detected, that takes some 1.3 visits of
  the object a day over the window: a visited night has one to three visits back to back (two
  on average, in one or two bands) and nights are ``1 + floor(Exp(1))`` apart (1.6 days on
  average). That is much denser than the Wide-Fast-Deep plan and closer to the deep-drilling and
  template-building fields of the 2026 stream; it is tuned to the measured size, not taken from
  a schedule. Two more choices keep the median steady from one seed to another: persistent
  objects have been observed for the whole window when the stream starts (a survey older than
  its window, ``full_window``), and supernovae, whose histories are short, are 15 % of the
  population rather than 35 % (most alerts come from variable sources), so the median does not
  fall between the two groups.
- **Cutouts, 58 kB for the three.** Rubin's alert packager writes each stamp as an astropy
  ``CCDData`` FITS file: the image (float32, nJy) in the primary HDU and its variance in an
  ``UNCERT`` extension, the side the diaSource's footprint (``bboxSize``) clipped to 30-102
  pixels. A 30-pixel stamp is then 6 FITS blocks (17,280 bytes) and three come to 51.8 kB with
  their Avro lengths, 11 % under the measured median. FITS's 2,880-byte blocks leave nothing in
  between: the next size up (38-46 pixels) gives 69 kB, 19 % over, and so would the PSF image
  Rubin's packager has also attached since 2024, which the profile therefore leaves out. The
  stamps are not compressed (Rubin's are not either): their noise is realistic (sky, template
  and the photon noise of source and host, with the variance plane it was drawn from) but does
  not change their size.
- **Forced photometry.** The measured medians leave about 2 kB of a 176 kB packet beside the
  cutouts and the previous sources, so the median packet of April 2026 carried little forced
  photometry; why is not established here. The profile carries the forced measurements of the
  last 30 days (about 40, 3 kB); in Rubin's APDB the matching knob is how many months of forced
  sources are read.
- **Solar-system alerts, 60 kB.** A main-belt asteroid's detection with its ``ssSource`` and
  ``mpc_orbits`` records, no diaObject and no history (`broker.simulator.solar`): the cutouts
  plus about 1 kB, 52.9 kB, short by what the cutouts are short. One alert in ten
  (``solar_system_fraction``) is a choice, not a measurement.

With these, 400 packets of seed 1 give medians of 170 kB, 51.8 kB, 115 kB and 52.9 kB; other
seeds and longer streams move the history by about 10 % either way.

Plain data; nothing here draws a random number.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from broker.constants import MAX_PRV_SOURCES

__all__ = [
    "MEASURED_MEDIANS",
    "PROFILES",
    "CutoutLayout",
    "PacketProfile",
    "Profile",
    "SequenceCadence",
    "profile_named",
]

#: Rubin alert packets, April 2026, median sizes in bytes (shared notes: the Fink broker's Data
#: Transfer documentation). ``packet_with_history``: a non-solar-system alert whose
#: ``prvDiaSources`` is not null; ``cutouts``: the three stamps together; ``prv_dia_sources``: the
#: history array; ``solar_system``: an alert of a known solar-system object.
MEASURED_MEDIANS = {
    "packet_with_history": 176_000,
    "cutouts": 58_000,
    "prv_dia_sources": 116_000,
    "solar_system": 60_000,
}


class PacketProfile(StrEnum):
    """Name of a packet profile."""

    small = "small"
    realistic = "realistic"


@dataclass(frozen=True, slots=True)
class CutoutLayout:
    """How the three stamps are written.

    ``variance`` false: one primary HDU of ``min_side`` pixels (the small profile's stamps).
    True: Rubin's ``CCDData`` layout, image and ``UNCERT`` variance HDUs, the side the
    diaSource's ``bboxSize`` clipped to ``[min_side, max_side]``.
    """

    min_side: int
    max_side: int
    variance: bool


@dataclass(frozen=True, slots=True)
class SequenceCadence:
    """Nights of back-to-back visits (`broker.simulator.cadence.plan_sequence`)."""

    #: Mean number of visits of one object in one night (at least one).
    mean_visits_per_night: float
    #: Mean of the exponential number of nights skipped between two visited nights.
    mean_extra_nights: float


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything a packet profile changes in the simulated stream."""

    name: PacketProfile
    #: The most previous sources an alert carries; ``None``: the whole 12-month window.
    max_prv_sources: int | None
    #: Days of forced photometry an alert carries (at most the 12-month window).
    forced_days: float
    cutouts: CutoutLayout
    #: ``None``: the survey cadence of `broker.simulator.cadence` (visits and pairs).
    sequences: SequenceCadence | None
    #: Share of alerts that are solar-system alerts.
    solar_system_fraction: float
    #: Whether persistent objects (all but supernovae) have been observed for the whole history
    #: window when the stream starts, as in a survey older than the window; otherwise since a
    #: date drawn within it.
    full_window: bool
    #: Packets per live object when the population size is left to the simulator.
    packets_per_object: int
    #: Shares of the light-curve classes (supernova, periodic, AGN, flat) in the population;
    #: ``None``: `broker.simulator.lightcurves`' own (35, 30, 20, 15 %).
    class_shares: tuple[float, float, float, float] | None


PROFILES: dict[PacketProfile, Profile] = {
    PacketProfile.small: Profile(
        name=PacketProfile.small,
        max_prv_sources=MAX_PRV_SOURCES,
        forced_days=365.0,
        cutouts=CutoutLayout(min_side=30, max_side=30, variance=False),
        sequences=None,
        solar_system_fraction=0.0,
        full_window=False,
        packets_per_object=5,
        class_shares=None,
    ),
    PacketProfile.realistic: Profile(
        name=PacketProfile.realistic,
        max_prv_sources=None,
        forced_days=30.0,
        cutouts=CutoutLayout(min_side=30, max_side=102, variance=True),
        sequences=SequenceCadence(mean_visits_per_night=2.0, mean_extra_nights=1.0),
        solar_system_fraction=0.1,
        full_window=True,
        packets_per_object=10,
        class_shares=(0.15, 0.40, 0.25, 0.20),
    ),
}


def profile_named(name: Profile | PacketProfile | str) -> Profile:
    """The profile of a name (a `Profile` is returned as it is); `ValueError` naming the known
    ones otherwise."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[PacketProfile(name)]
    except ValueError:
        known = ", ".join(p.value for p in PacketProfile)
        msg = f"unknown packet profile {name!r}; known: {known}"
        raise ValueError(msg) from None
