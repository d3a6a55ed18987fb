"""Packet profiles: the realistic profile against Rubin's measured medians, its packets' validity,
and the small profile's bytes unchanged."""

from __future__ import annotations

import hashlib
import io
import math
import statistics
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty
from fastavro.validation import validate

from broker.simulator import HISTORY_DAYS, AlertSimulator
from broker.simulator.profiles import (
    MEASURED_MEDIANS,
    PROFILES,
    PacketProfile,
    profile_named,
)
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion, parsed_schema

Record = dict[str, Any]
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
TOLERANCE = 0.15
REALISTIC = PROFILES[PacketProfile.realistic]


@pytest.fixture(scope="module")
def realistic() -> list[tuple[bytes, bytes, Record]]:
    """400 realistic v11.1 packets: (key, wire message, decoded record)."""
    simulator = AlertSimulator(schema="11.1", seed=1, profile="realistic")
    return [(key, value, wire.decode(value)[1]) for key, value in simulator.encoded(400)]


def _with_history(packets: list[tuple[bytes, bytes, Record]]) -> list[tuple[bytes, Record]]:
    return [(value, record) for _, value, record in packets
            if record["diaObject"] is not None and record["prvDiaSources"] is not None]


def _solar(packets: list[tuple[bytes, bytes, Record]]) -> list[tuple[bytes, bytes, Record]]:
    return [p for p in packets if p[2]["diaObject"] is None]


def _within(value: float, target: float) -> bool:
    return abs(value / target - 1.0) <= TOLERANCE


# ---- sizes against the measured medians ----------------------------------------------------


def test_realistic_medians_match_rubins_april_2026_packets(
    realistic: list[tuple[bytes, bytes, Record]],
) -> None:
    with_history = _with_history(realistic)
    assert len(with_history) > 300
    packet = statistics.median(len(value) for value, _ in with_history)
    cutouts = statistics.median(
        sum(len(record[name]) for name in CUTOUTS) for _, record in with_history
    )
    # The history's share of the wire message: the packet less the same packet without it.
    history = statistics.median(
        len(value) - len(wire.encode(dict(record, prvDiaSources=None), 1101))
        for value, record in with_history[::4]
    )
    sizes = {"packet_with_history": packet, "cutouts": cutouts, "prv_dia_sources": history}
    for name, size in sizes.items():
        assert _within(size, MEASURED_MEDIANS[name]), (name, size, MEASURED_MEDIANS[name])
    # Histories are far longer than the small profile's 30 sources.
    lengths = [len(record["prvDiaSources"]) for _, record in with_history]
    assert statistics.median(lengths) > 200


def test_realistic_solar_system_alerts(realistic: list[tuple[bytes, bytes, Record]]) -> None:
    solar = _solar(realistic)
    share = len(solar) / len(realistic)
    assert abs(share - REALISTIC.solar_system_fraction) < 0.05
    size = statistics.median(len(value) for _, value, _ in solar)
    assert _within(size, MEASURED_MEDIANS["solar_system"]), size
    for key, _, record in solar:
        source, ss_source, orbit = record["diaSource"], record["ssSource"], record["mpc_orbits"]
        # What Rubin sends for a known solar-system object: no diaObject, no history.
        assert record["prvDiaSources"] is None
        assert record["prvDiaForcedSources"] is None
        assert source["diaObjectId"] is None
        assert source["ssObjectId"] == ss_source["ssObjectId"]
        assert key == str(source["ssObjectId"]).encode("ascii")
        packed = orbit["packed_primary_provisional_designation"]
        assert source["ssObjectId"] == int.from_bytes(packed.encode("ascii"), "big")
        assert ss_source["designation"] == orbit["designation"]
        assert ss_source["diaSourceId"] == record["diaSourceId"]
        assert ss_source["elongation"] >= 60.0
        assert ss_source["ephOffset"] < 1.5  # arcsec
        assert 2.1 * (1 - 0.25) <= ss_source["helioRange"] <= 3.3 * 1.25
        assert abs(ss_source["eclBeta"]) < 60.0
        assert 0.0 < ss_source["ephRate"] < 1.5  # degrees per day: the main belt
        assert orbit["q"] == pytest.approx(orbit["a"] * (1 - orbit["e"]))
        assert all(record[name] for name in CUTOUTS)


# ---- validity ------------------------------------------------------------------------------


def test_realistic_packets_are_valid_wire_messages(
    realistic: list[tuple[bytes, bytes, Record]],
) -> None:
    schema = parsed_schema(1101)
    # fastavro's validation is slow on a year of history: every solar alert, a few others.
    checked = realistic[::20] + _solar(realistic)
    for key, value, record in checked:
        validate(record, schema, raise_errors=True)
        assert wire.encode(record, 1101) == value
        if record["diaObject"] is not None:
            assert key == str(record["diaObject"]["diaObjectId"]).encode("ascii")
    assert sum(record["diaObject"] is not None for _, _, record in checked) >= 15
    times = [record["diaSource"]["midpointMjdTai"] for _, _, record in realistic]
    assert times == sorted(times)


@pytest.mark.parametrize("version", ["10.0", "11.0"])
def test_realistic_packets_of_older_schemas_validate(version: str) -> None:
    schema_id = SchemaVersion.parse(version).schema_id
    simulator = AlertSimulator(schema=version, seed=5, profile="realistic", cutouts=False)
    solar = 0
    for index, record in enumerate(simulator.packets(40)):
        is_solar = record["diaObject"] is None
        # fastavro's validation is slow on a year of history: every solar alert, a few others.
        if is_solar or index % 8 == 0:
            validate(record, parsed_schema(schema_id), raise_errors=True)
        assert wire.decode(wire.encode(record, schema_id))[0] == schema_id
        solar += is_solar
    assert solar > 0


