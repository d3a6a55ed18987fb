"""The synthetic Rubin alert stream: schema validity, ids and histories, realism, determinism."""

from __future__ import annotations

import hashlib
import io
import itertools
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from fastavro.validation import validate

from broker.constants import MAX_PRV_SOURCES, NJY_AB_ZEROPOINT, RUBIN_BANDS
from broker.simulator import CUTOUT_SIZE, HISTORY_DAYS, AlertSimulator
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion, available_versions, parsed_schema
from tests.support.data import REPO_ROOT

Record = dict[str, Any]
START_MJD = 61000.0


def _mag(flux: float) -> float:
    return -2.5 * math.log10(flux) + NJY_AB_ZEROPOINT


def _prv(record: Record) -> list[Record]:
    return record["prvDiaSources"] or []


def _forced(record: Record) -> list[Record]:
    return record["prvDiaForcedSources"] or []


@pytest.fixture(scope="module")
def stream() -> list[Record]:
    """A v11.1 stream small enough in objects that histories grow inside it."""
    simulator = AlertSimulator(schema="11.1", seed=11, n_objects=40, start_mjd=START_MJD)
    return list(simulator.packets(600))


@pytest.fixture(scope="module")
def by_object(stream: list[Record]) -> dict[int, list[Record]]:
    grouped: dict[int, list[Record]] = defaultdict(list)
    for record in stream:
        grouped[record["diaObject"]["diaObjectId"]].append(record)
    return grouped


# ---- schema validity ------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "count"), [("10.0", 60), ("11.0", 60), ("11.1", 300)])
def test_packets_validate_encode_and_decode(version: str, count: int) -> None:
    schema_id = SchemaVersion.parse(version).schema_id
    simulator = AlertSimulator(schema=version, seed=1)
    seen = 0
    for record in simulator.packets(count):
        validate(record, parsed_schema(schema_id), raise_errors=True)
        message = wire.encode(record, schema_id)
        decoded_id, decoded = wire.decode(message)
        assert decoded_id == schema_id
        assert decoded["diaSourceId"] == record["diaSourceId"]
        assert decoded["diaSource"]["psfFlux"] == pytest.approx(
            record["diaSource"]["psfFlux"], rel=1e-6
        )
        assert wire.encode(decoded, schema_id) == message
        seen += 1
    assert seen == count


def test_every_shipped_schema_version_validates() -> None:
    versions = available_versions()
    assert SchemaVersion(11, 1) in versions
    for version in versions:
        simulator = AlertSimulator(schema=version, seed=2, cutouts=False)
        for record in simulator.packets(8):
            validate(record, parsed_schema(version.schema_id), raise_errors=True)
            assert wire.decode(wire.encode(record, version.schema_id))[0] == version.schema_id


def test_encoded_pairs_are_wire_messages_keyed_by_object() -> None:
    records = list(AlertSimulator(schema="11.1", seed=8).packets(30))
    pairs = list(AlertSimulator(schema="11.1", seed=8).encoded(30))
    for record, (key, value) in zip(records, pairs, strict=True):
        assert key == str(record["diaObject"]["diaObjectId"]).encode("ascii")
        assert value == wire.encode(record, 1101)
        assert wire.decode(value)[1]["diaSourceId"] == record["diaSourceId"]


# ---- ids and histories ----------------------------------------------------------------------


def test_alert_ids_match_the_diasource(stream: list[Record]) -> None:
    for record in stream:
        source, dia_object = record["diaSource"], record["diaObject"]
        assert record["diaSourceId"] == source["diaSourceId"]
        assert source["diaObjectId"] == dia_object["diaObjectId"]
        assert 0 < source["diaSourceId"] < 2**63
        assert 0 < dia_object["diaObjectId"] < 2**63


def test_diasource_ids_are_unique_across_the_stream(stream: list[Record]) -> None:
    source_ids = [r["diaSourceId"] for r in stream]
    object_ids = {r["diaObject"]["diaObjectId"] for r in stream}
    assert len(set(source_ids)) == len(source_ids)
    assert not object_ids & set(source_ids)


