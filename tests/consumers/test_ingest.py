"""Ingest scenarios, run unchanged over the embedded backend and the real services."""

from __future__ import annotations

import math
import threading

import pytest

from broker.domain.alerts import from_rubin
from broker.exceptions import ServiceUnavailableError
from broker.simulator import AlertSimulator
from broker.streaming import lanner_schemas, wire
from broker.streaming.replay import iter_alert_files
from tests.support.backends import Harness
from tests.support.data import ZTF_SAMPLES


def _simulated(count: int, seed: int) -> list[tuple[bytes, bytes]]:
    return list(AlertSimulator(schema="11.1", seed=seed).encoded(count))


def _produce_all(harness: Harness, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    for key, value in messages:
        harness.produce(topic, value, key=key)
    harness.flush()


def _expected_sources(messages: list[tuple[bytes, bytes]]) -> tuple[set[int], set[int]]:
    """Alert ids, and every detection id the packets carry (history included)."""
    alerts, detections = set(), set()
    for _, value in messages:
        record = wire.decode(value)[1]
        alerts.add(record["diaSourceId"])
        detections.add(record["diaSource"]["diaSourceId"])
        detections.update(p["diaSourceId"] for p in record["prvDiaSources"] or ())
    return alerts, detections


def _snapshot(harness: Harness, object_ids: list[str]) -> dict:
    return {
        "lightcurves": dict(harness.lightcurves.counts()),
        "catalog": dict(harness.catalog.counts()),
        "objects": [harness.catalog.get_object(o) for o in object_ids],
        "rows": [harness.catalog.alert_rows(o) for o in object_ids],
        "curves": [harness.lightcurves.lightcurve(o) for o in object_ids],
    }


def test_same_packets_twice_give_the_same_rows(harness: Harness) -> None:
    messages = _simulated(1000, seed=21)
    alert_ids, detection_ids = _expected_sources(messages)
    _produce_all(harness, harness.topics.lsst, messages)
    first = harness.ingest_once()
    assert first.archived == 1000
    assert first.dead_lettered == 0

    object_ids = sorted({key.decode() for key, _ in messages})
    before = _snapshot(harness, object_ids[:40])
    assert before["lightcurves"]["packets"] == len(alert_ids)
    assert before["catalog"]["objects"] == len(object_ids)
    # Every detection the packets carry is stored once, history included.
    assert before["catalog"]["alert_rows"] == len(detection_ids)
    assert before["lightcurves"]["detections"] == len(detection_ids)
    for obj, rows in zip(before["objects"], before["rows"], strict=True):
        assert obj["n_detections"] == len(rows)
        assert obj["last_mjd"] == max(r["mjd"] for r in rows)

    # The same packets again, at new offsets (a replay): nothing changes.
    _produce_all(harness, harness.topics.lsst, messages)
    second = harness.ingest_once()
    assert second.archived == 1000
    assert _snapshot(harness, object_ids[:40]) == before

    ingested = harness.outputs(harness.topics.ingested)
    assert len(ingested) == 2000
    record = lanner_schemas.decode("ingested", ingested[0].value)
    assert record["alert_id"] in alert_ids
    assert record["object_id"] in object_ids
    assert record["topic"] == harness.topics.lsst


def _bad_packets(good: bytes) -> dict[str, bytes]:
    schema_id, record = wire.decode(good)

    def edited(**changes: object) -> bytes:
        source = {**record["diaSource"], **changes}
        return wire.encode({**record, "diaSource": source}, schema_id)

    return {
        "bad_magic_byte": b"\x01" + good[1:],
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "unknown_schema_id": wire.write_header(4242) + good[5:],
        "corrupt_body": wire.write_header(schema_id) + b"\x02\x7e" + b"\x00" * 64,
        "bad_coordinates": edited(ra=math.nan),
        "dec_out_of_range": edited(dec=91.5),
        "negative_error": edited(psfFluxErr=-3.0),
        "missing_id": edited(diaSourceId=0),
    }


EXPECTED_REASON = {
    "bad_magic_byte": "bad_magic_byte",
    "truncated": "truncated",
    "empty": "truncated",
    "unknown_schema_id": "unknown_schema_id",
    "corrupt_body": "corrupt_body",
    "bad_coordinates": "bad_coordinates",
    "dec_out_of_range": "bad_coordinates",
    "negative_error": "negative_error",
    "missing_id": "missing_id",
}


def test_bad_packets_reach_the_dlq_and_good_ones_around_them_are_archived(
    harness: Harness,
) -> None:
    good = _simulated(60, seed=5)
    bad = _bad_packets(good[-1][1])
    stream = list(good[:30])
    for name, value in bad.items():
        stream.append((name.encode(), value))
    stream += good[30:59]
    _produce_all(harness, harness.topics.lsst, stream)
    # A ZTF packet that is not an Avro container, on the ZTF topic.
    harness.produce(harness.topics.ztf, b"not an avro container at all", key=b"junk")
    harness.flush()

    report = harness.ingest_once()
    assert report.archived == 59
    assert report.dead_lettered == len(bad) + 1

    dead = harness.outputs(harness.topics.dlq)
    assert len(dead) == len(bad) + 1
    by_key = {m.key: m for m in dead}
    for name, value in bad.items():
        message = by_key[name.encode()]
        assert message.value == value, name  # the original bytes, untouched
        assert message.headers["reason"].decode() == EXPECTED_REASON[name], name
        assert message.headers["topic"].decode() == harness.topics.lsst
        assert int(message.headers["offset"]) >= 0
        assert int(message.headers["partition"]) >= 0
        assert message.headers["error"]
    assert by_key[b"junk"].headers["topic"].decode() == harness.topics.ztf
    assert by_key[b"junk"].headers["reason"].decode() == "not_avro_container"
    assert harness.lightcurves.counts()["packets"] == 59


def test_real_ztf_packets_are_archived(harness: Harness) -> None:
    files = list(iter_alert_files(ZTF_SAMPLES))
    assert len(files) == 53
    for _, value, key in files:
        harness.produce(harness.topics.ztf, value, key=key)
    harness.flush()
    report = harness.ingest_once()
    assert report.archived == 53
    assert report.dead_lettered == 0

    obj = harness.catalog.get_object("ZTF18abmmoot")
    assert obj is not None
    assert obj["survey"] == "ztf"
    assert obj["ra"] == pytest.approx(304.64456, abs=2e-3)
    assert obj["dec"] == pytest.approx(33.98762, abs=2e-3)
    curve = harness.lightcurves.lightcurve("ZTF18abmmoot")
    assert [r["mjd"] for r in curve] == sorted(r["mjd"] for r in curve)
    assert curve[-1]["source_id"] == 1628364324215010017
    assert curve[-1]["psf_flux"] < 0  # isdiffpos 'f': a fading source
    assert obj["n_detections"] == len(curve)
    cutout = harness.lightcurves.cutout(1628364324215010017, "science")
    assert cutout is not None
    assert cutout[:2] == b"\x1f\x8b"  # ZTF ships gzip-compressed FITS stamps
    # A cone around the exposure's field finds its objects.
    found = harness.catalog.cone(197.6, 7.3, 0.5, 1000)
    assert {r["object_id"] for r in found} >= {"ZTF20aabaesm", "ZTF20aabaesn"}
    assert [r["distance_arcsec"] for r in found] == sorted(r["distance_arcsec"] for r in found)


def test_every_packet_reads_back_byte_for_byte(harness: Harness) -> None:
    """Stored packets (Rubin ones without their cutouts, on Cassandra) come back unchanged."""
    from broker.streaming.ztf import decode_container

    originals: dict[int, bytes] = {}
    for version, seed in (("11.1", 41), ("7.0", 42), ("4.0", 43)):
        simulator = AlertSimulator(schema=version, seed=seed)
        records = list(simulator.packets(20))
        records[0]["cutoutScience"] = None  # one stamp missing
        records[1].update(cutoutDifference=None, cutoutScience=None, cutoutTemplate=None)
        records[2]["cutoutTemplate"] = b""  # present but empty: kept whole
        for record in records:
            value = wire.encode(record, simulator.schema_id)
            alert = from_rubin(record, simulator.schema_id, value)
            harness.produce(harness.topics.lsst, value, key=alert.object_id.encode())
            originals[alert.alert_id] = value
    for _, value, key in list(iter_alert_files(ZTF_SAMPLES))[:10]:
        harness.produce(harness.topics.ztf, value, key=key)
        originals[decode_container(value)[1]["candid"]] = value
    harness.flush()
    report = harness.ingest_once()
    assert report.archived == len(originals) == 70
    for alert_id, value in originals.items():
        assert harness.lightcurves.packet(alert_id) == value

    if harness.name == "services":
        from broker.exceptions import ArchiveIntegrityError

        session = harness.lightcurves.connection.session()
        table = f"{harness.lightcurves.connection.keyspace}.packets"
        rows = {r.alert_id: r for r in session.execute(
            f"SELECT alert_id, alert_schema, data, stripped FROM {table}")}
        split = [a for a, r in rows.items() if r.stripped]
        # Every Rubin packet with a stamp is stored split, and only those.
        assert len(split) == 3 * 18
        assert all(rows[a].alert_schema.startswith("lsst:") for a in split)
        assert sum(len(r.data) for r in rows.values()) < 0.6 * sum(
            len(v) for v in originals.values())
        # A stamp deleted behind the archive's back: a clear error, never wrong bytes.
        victim = split[0]
        session.execute(f"DELETE FROM {harness.lightcurves.connection.keyspace}.cutouts "
                        "WHERE source_id = %s AND kind = %s", (victim, rows[victim].stripped[0]))
        with pytest.raises(ArchiveIntegrityError, match="cannot be rebuilt"):
            harness.lightcurves.packet(victim)


class _Flaky:
    """Wraps a store: the first ``failures`` writes raise as if the store were down."""

    def __init__(self, store: object, failures: int) -> None:
        self._store = store
        self.failures = failures
        self.calls = 0

    def write(self, *args: object) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ServiceUnavailableError("store is down (test)")
        self._store.write(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


def test_a_store_that_is_down_is_retried_without_committing(harness: Harness) -> None:
    from consumers.stage import Backoff

    messages = _simulated(50, seed=8)
    _produce_all(harness, harness.topics.lsst, messages)
    flaky = _Flaky(harness.catalog, failures=3)
    report = harness.ingest_once(group="retry-group", catalog=flaky,
                                 backoff=Backoff(first=0.01, most=0.05))
    assert flaky.calls == 4  # three failures, then the same batch again
    assert report.archived == 50
    assert harness.catalog.counts()["objects"] == len({key for key, _ in messages})
    # Offsets were committed after the successful retry, not before: a new consumer of the
    # same group finds nothing left to do.
    again = harness.ingest_once(group="retry-group")
    assert again.consumed == 0


def test_two_consumers_in_one_group_archive_each_alert_once(harness: Harness) -> None:
    messages = _simulated(600, seed=13)
    alert_ids, detection_ids = _expected_sources(messages)
    _produce_all(harness, harness.topics.lsst, messages)
    first = harness.stage(group="shared-group")
    second = harness.stage(group="shared-group")
    reports = {}

    def run(name: str, stage: object) -> None:
        reports[name] = stage.run(once=True, idle_polls=5)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in
               (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    first.source.close()
    second.source.close()
    assert sum(r.archived for r in reports.values()) >= len(alert_ids)
    assert harness.lightcurves.counts()["packets"] == len(alert_ids)
    assert harness.catalog.counts()["alert_rows"] == len(detection_ids)
    assert harness.lightcurves.counts()["detections"] == len(detection_ids)


def test_an_older_packet_after_a_newer_one_changes_nothing(harness: Harness) -> None:
    simulator = AlertSimulator(schema="11.1", seed=3, n_objects=1)
    packets = list(simulator.encoded(6))
    newest_first = [packets[-1], *packets[:-1]]
    _produce_all(harness, harness.topics.lsst, [packets[-1]])
    harness.ingest_once()
    object_id = packets[-1][0].decode()
    after_newest = harness.catalog.get_object(object_id)
    _produce_all(harness, harness.topics.lsst, newest_first[1:])
    harness.ingest_once()
    after_all = harness.catalog.get_object(object_id)
    # Every older detection was already stored from the newest packet's history.
    assert after_all == after_newest
    newest = wire.decode(packets[-1][1])[1]
    assert after_all["n_detections"] == 1 + len(newest["prvDiaSources"] or ())


def test_the_built_stage_reads_the_settings(tmp_path) -> None:
    """`consumers.ingest.build` gives ``lanner ingest`` its topics, batch and stores from the
    factory, and an argument given replaces the setting."""
    from broker.config import Backend, Settings
    from broker.factory import Factory
    from consumers import ingest

    settings = Settings(backend=Backend.embedded, state_dir=tmp_path, topic_alerts_lsst="in.a",
                        topic_alerts_ztf="in.b", topic_ingested="out", topic_dlq="dead",
                        ingest_batch_size=7, ingest_poll_timeout_s=0.3)
    factory = Factory(settings)
    try:
        stage = ingest.build(factory)
        assert (stage.topics.inputs, stage.topics.ingested, stage.topics.dlq) == (
            ["in.a", "in.b"], "out", "dead")
        assert (stage.batch_size, stage.poll_timeout) == (7, 0.3)
        assert (stage.lightcurves, stage.catalog) == (factory.lightcurves, factory.catalog)
        assert ingest.build(factory, poll_timeout=0.05).poll_timeout == 0.05
    finally:
        factory.close()