def test_realistic_histories_span_the_window(
    realistic: list[tuple[bytes, bytes, Record]],
) -> None:
    forced_days = REALISTIC.forced_days
    for _, record in _with_history(realistic):
        now = record["diaSource"]["midpointMjdTai"]
        previous = record["prvDiaSources"]
        times = [s["midpointMjdTai"] for s in previous]
        assert times == sorted(times)
        assert now - HISTORY_DAYS <= times[0]
        assert times[-1] < now
        assert record["diaObject"]["nDiaSources"] >= len(previous) + 1
        for forced in record["prvDiaForcedSources"] or []:
            assert now - forced_days <= forced["midpointMjdTai"] < now
    spans = [now - record["prvDiaSources"][0]["midpointMjdTai"]
             for _, record in _with_history(realistic)
             for now in [record["diaSource"]["midpointMjdTai"]]]
    assert max(spans) > 300.0  # objects carry most of their year


def test_realistic_is_deterministic() -> None:
    first = list(AlertSimulator(schema="11.1", seed=3, profile="realistic").encoded(25))
    second = list(AlertSimulator(schema="11.1", seed=3, profile="realistic").encoded(25))
    assert first == second


# ---- stamps ---------------------------------------------------------------------------------


def _ccd(blob: bytes) -> CCDData:
    with fits.open(io.BytesIO(blob)) as hdul:
        hdul.verify("exception")
        assert [hdu.name for hdu in hdul] == ["PRIMARY", "UNCERT"]
    return CCDData.read(io.BytesIO(blob), format="fits")


# astropy's WCS derives DATE-OBS from MJD-OBS and says so.
@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_realistic_stamps_are_rubin_ccddata_files(
    realistic: list[tuple[bytes, bytes, Record]],
) -> None:
    layout = REALISTIC.cutouts
    for _, _, record in realistic[:60]:
        source = record["diaSource"]
        side = min(max(source["bboxSize"], layout.min_side), layout.max_side)
        stamps = {name: _ccd(record[name]) for name in CUTOUTS}
        for stamp in stamps.values():
            assert stamp.shape == (side, side)
            assert stamp.unit == "nJy"
            assert isinstance(stamp.uncertainty, VarianceUncertainty)
            assert np.all(stamp.uncertainty.array > 0)
            assert np.all(np.isfinite(stamp.data))
            centre = stamp.wcs.pixel_to_world_values((side - 1) / 2, (side - 1) / 2)
            assert float(centre[0]) == pytest.approx(source["ra"], abs=1e-9)
            assert float(centre[1]) == pytest.approx(source["dec"], abs=1e-9)
            assert stamp.header["DIASRCID"] == source["diaSourceId"]
        science, template, difference = (stamps[name] for name in CUTOUTS)
        assert np.array_equal(science.data - template.data, difference.data)
        assert np.allclose(
            science.uncertainty.array + template.uncertainty.array,
            difference.uncertainty.array, rtol=1e-6,
        )
        # The template is deeper: its variance is lower everywhere.
        assert np.all(template.uncertainty.array < science.uncertainty.array)
        # The difference's noise is what its variance plane says, away from the source.
        edge = np.concatenate([difference.data[:5].ravel(), difference.data[-5:].ravel()])
        edge_var = np.concatenate([difference.uncertainty.array[:5].ravel(),
                                   difference.uncertainty.array[-5:].ravel()])
        pull = edge / np.sqrt(edge_var)
        assert 0.6 < float(np.std(pull)) < 1.5
        if abs(source["snr"]) > 20:
            middle = side // 2
            core = difference.data[middle - 3 : middle + 3, middle - 3 : middle + 3].sum()
            assert math.copysign(1.0, core) == math.copysign(1.0, source["psfFlux"])


# ---- the small profile ----------------------------------------------------------------------


# sha256 of the concatenated (key + value) pairs, computed on main before profiles existed
# (commit 7f49209). They depend on fastavro, numpy's generators and astropy's header
# formatting as pinned in constraints.txt; if a pin changes them, check that the change is
# theirs before writing the new digests here.
SMALL_DIGESTS = [
    ("11.1", 42, 15, {}, "5f2931c8511c7ac33fc9bd85cbd96e3ce089404ce52cf5eff525c10146b758d7"),
    ("11.1", 7, 60, {"n_objects": 20},
     "4c6ce70c9fc350c1eb46d0970107484369cd3ab60cfc71e374b398d1ee8d43cb"),
    ("10.0", 3, 40, {"cutouts": False},
     "54a0fe4fc2f46e17d9dbb479d488760b51d963a81339d137594a4f58b2ebad79"),
]


@pytest.mark.parametrize(("schema", "seed", "count", "options", "expected"), SMALL_DIGESTS)
def test_small_profile_bytes_are_unchanged(
    schema: str, seed: int, count: int, options: dict[str, Any], expected: str
) -> None:
    for extra in ({}, {"profile": "small"}, {"profile": PacketProfile.small}):
        digest = hashlib.sha256()
        simulator = AlertSimulator(schema=schema, seed=seed, **options, **extra)
        for key, value in simulator.encoded(count):
            digest.update(key + value)
        assert digest.hexdigest() == expected


def test_profile_names() -> None:
    assert AlertSimulator(schema="11.1").profile.name is PacketProfile.small
    assert profile_named("realistic") is REALISTIC
    assert profile_named(REALISTIC) is REALISTIC
    with pytest.raises(ValueError, match="known: small, realistic"):
        profile_named("huge")
    with pytest.raises(ValueError, match="unknown packet profile"):
        AlertSimulator(schema="11.1", profile="huge")