def test_objects_are_revisited_with_a_stable_id_and_position(
    by_object: dict[int, list[Record]],
) -> None:
    revisited = [records for records in by_object.values() if len(records) >= 5]
    assert len(revisited) >= 10
    for records in by_object.values():
        first = records[0]["diaSource"]
        for record in records:
            source = record["diaSource"]
            assert source["diaObjectId"] == first["diaObjectId"]
            offset = math.hypot(
                (source["ra"] - first["ra"]) * math.cos(math.radians(first["dec"])),
                source["dec"] - first["dec"],
            )
            assert offset * 3600.0 < 1.0


def test_previous_sources_belong_to_the_object_and_are_earlier(stream: list[Record]) -> None:
    # Rubin's contract: up to 30 previous sources from the last 12 months.
    assert (HISTORY_DAYS, MAX_PRV_SOURCES) == (365.0, 30)
    some_full = False
    for record in stream:
        now = record["diaSource"]["midpointMjdTai"]
        previous = _prv(record)
        assert len(previous) <= MAX_PRV_SOURCES
        some_full |= len(previous) == MAX_PRV_SOURCES
        times = [s["midpointMjdTai"] for s in previous]
        assert times == sorted(times)
        assert len({s["diaSourceId"] for s in previous}) == len(previous)
        for source in previous:
            assert source["diaObjectId"] == record["diaObject"]["diaObjectId"]
            assert source["diaSourceId"] != record["diaSourceId"]
            assert now - HISTORY_DAYS <= source["midpointMjdTai"] < now
    assert some_full


def test_previous_sources_are_exactly_the_recent_detections(
    by_object: dict[int, list[Record]],
) -> None:
    checked = 0
    for records in by_object.values():
        for before, after in itertools.pairwise(records):
            now = after["diaSource"]["midpointMjdTai"]
            known = [*_prv(before), before["diaSource"]]
            expected = [s for s in known if s["midpointMjdTai"] >= now - HISTORY_DAYS]
            expected = expected[-MAX_PRV_SOURCES:]
            assert _prv(after) == expected
            checked += 1
    assert checked > 400


def test_forced_sources_are_the_objects_earlier_visits(
    by_object: dict[int, list[Record]],
) -> None:
    contents: dict[int, Record] = {}
    for dia_object_id, records in by_object.items():
        for record in records:
            now = record["diaSource"]["midpointMjdTai"]
            forced = _forced(record)
            assert len({f["diaForcedSourceId"] for f in forced}) == len(forced)
            for measurement in forced:
                assert measurement["diaObjectId"] == dia_object_id
                assert now - HISTORY_DAYS <= measurement["midpointMjdTai"] < now
                assert measurement["psfFluxErr"] > 0
                assert measurement["scienceFluxErr"] > 0
                # A measurement repeated in later packets is the same record, under one id.
                assert contents.setdefault(measurement["diaForcedSourceId"], measurement) == (
                    measurement
                )
        for before, after in itertools.pairwise(records):
            # The visit that detected `before` was also force-measured, and shows up afterwards.
            visits = {(f["visit"], f["midpointMjdTai"]) for f in _forced(after)}
            source = before["diaSource"]
            assert (source["visit"], source["midpointMjdTai"]) in visits
    assert len(contents) > 1000


def test_dia_object_summarises_the_history(stream: list[Record]) -> None:
    complete = 0
    for record in stream:
        source, dia_object = record["diaSource"], record["diaObject"]
        history = [*_prv(record), source]
        assert dia_object["nDiaSources"] >= len(history)
        per_band = sum(dia_object[f"{b}_psfFluxNdata"] for b in RUBIN_BANDS)
        assert per_band == dia_object["nDiaSources"]
        assert dia_object["lastDiaSourceMjdTai"] == source["midpointMjdTai"]
        assert dia_object["firstDiaSourceMjdTai"] <= history[0]["midpointMjdTai"]
        assert dia_object["validityStartMjdTai"] == source["timeProcessedMjdTai"]
        offset = math.hypot(
            (dia_object["ra"] - source["ra"]) * math.cos(math.radians(source["dec"])),
            dia_object["dec"] - source["dec"],
        )
        assert offset * 3600.0 < 0.5
        if dia_object["nDiaSources"] != len(history):
            continue
        # The whole history is in the packet: the summaries can be recomputed exactly.
        complete += 1
        assert dia_object["firstDiaSourceMjdTai"] == history[0]["midpointMjdTai"]
        for band in RUBIN_BANDS:
            fluxes = np.array([s["psfFlux"] for s in history if s["band"] == band])
            errors = np.array([s["psfFluxErr"] for s in history if s["band"] == band])
            assert dia_object[f"{band}_psfFluxNdata"] == len(fluxes)
            if not len(fluxes):
                assert dia_object[f"{band}_psfFluxMean"] is None
                continue
            weights = errors**-2
            mean = float(np.sum(weights * fluxes) / np.sum(weights))
            assert dia_object[f"{band}_psfFluxMean"] == pytest.approx(mean, rel=1e-9)
            assert dia_object[f"{band}_psfFluxMeanErr"] == pytest.approx(
                float(np.sum(weights) ** -0.5), rel=1e-9
            )
            assert dia_object[f"{band}_psfFluxMin"] == fluxes.min()
            assert dia_object[f"{band}_psfFluxMax"] == fluxes.max()
            if len(fluxes) > 1:
                sigma = float(np.std(fluxes, ddof=1))
                assert dia_object[f"{band}_psfFluxSigma"] == pytest.approx(sigma, rel=1e-6)
    assert complete > 50


def test_a_stream_without_past_starts_every_object_afresh() -> None:
    simulator = AlertSimulator(schema="11.1", seed=3, n_objects=10, history_days=0.0)
    seen: set[int] = set()
    for record in simulator.packets(80):
        dia_object = record["diaObject"]
        if dia_object["diaObjectId"] not in seen:
            seen.add(dia_object["diaObjectId"])
            assert record["prvDiaSources"] is None
            assert dia_object["nDiaSources"] == 1
        else:
            assert dia_object["nDiaSources"] == len(_prv(record)) + 1
    assert len(seen) >= 5


def test_population_size() -> None:
    default = AlertSimulator(schema="11.1", seed=5, cutouts=False)
    assert default.n_objects is None
    records = list(default.packets(100))
    assert default.n_objects == 20
    assert len({r["diaObject"]["diaObjectId"] for r in records}) <= 20 + 5

    few = AlertSimulator(schema="11.1", seed=5, n_objects=3, cutouts=False)
    ids = Counter(r["diaObject"]["diaObjectId"] for r in few.packets(60))
    # Three live objects; a supernova that fades is replaced by a new one.
    assert 1 <= len(ids) <= 6
    assert max(ids.values()) >= 10


def test_later_calls_continue_the_stream() -> None:
    whole = list(AlertSimulator(schema="11.1", seed=6, n_objects=8).encoded(40))
    simulator = AlertSimulator(schema="11.1", seed=6, n_objects=8)
    parts = list(simulator.encoded(15)) + list(simulator.encoded(25))
    assert parts == whole


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_objects"):
        AlertSimulator(schema="11.1", n_objects=0)
    with pytest.raises(ValueError, match="dec_range"):
        AlertSimulator(schema="11.1", dec_range=(10.0, -10.0))
    with pytest.raises(ValueError, match="count"):
        list(AlertSimulator(schema="11.1").packets(-1))


def test_packets_are_independent_copies() -> None:
    simulator = AlertSimulator(schema="11.1", seed=9, n_objects=1, cutouts=False)
    first = next(simulator.packets(1))
    first["diaSource"]["psfFlux"] = -1.0
    later = list(simulator.packets(3))
    assert all(s["psfFlux"] != -1.0 for r in later for s in _prv(r))


# ---- determinism ----------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    first = list(AlertSimulator(schema="11.1", seed=42).encoded(50))
    second = list(AlertSimulator(schema="11.1", seed=42).encoded(50))
    assert first == second


def test_different_seeds_give_different_packets() -> None:
    first = list(AlertSimulator(schema="11.1", seed=42).encoded(20))
    second = list(AlertSimulator(schema="11.1", seed=43).encoded(20))
    assert all(a[1] != b[1] for a, b in zip(first, second, strict=True))
    assert not {k for k, _ in first} & {k for k, _ in second}


def test_bytes_do_not_depend_on_the_process() -> None:
    code = (
        "import hashlib\n"
        "from broker.simulator import AlertSimulator\n"
        "digest = hashlib.sha256()\n"
        "for key, value in AlertSimulator(schema='11.1', seed=42).encoded(15):\n"
        "    digest.update(key + value)\n"
        "print(digest.hexdigest())"
    )
    expected = hashlib.sha256()
    for key, value in AlertSimulator(schema="11.1", seed=42).encoded(15):
        expected.update(key + value)
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        )
        assert result.stdout.strip() == expected.hexdigest()


def test_unseeded_simulators_differ_but_report_their_seed() -> None:
    first = AlertSimulator(schema="11.1", cutouts=False)
    second = AlertSimulator(schema="11.1", cutouts=False)
    assert first.seed_used != second.seed_used
    replay = AlertSimulator(schema="11.1", seed=first.seed_used, cutouts=False)
    assert list(first.encoded(5)) == list(replay.encoded(5))


# ---- cutouts --------------------------------------------------------------------------------


def _open(blob: bytes) -> fits.HDUList:
    hdul = fits.open(io.BytesIO(blob))
    hdul.verify("exception")
    return hdul


# astropy's WCS derives DATE-OBS from MJD-OBS and says so.
@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_cutouts_are_fits_stamps_with_a_wcs_on_the_source(stream: list[Record]) -> None:
    for record in stream[:40]:
        source = record["diaSource"]
        images = {}
        for kind in ("Science", "Template", "Difference"):
            with _open(record[f"cutout{kind}"]) as hdul:
                assert len(hdul) == 1
                header, data = hdul[0].header, hdul[0].data
                assert data.shape == (CUTOUT_SIZE, CUTOUT_SIZE)
                assert data.dtype == np.dtype(">f4")
                assert np.all(np.isfinite(data))
                assert (header["CTYPE1"], header["CTYPE2"]) == ("RA---TAN", "DEC--TAN")
                assert header["CDELT2"] * 3600.0 == pytest.approx(0.2)
                assert header["CDELT1"] * 3600.0 == pytest.approx(-0.2)
                assert header["BAND"] == source["band"]
                assert header["DIASRCID"] == source["diaSourceId"]
                assert "DATE" not in header
                centre = WCS(header).pixel_to_world_values(
                    (CUTOUT_SIZE - 1) / 2.0, (CUTOUT_SIZE - 1) / 2.0
                )
                assert float(centre[0]) == pytest.approx(source["ra"], abs=1e-9)
                assert float(centre[1]) == pytest.approx(source["dec"], abs=1e-9)
                images[kind] = data.astype(np.float32)
        with _open(record["cutoutScience"]) as hdul:
            assert hdul[0].header["MJD-OBS"] == pytest.approx(source["midpointMjdTai"], abs=1e-9)
        assert np.array_equal(images["Science"] - images["Template"], images["Difference"])


def test_difference_stamp_shows_the_detection(stream: list[Record]) -> None:
    bright = [r for r in stream if r["diaSource"]["snr"] > 20]
    assert len(bright) > 20
    for record in bright:
        with _open(record["cutoutDifference"]) as hdul:
            data = hdul[0].data.astype(np.float64)
        centre = data[12:18, 12:18].sum()
        flux = record["diaSource"]["psfFlux"]
        assert math.copysign(1.0, centre) == math.copysign(1.0, flux)
        assert abs(centre) > 0.3 * abs(flux)


def test_packets_without_cutouts_are_small() -> None:
    with_cutouts = list(AlertSimulator(schema="11.1", seed=12).encoded(20))
    without = list(AlertSimulator(schema="11.1", seed=12, cutouts=False).encoded(20))
    for (_, full), (_, bare) in zip(with_cutouts, without, strict=True):
        record = wire.decode(bare)[1]
        assert record["cutoutScience"] is None
        assert record["cutoutTemplate"] is None
        assert record["cutoutDifference"] is None
        # Each stamp: one 2880-byte header block, two data blocks, and a 3-byte Avro length.
        assert len(full) - len(bare) == 3 * (8640 + 3)
    sizes = sorted(len(value) for _, value in with_cutouts)
    assert 20_000 < sizes[len(sizes) // 2] < 100_000


# ---- realism --------------------------------------------------------------------------------


def test_errors_are_positive_and_snr_is_flux_over_error(stream: list[Record]) -> None:
    for record in stream:
        for source in [*_prv(record), record["diaSource"]]:
            for name in ("psfFluxErr", "scienceFluxErr", "apFluxErr", "templateFluxErr"):
                assert source[name] > 0, name
            assert 0 < source["raErr"] * 3600.0 < 0.5
            assert 0 < source["decErr"] * 3600.0 < 0.5
            assert source["snr"] == pytest.approx(abs(source["psfFlux"]) / source["psfFluxErr"])
            assert source["snr"] >= 5.0
            assert source["isNegative"] == (source["psfFlux"] < 0)


def test_fluxes_and_magnitudes_are_realistic(stream: list[Record]) -> None:
    sources = [r["diaSource"] for r in stream]
    difference_mags = [_mag(abs(s["psfFlux"])) for s in sources]
    assert min(difference_mags) > 15.0
    assert max(difference_mags) < 26.0
    assert 20.0 < float(np.median(difference_mags)) < 24.5
    total = [s["scienceFlux"] for s in sources]
    assert sum(f > 0 for f in total) / len(total) > 0.95
    assert min(_mag(f) for f in total if f > 0) > 15.0
    # Variables fade below their template as well as brighten.
    negative = sum(s["isNegative"] for s in sources) / len(sources)
    assert 0.02 < negative < 0.6
    # Artefacts have low reliability, real sources high.
    reliability = np.array([s["reliability"] for s in sources])
    assert np.all((reliability >= 0) & (reliability <= 1))
    assert 0.5 < np.mean(reliability > 0.6) < 1.0


def test_cadence_bands_and_visits(stream: list[Record], by_object: dict[int, list[Record]]) -> None:
    sources = [r["diaSource"] for r in stream]
    bands = Counter(s["band"] for s in sources)
    assert set(bands) <= set(RUBIN_BANDS)
    assert len(bands) >= 5
    times = [s["midpointMjdTai"] for s in sources]
    assert times == sorted(times)
    assert times[0] >= START_MJD
    for source in sources:
        assert 0 <= source["detector"] <= 188
        assert 0.0 <= source["x"] <= 4072.0
        assert 0.0 <= source["y"] <= 4000.0
        assert source["exposureTime"] in (30.0, 38.0)
        # LSSTCam visit ids: dayObs (UTC-12h) * 100000 + sequence number.
        day_obs, seq = divmod(source["visit"], 100000)
        assert 20250101 < day_obs < 20300101
        assert 0 < seq < 5000
        assert source["timeProcessedMjdTai"] > source["midpointMjdTai"]
        assert (source["timeProcessedMjdTai"] - source["midpointMjdTai"]) * 86400.0 < 600.0
        # At night in Chile.
        assert 0.0 <= source["midpointMjdTai"] % 1.0 < 0.4
    multi_band = [rs for rs in by_object.values() if len({r["diaSource"]["band"] for r in rs}) > 1]
    assert len(multi_band) >= 10


def test_sky_is_uniform_over_the_southern_footprint() -> None:
    simulator = AlertSimulator(schema="11.1", seed=13, cutouts=False, history_days=0.0)
    objects = {}
    for record in simulator.packets(3000):
        objects[record["diaObject"]["diaObjectId"]] = record["diaObject"]
    assert len(objects) > 300
    ra = np.array([o["ra"] for o in objects.values()])
    dec = np.array([o["dec"] for o in objects.values()])
    assert np.all((ra >= 0) & (ra < 360))
    assert np.all((dec >= -90) & (dec <= 30))
    # Uniform on the sphere: sin(dec) uniform on [-1, 0.5], so a third of objects lie north of 0.
    assert np.mean(dec > 0) == pytest.approx(1 / 3, abs=0.08)
    assert np.mean(ra < 180) == pytest.approx(0.5, abs=0.08)


def test_simulator_imports_no_driver() -> None:
    code = (
        "import sys, broker.simulator\n"
        "bad = [m for m in ('confluent_kafka', 'cassandra', 'pymysql') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == ""
