# Over 500 lines: the object-catalog and light-curve contract is one suite, run over both backends.
"""The contract of the archive stores, run unchanged over each backend (embedded SQLite files,
and MariaDB with two shards plus Cassandra): idempotent writes, exact object rows, placement,
cone search against brute force, bad input."""

from __future__ import annotations

import dataclasses
import math
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker.domain.alerts import Alert, Detection, ForcedMeasurement, Survey, from_rubin
from broker.domain.archive import BANDS, ArchiveBatch, Seen, plan
from broker.domain.sky import Chunker, angular_separation_deg, hpx29
from broker.exceptions import ServiceUnavailableError, TransientError
from broker.simulator import AlertSimulator
from broker.storage.archive import DETECTION_COLUMNS, FORCED_COLUMNS, OBJECT_COLUMNS
from broker.storage.catalog import ChunkedCatalog, LayoutMismatchError
from broker.storage.shards import SQLiteShards
from broker.storage.sqlite import SQLiteLightCurves
from broker.storage.stores import LightCurveArchive, ObjectCatalog, Origin
from broker.streaming import wire
from tests.storage.conftest import CHUNKER, Archive, mariadb_shards, sqlite_archive

# ---- helpers --------------------------------------------------------------------------------


def _packet_bytes(alert_id: int) -> bytes:
    return f"packet of {alert_id}".encode()


def _simulated(count: int, *, seed: int, **options: Any) -> list[Alert]:
    simulator = AlertSimulator(schema="11.1", seed=seed, **options)
    alerts = []
    for record in simulator.packets(count):
        alert_id = record["diaSource"]["diaSourceId"]
        alerts.append(from_rubin(record, 1101, _packet_bytes(alert_id)))
    return alerts


def _origins(alerts: Sequence[Alert], start: int = 0) -> dict[int, Origin]:
    return {a.alert_id: Origin("alerts.lsst", 0, start + i) for i, a in enumerate(alerts)}


def _ingest(archive: Archive, alerts: Sequence[Alert],
            origins: Mapping[int, Origin] | None = None) -> ArchiveBatch:
    """What the ingest stage does with one batch."""
    batch = plan(alerts, archive.catalog.seen({a.object_id for a in alerts}), CHUNKER)
    archive.lightcurves.write(batch, origins if origins is not None else _origins(alerts))
    archive.catalog.write(batch)
    return batch


def _ingest_in_batches(archive: Archive, alerts: Sequence[Alert], size: int) -> None:
    for start in range(0, len(alerts), size):
        part = alerts[start:start + size]
        _ingest(archive, part, _origins(part, start))


def _hand_alert(object_id: str, source_id: int, ra: float, dec: float, mjd: float,
                band: str = "r", flux: float = 1000.0,
                history: Sequence[Detection] = ()) -> Alert:
    detection = Detection(source_id=source_id, object_id=object_id, mjd=mjd, ra=ra, dec=dec,
                          band=band, psf_flux=flux, psf_flux_err=flux / 20.0)
    return Alert(survey=Survey.lsst, schema="lsst:1101", detection=detection,
                 history=tuple(history), packet=_packet_bytes(source_id))


@pytest.fixture(scope="module")
def stream() -> list[Alert]:
    """1,000 packets of 60 objects: histories grow within the stream."""
    return _simulated(1000, seed=41, n_objects=60)


# ---- layout ---------------------------------------------------------------------------------


def _indexes(archive: Archive, table: str) -> list[list[str]]:
    """The columns of each index of a table on shard 0."""
    def work(cursor: Any) -> list[list[str]]:
        if archive.name == "embedded":
            cursor.execute(f"PRAGMA index_list({table})")
            out = []
            for index in cursor.fetchall():
                cursor.execute(f"PRAGMA index_info({index[1]})")
                out.append([c[2] for c in cursor.fetchall()])
            return out
        cursor.execute(f"SHOW INDEX FROM {table}")
        found: dict[str, list[str]] = {}
        for row in cursor.fetchall():
            found.setdefault(row[2], []).append(row[4])
        return list(found.values())
    return archive.shards.run(0, work, write=False)


def test_setup_creates_the_chunked_layout_and_is_idempotent(archive: Archive) -> None:
    archive.catalog.setup()  # a second time changes nothing
    archive.lightcurves.setup()
    for table in ("objects", "alert_rows"):
        assert ["chunk_id", "hpx29"] in _indexes(archive, table)
    assert ["object_id", "mjd"] in _indexes(archive, "alert_rows")

    def columns(cursor: Any) -> list[str]:
        cursor.execute("SELECT * FROM objects WHERE 1 = 0")
        return [d[0] for d in cursor.description]
    object_columns = archive.shards.run(0, columns, write=False)
    assert tuple(object_columns[:len(OBJECT_COLUMNS)]) == OBJECT_COLUMNS
    assert archive.lightcurves.counts() == {"detections": 0, "forced_photometry": 0,
                                            "cutouts": 0, "packets": 0}
    assert archive.catalog.counts() == {"objects": 0, "alert_rows": 0, "director": 0}


def test_a_changed_layout_is_refused(archive: Archive, tmp_path: Path,
                                     request: pytest.FixtureRequest) -> None:
    other_chunking = ChunkedCatalog(shards=archive.shards, chunker=Chunker(36, 8))
    with pytest.raises(LayoutMismatchError, match="chunk_stripes"):
        other_chunking.setup()
    if archive.name == "embedded":
        fewer = SQLiteShards(archive.shards.folder, 1, stem="catalog")  # type: ignore[attr-defined]
    else:
        fewer = mariadb_shards(request.getfixturevalue("stack"),
                               archive.shards.database)  # type: ignore[attr-defined]
        fewer.addresses = fewer.addresses[:1]
        fewer.count = 1
    try:
        with pytest.raises(LayoutMismatchError, match="shards"):
            ChunkedCatalog(shards=fewer, chunker=CHUNKER).setup()
    finally:
        fewer.close()


def test_rows_live_on_the_shard_of_their_chunk(archive: Archive, stream: list[Alert]) -> None:
    _ingest_in_batches(archive, stream[:300], 100)
    placement = archive.catalog.placement
    for table in ("objects", "alert_rows"):
        rows = archive.rows(table)
        chunk_at = 3 if table == "objects" else 4  # the shard, then the table's columns
        assert {placement.shard_of(r[chunk_at]) == r[0] for r in rows} == {True}
        assert {r[0] for r in rows} == {0, 1}  # both shards hold data
    for row in archive.rows("director"):
        assert placement.director_shard(row[1]) == row[0]


def test_stores_fill_the_archive_protocols(archive: Archive) -> None:
    # Checked by mypy: each store is structurally one of the two roles.
    lightcurves: LightCurveArchive = archive.lightcurves
    catalog: ObjectCatalog = archive.catalog
    lightcurves.setup()
    catalog.setup()
    assert catalog.seen(["x"]) == {}


# ---- idempotency ----------------------------------------------------------------------------


def test_same_batch_written_twice_leaves_identical_rows(archive: Archive,
                                                        stream: list[Alert]) -> None:
    alerts = stream[:100]
    batch = plan(alerts, archive.catalog.seen({a.object_id for a in alerts}), CHUNKER)
    origins = _origins(alerts)
    archive.lightcurves.write(batch, origins)
    archive.catalog.write(batch)
    first = archive.dump()
    counts = (dict(archive.lightcurves.counts()), dict(archive.catalog.counts()))
    assert counts[0]["packets"] == 100
    assert counts[0]["cutouts"] == 300

    archive.lightcurves.write(batch, origins)
    archive.catalog.write(batch)
    assert archive.dump() == first
    assert (archive.lightcurves.counts(), archive.catalog.counts()) == counts

    # Planned again against what is now stored (a redelivery after a crash before the commit).
    _ingest(archive, alerts, origins)
    assert archive.dump() == first


def test_thousand_packets_in_batches_then_again(archive: Archive,
                                                stream: list[Alert]) -> None:
    _ingest_in_batches(archive, stream, 100)
    first = archive.dump()
    assert first["counts"]["packets"] == 1000
    assert first["counts"]["cutouts"] == 3000
    assert len(first["objects"]) == len({a.object_id for a in stream})

    _ingest_in_batches(archive, stream, 100)
    assert archive.dump() == first
    # Any other cut of the same stream, replayed, too.
    _ingest_in_batches(archive, stream, 37)
    assert archive.dump() == first


def test_batch_size_does_not_change_the_rows(make_archive: Any, stream: list[Alert]) -> None:
    by_hundred, by_one_batch = make_archive(), make_archive()
    _ingest_in_batches(by_hundred, stream[:400], 100)
    _ingest_in_batches(by_one_batch, stream[:400], 400)
    _same_catalog(by_hundred, by_one_batch)


def _same_catalog(one: Archive, other: Archive) -> None:
    for table in ("objects", "alert_rows", "director"):
        assert one.rows(table) == other.rows(table), table


# ---- object rows ----------------------------------------------------------------------------


def test_object_rows_are_exact(archive: Archive, stream: list[Alert]) -> None:
    _ingest_in_batches(archive, stream, 100)
    sources: dict[str, dict[int, Detection]] = defaultdict(dict)
    forced: dict[str, dict[int, ForcedMeasurement]] = defaultdict(dict)
    for alert in stream:
        for detection in alert.detections():
            sources[alert.object_id][detection.source_id] = detection
        for measurement in alert.forced:
            forced[alert.object_id][measurement.forced_id] = measurement

    for object_id, detections in sources.items():
        row = archive.catalog.get_object(object_id)
        assert row is not None
        assert tuple(row) == OBJECT_COLUMNS
        lightcurve = archive.lightcurves.lightcurve(object_id)
        # Every object's whole history is in the simulated stream, so the archive holds all of
        # the distinct sources its packets carried, and the counts come from those rows.
        assert row["n_detections"] == len(lightcurve) == len(detections)
        assert {r["source_id"] for r in lightcurve} == set(detections)
        assert row["first_mjd"] == min(d.mjd for d in detections.values())
        assert row["last_mjd"] == max(d.mjd for d in detections.values())
        if forced[object_id]:
            assert row["last_forced_mjd"] == max(f.mjd for f in forced[object_id].values())
        else:
            assert row["last_forced_mjd"] is None
        for band in BANDS:
            in_band = [d for d in detections.values() if d.band == band]
            assert row[f"{band}_n"] == len(in_band)
            if in_band:
                newest = max(in_band, key=lambda d: (d.mjd, d.source_id))
                assert row[f"{band}_last_mjd"] == newest.mjd
                assert row[f"{band}_last_flux"] == newest.psf_flux
                assert row[f"{band}_last_flux_err"] == newest.psf_flux_err
            else:
                assert row[f"{band}_last_mjd"] is None
        assert archive.catalog.alert_rows(object_id) == lightcurve
        seen = archive.catalog.seen([object_id])[object_id]
        assert seen == Seen(row["last_mjd"],
                            row["last_forced_mjd"] if row["last_forced_mjd"] is not None
                            else -math.inf,
                            row["chunk_id"])
        assert {r["chunk_id"] for r in lightcurve} == {row["chunk_id"]}


def test_position_follows_the_newest_packet(archive: Archive, stream: list[Alert]) -> None:
    _ingest_in_batches(archive, stream, 100)
    newest: dict[str, Alert] = {}
    for alert in stream:
        current = newest.get(alert.object_id)
        if current is None or (alert.detection.mjd, alert.alert_id) > (current.detection.mjd,
                                                                       current.alert_id):
            newest[alert.object_id] = alert
    for object_id, alert in newest.items():
        expected = plan([alert], {}, CHUNKER).objects[0]
        row = archive.catalog.get_object(object_id)
        assert row is not None
        assert (row["ra"], row["dec"], row["hpx29"]) == (expected.ra, expected.dec,
                                                         expected.hpx29)


def test_older_packet_after_newer_changes_nothing(make_archive: Any,
                                                  stream: list[Alert]) -> None:
    per_object: dict[str, list[Alert]] = defaultdict(list)
    for alert in stream:
        per_object[alert.object_id].append(alert)
    object_id, alerts = max(per_object.items(), key=lambda item: len(item[1]))
    newer, older = alerts[-1], alerts[-5]
    assert older.alert_id in {d.source_id for d in newer.history}

    archive = make_archive()
    _ingest(archive, [newer])
    before = archive.catalog.get_object(object_id)
    dump = archive.dump()
    _ingest(archive, [older])
    assert archive.catalog.get_object(object_id) == before
    after = archive.dump()
    # Only the older packet's own rows are new.
    assert after["objects"] == dump["objects"]
    assert after["alert_rows"] == dump["alert_rows"]
    assert after["lightcurves"] == dump["lightcurves"]
    assert after["counts"]["packets"] == dump["counts"]["packets"] + 1


def test_older_detections_never_replace_newer_band_values(archive: Archive) -> None:
    oid = "hand-bands"
    newer_r = _hand_alert(oid, 30, 10.0, -20.0, 60010.0, "r", 3000.0)
    older_g = _hand_alert(oid, 20, 10.0, -20.0, 60009.0, "g", 2000.0)
    older_r = _hand_alert(oid, 10, 10.0001, -20.0001, 60008.0, "r", 1000.0)
    same_time_r = _hand_alert(oid, 31, 10.0, -20.0, 60010.0, "r", 3100.0)

    _ingest(archive, [newer_r])
    row = archive.catalog.get_object(oid)
    assert row is not None
    assert (row["r_last_mjd"], row["r_last_flux"], row["r_n"]) == (60010.0, 3000.0, 1)
    position = (row["ra"], row["dec"], row["hpx29"])

    _ingest(archive, [older_g])  # a band with nothing stored: its value is taken
    _ingest(archive, [older_r])  # older than the stored r: counted, not taken
    row = archive.catalog.get_object(oid)
    assert row is not None
    assert (row["g_last_mjd"], row["g_last_flux"], row["g_n"]) == (60009.0, 2000.0, 1)
    assert (row["r_last_mjd"], row["r_last_flux"], row["r_n"]) == (60010.0, 3000.0, 2)
    assert (row["first_mjd"], row["last_mjd"], row["n_detections"]) == (60008.0, 60010.0, 3)
    assert (row["ra"], row["dec"], row["hpx29"]) == position

    _ingest(archive, [same_time_r])  # same time, larger source id: newer by the tie-break
    row = archive.catalog.get_object(oid)
    assert row is not None
    assert (row["r_last_mjd"], row["r_last_flux"], row["r_n"]) == (60010.0, 3100.0, 3)


def test_director_keeps_the_first_chunk(archive: Archive) -> None:
    alert = _hand_alert("hand-drift", 100, 45.0, 10.0, 60000.0)
    _ingest(archive, [alert])
    first = archive.catalog.get_object("hand-drift")
    assert first is not None
    later = _hand_alert("hand-drift", 101, 200.0, -40.0, 60001.0)
    batch = plan([later], {}, CHUNKER)  # planned as if the object were new
    assert batch.objects[0].chunk_id != first["chunk_id"]
    archive.lightcurves.write(batch, {})
    archive.catalog.write(batch)
    row = archive.catalog.get_object("hand-drift")
    assert row is not None
    assert row["chunk_id"] == first["chunk_id"]
    assert (row["ra"], row["dec"]) == (200.0, -40.0)
    assert archive.catalog.seen(["hand-drift"])["hand-drift"].chunk_id == first["chunk_id"]
    # Its alert rows stay in its chunk too.
    assert {r["chunk_id"] for r in archive.catalog.alert_rows("hand-drift")} == {
        first["chunk_id"]}


def test_seen_leaves_unknown_objects_out(archive: Archive, stream: list[Alert]) -> None:
    _ingest(archive, stream[:50])
    known = {a.object_id for a in stream[:50]}
    ids = [*known, "never-seen", *(f"unknown-{i}" for i in range(1200))]
    seen = archive.catalog.seen(ids)
    assert set(seen) == known
    assert archive.catalog.get_object("never-seen") is None
    assert archive.catalog.alert_rows("never-seen") == []
    assert archive.lightcurves.lightcurve("never-seen") == []


# ---- light-curve reads ----------------------------------------------------------------------


def test_lightcurves_forced_cutouts_and_packets(archive: Archive) -> None:
    simulator = AlertSimulator(schema="11.1", seed=5, n_objects=5)
    alerts = []
    for _key, message in simulator.encoded(30):
        schema_id, record = wire.decode(message)
        alerts.append(from_rubin(record, schema_id, message))
    origins = _origins(alerts, 1000)
    _ingest(archive, alerts, origins)

    for alert in alerts:
        assert archive.lightcurves.packet(alert.alert_id) == alert.packet
        if isinstance(archive.lightcurves, SQLiteLightCurves):  # Cassandra keeps no origin
            assert archive.lightcurves.origin(alert.alert_id) == origins[alert.alert_id]
        for kind, data in alert.cutouts.items():
            assert archive.lightcurves.cutout(alert.alert_id, kind) == data
    assert archive.lightcurves.cutout(alerts[0].alert_id, "nonsense") is None
    assert archive.lightcurves.packet(1) is None
    if isinstance(archive.lightcurves, SQLiteLightCurves):
        assert archive.lightcurves.origin(1) is None

    alert = alerts[-1]
    lightcurve = archive.lightcurves.lightcurve(alert.object_id)
    assert all(tuple(row) == DETECTION_COLUMNS for row in lightcurve)
    assert [r["mjd"] for r in lightcurve] == sorted(r["mjd"] for r in lightcurve)
    by_id = {r["source_id"]: r for r in lightcurve}
    detection = alert.detection
    stored = by_id[detection.source_id]
    assert (stored["ra"], stored["dec"], stored["band"], stored["psf_flux"], stored["snr"]) == (
        detection.ra, detection.dec, detection.band, detection.psf_flux, detection.snr)
    assert stored["hpx29"] == int(hpx29(np.array([detection.ra]), np.array([detection.dec]))[0])
    assert stored["survey"] == "lsst"

    forced = archive.lightcurves.forced_photometry(alert.object_id)
    assert forced
    assert all(tuple(row) == FORCED_COLUMNS for row in forced)
    assert [r["mjd"] for r in forced] == sorted(r["mjd"] for r in forced)
    assert {r["forced_id"] for r in forced} >= {f.forced_id for f in alert.forced}


def test_packet_without_origin_or_bytes(archive: Archive) -> None:
    alert = dataclasses.replace(_hand_alert("hand-bare", 7, 1.0, 2.0, 60000.0), packet=b"")
    _ingest(archive, [alert], {})
    assert archive.lightcurves.packet(7) is None
    if isinstance(archive.lightcurves, SQLiteLightCurves):
        assert archive.lightcurves.origin(7) is None
    assert archive.lightcurves.counts()["packets"] == 1


# ---- cone search ----------------------------------------------------------------------------

#: Hand-made objects at the RA wrap and near both poles.
_EDGE_POSITIONS = [
    *((ra, dec) for ra in (359.9995, 359.998, 359.99, 359.9, 0.0, 0.0003, 0.002, 0.05)
      for dec in (0.0, 0.001, -0.002, -30.0, 45.0)),
    *((ra, dec) for ra in (0.0, 45.0, 90.0, 123.0, 180.0, 270.0, 359.9)
      for dec in (89.9999, 89.999, 89.99, 89.95, -89.9999, -89.995, -89.97)),
    (0.0, 90.0), (0.0, -90.0),
]


@pytest.fixture(scope="module", params=["embedded", "services"])
def sky(request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """Simulated objects over the whole sky plus hand-made ones at the RA wrap and the poles."""
    folder = tmp_path_factory.mktemp("sky")
    archive, closers = sqlite_archive(folder)
    database = None
    if request.param == "services":
        database = mariadb_shards(request.getfixturevalue("stack"),
                                  f"lanner_sky{uuid.uuid4().hex[:8]}")
        catalog = ChunkedCatalog(shards=database, chunker=CHUNKER)
        catalog.setup()
        archive = Archive("services", database, archive.lightcurves, catalog)
    alerts = _simulated(1500, seed=17, n_objects=500, dec_range=(-90.0, 90.0), cutouts=False)
    _ingest_in_batches(archive, alerts, 500)
    edge = [_hand_alert(f"edge-{i}", 10_000 + i, ra, dec, 60000.0)
            for i, (ra, dec) in enumerate(_EDGE_POSITIONS)]
    _ingest(archive, edge)
    try:
        yield archive
    finally:
        for closer in closers:
            closer.close()
        if database is not None:
            database.drop_database()
            database.close()


def _positions(archive: Archive) -> list[tuple[str, float, float]]:
    return [(r[1], r[5], r[6]) for r in archive.rows("objects")]


def _brute_force(archive: Archive, ra: float, dec: float,
                 radius_deg: float) -> list[tuple[str, float]]:
    rows = _positions(archive)
    ids = [r[0] for r in rows]
    distances = angular_separation_deg(np.full(len(rows), ra), np.full(len(rows), dec),
                                       np.array([r[1] for r in rows]),
                                       np.array([r[2] for r in rows]))
    inside = sorted((float(d), i) for d, i in zip(distances.tolist(), ids, strict=True)
                    if d <= radius_deg)
    return [(i, d * 3600.0) for d, i in inside]


def _check_cone(archive: Archive, ra: float, dec: float, radius_deg: float) -> int:
    expected = _brute_force(archive, ra, dec, radius_deg)
    got = archive.catalog.cone(ra, dec, radius_deg, limit=100_000)
    assert [(r["object_id"], r["distance_arcsec"]) for r in got] == expected, (ra, dec, radius_deg)
    assert all(tuple(r)[:len(OBJECT_COLUMNS)] == OBJECT_COLUMNS for r in got)
    if len(expected) > 2:
        limited = archive.catalog.cone(ra, dec, radius_deg, limit=2)
        assert [r["object_id"] for r in limited] == [i for i, _ in expected[:2]]
    return len(expected)


def test_cone_equals_brute_force_for_random_cones(sky: Archive) -> None:
    rng = np.random.default_rng(2024)
    found = 0
    for _ in range(60):
        ra = float(rng.uniform(0.0, 360.0))
        dec = float(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0))))
        radius = float(10 ** rng.uniform(math.log10(1 / 3600), 1.0))
        found += _check_cone(sky, ra, dec, radius) > 0
    # Cones around stored objects, so that small radii find something too.
    rows = _positions(sky)
    for index in rng.choice(len(rows), size=60, replace=False).tolist():
        _, ra, dec = rows[index]
        radius = float(10 ** rng.uniform(math.log10(0.5 / 3600), 0.0))
        offset = float(rng.uniform(0.0, radius / 2))  # the object stays inside
        found += _check_cone(sky, (ra + offset / max(math.cos(math.radians(dec)), 1e-3)) % 360,
                             max(-90.0, min(90.0, dec - offset / 2)), radius) > 0
    assert found > 60


@pytest.mark.parametrize(("ra", "dec", "radius"), [
    (0.0001, 0.0, 0.01),
    (0.0001, 0.0, 0.1),
    (0.0001, 0.0005, 2 / 3600),
    (359.9999, 0.0, 0.01),
    (0.0, -30.0, 0.2),
    (359.95, 45.0, 0.1),
    (0.0001, 0.0, 1.0),
    (10.0, 89.99, 0.05),
    (200.0, 89.9999, 0.01),
    (0.0, 90.0, 0.06),
    (0.0, 90.0, 1.0),
    (300.0, -89.99, 0.05),
    (0.0, -90.0, 0.04),
    (42.0, -89.9, 0.5),
])
def test_cone_at_the_ra_wrap_and_poles(sky: Archive, ra: float, dec: float,
                                       radius: float) -> None:
    assert _check_cone(sky, ra, dec, radius) > 0


def test_cone_across_ra_zero_finds_objects_just_below_360(sky: Archive) -> None:
    rows = sky.catalog.cone(0.0001, 0.0, 0.01, limit=100)
    names = {r["object_id"] for r in rows}
    below = {f"edge-{i}" for i, (ra, dec) in enumerate(_EDGE_POSITIONS)
             if ra > 359.99 and abs(dec) < 0.01}
    assert below
    assert below <= names
    assert rows[0]["distance_arcsec"] <= rows[-1]["distance_arcsec"]


def test_cone_rejects_bad_input(sky: Archive) -> None:
    for ra, dec, radius, limit in [(math.nan, 0.0, 1.0, 10), (0.0, math.inf, 1.0, 10),
                                   (0.0, 91.0, 1.0, 10), (0.0, -90.5, 1.0, 10),
                                   (0.0, 0.0, -1.0, 10), (0.0, 0.0, math.nan, 10),
                                   (0.0, 0.0, 1.0, -1)]:
        with pytest.raises(ValueError, match=r"cone|limit"):
            sky.catalog.cone(ra, dec, radius, limit)
    assert sky.catalog.cone(0.0, 0.0, 10.0, limit=0) == []
    assert sky.catalog.cone(12.345, 6.789, 0.0, limit=10) == []
    assert sky.catalog.cone(12.345, 6.789, 1e-12, limit=10) == []
    exact = sky.catalog.cone(0.0, 0.0, 0.0, limit=10)  # an edge object sits exactly there
    assert [(r["object_id"], r["distance_arcsec"]) for r in exact] == [("edge-20", 0.0)]


# ---- threads and life cycle -----------------------------------------------------------------


def test_reads_from_other_threads_while_writing(archive: Archive,
                                                stream: list[Alert]) -> None:
    errors: list[BaseException] = []
    done = threading.Event()
    target = stream[0]

    def read() -> None:
        try:
            while not done.is_set():
                archive.catalog.cone(target.detection.ra, target.detection.dec, 1.0, 10)
                archive.catalog.get_object(target.object_id)
                archive.lightcurves.lightcurve(target.object_id)
                archive.lightcurves.counts()
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        _ingest_in_batches(archive, stream[:500], 50)
    finally:
        done.set()
        for thread in readers:
            thread.join()
    assert errors == []
    assert archive.lightcurves.counts()["packets"] == 500


def test_unwritable_file_is_a_transient_error(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the shard files should go")
    shards = SQLiteShards(folder, 2)
    with pytest.raises(TransientError, match="shard 0"):
        ChunkedCatalog(shards=shards, chunker=CHUNKER).setup()
    shards.close()


def test_a_dead_shard_is_named(archive: Archive, tmp_path: Path,
                               request: pytest.FixtureRequest) -> None:
    """A shard that does not answer is a transient error naming it, on either backend, and
    a cone needing it gives no partial answer."""
    if archive.name == "embedded":
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "catalog-1.sqlite3").mkdir()  # a folder where shard 1's file should be
        shards: Any = SQLiteShards(broken, 2, stem="catalog")
        where = "catalog-1.sqlite3"
    else:
        shards = mariadb_shards(request.getfixturevalue("stack"), archive.shards.database)  # type: ignore[attr-defined]
        shards.addresses = [shards.addresses[0], ("127.0.0.1", 9)]  # nothing listens on 9
        where = "127.0.0.1:9"
    catalog = ChunkedCatalog(shards=shards, chunker=CHUNKER)
    try:
        with pytest.raises(ServiceUnavailableError, match="shard 1") as raised:
            catalog.setup()
        assert where in str(raised.value)
        with pytest.raises(ServiceUnavailableError, match="shard 1"):
            catalog.cone(120.0, 10.0, 5.0, 100)  # wide: chunks on both shards
    finally:
        shards.close()


def test_a_write_cut_before_the_director_is_finished_by_the_retry(
        archive: Archive, make_archive: Any, stream: list[Alert],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The director is written last and is what `seen` reads (on every backend): a batch whose
    chunk rows are written but whose director is not claims nothing, so its retry writes the
    whole history again and ends with the rows of an uncut write."""
    _ingest_in_batches(archive, stream[:200], 100)
    cut = stream[200:300]
    real = archive.shards.on_shards
    calls = {"n": 0}

    def director_fails(work: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # seen, the chunk shards, then the director shards
            raise ServiceUnavailableError("director shard died")
        return real(work, **kwargs)

    batch = plan(cut, archive.catalog.seen({a.object_id for a in cut}), CHUNKER)
    archive.lightcurves.write(batch, _origins(cut, 200))
    monkeypatch.setattr(archive.shards, "on_shards", director_fails)
    with pytest.raises(ServiceUnavailableError):
        archive.catalog.write(batch)
    monkeypatch.undo()
    new = {a.object_id for a in cut} - {a.object_id for a in stream[:200]}
    assert new
    assert not set(archive.catalog.seen(new))  # the director was never written for them
    _ingest(archive, cut, _origins(cut, 200))  # the redelivery

    uncut = make_archive()
    _ingest_in_batches(uncut, stream[:300], 100)
    _same_catalog(archive, uncut)


def test_seen_reads_the_director(archive: Archive, stream: list[Alert]) -> None:
    _ingest(archive, stream[:50])
    object_id = stream[0].object_id
    row = archive.catalog.get_object(object_id)
    assert row is not None
    shard = archive.catalog.placement.director_shard(object_id)
    archive.shards.run(shard, lambda cursor: cursor.execute(
        "UPDATE director SET last_detection_mjd = %s WHERE object_id = %s",
        [row["last_mjd"] - 1.0, object_id]))
    # The object row is unchanged; seen answers what the director says.
    assert archive.catalog.seen([object_id])[object_id].last_detection_mjd == row["last_mjd"] - 1


# ---- enrichment results ---------------------------------------------------------------------


def _enrichment(object_id: str, chunk_id: int, alert_id: int, mjd: float, context: str,
                matches: Sequence[tuple[str, str, float]] = ()) -> Any:
    from broker.domain.enrichment import Match, ObjectEnrichment

    nearest = matches[0] if matches else None
    return ObjectEnrichment(
        object_id=object_id, chunk_id=chunk_id, hpx29=123, ra=10.0, dec=-5.0,
        alert_id=alert_id, alert_mjd=mjd, context=context,
        catalog=nearest[0] if nearest else None, source_id=nearest[1] if nearest else None,
        separation_arcsec=nearest[2] if nearest else None, reason=f"rule {context}",
        matches=tuple(Match(c, s, d, rank) for rank, (c, s, d) in enumerate(matches, 1)))


def test_enrichment_results_keep_the_newest_alert(archive: Archive, stream: list[Alert]) -> None:
    _ingest(archive, stream[:100])
    ids = sorted({a.object_id for a in stream[:100]})[:3]
    chunks = {i: archive.catalog.get_object(i)["chunk_id"] for i in ids}  # type: ignore[index]
    first = [_enrichment(i, chunks[i], 10, 60000.0, "variable_star",
                         [("hip", "42", 0.4), ("hip", "43", 2.5)]) for i in ids]
    assert archive.catalog.write_enrichment(first) == 3
    assert archive.catalog.write_enrichment(first) == 3  # the same again: same rows
    snapshot = (archive.rows("object_context"), archive.rows("object_matches"))
    assert len(snapshot[0]) == 3
    assert len(snapshot[1]) == 6
    older = [_enrichment(ids[0], chunks[ids[0]], 9, 59999.0, "orphan")]
    assert archive.catalog.write_enrichment(older) == 0  # late: ignored
    assert (archive.rows("object_context"), archive.rows("object_matches")) == snapshot
    newer = [_enrichment(ids[0], chunks[ids[0]], 11, 60001.0, "supernova_like",
                         [("ngc", "NGC0224", 30.0)]),
             _enrichment(ids[0], chunks[ids[0]], 8, 59990.0, "orphan")]  # same batch, older
    assert archive.catalog.write_enrichment(newer) == 1
    context = archive.catalog.context(ids[0])
    assert context is not None
    assert (context["context"], context["catalog"], context["source_id"],
            context["alert_id"]) == ("supernova_like", "ngc", "NGC0224", 11)
    assert [(m["catalog"], m["source_id"], m["rank"]) for m in
            archive.catalog.matches(ids[0])] == [("ngc", "NGC0224", 1)]
    assert [(m["source_id"], m["rank"]) for m in archive.catalog.matches(ids[1])] == [
        ("42", 1), ("43", 2)]
    assert archive.catalog.context("never-seen") is None
    assert archive.catalog.matches("never-seen") == []
    # Rows live on the shard of the object's chunk.
    placement = archive.catalog.placement
    for row in archive.rows("object_context"):
        assert placement.shard_of(row[2]) == row[0]


def test_features_are_stored_with_the_newest_enrichment(archive: Archive,
                                                        stream: list[Alert]) -> None:
    from dataclasses import replace

    from broker.storage.archive import FEATURE_COLUMNS

    _ingest(archive, stream[:100])
    object_id = stream[0].object_id
    chunk = archive.catalog.get_object(object_id)["chunk_id"]  # type: ignore[index]
    # Before the enrich stage: the row exists and every feature is NULL.
    assert archive.catalog.features(object_id) == dict.fromkeys(FEATURE_COLUMNS)
    assert archive.catalog.features("never-seen") is None
    values = {name: (7 if name.endswith("ndet") else 21.5 if name.endswith("mag") else None)
              for name in FEATURE_COLUMNS}
    first = replace(_enrichment(object_id, chunk, 10, 60000.0, "orphan"), features=values)
    assert archive.catalog.write_enrichment([first]) == 1
    assert archive.catalog.features(object_id) == values
    # A late alert's features are ignored with its context; a newer alert's replace them.
    late = replace(_enrichment(object_id, chunk, 9, 59999.0, "orphan"),
                   features={**values, "ndet": 3})
    assert archive.catalog.write_enrichment([late]) == 0
    assert archive.catalog.features(object_id)["ndet"] == 7  # type: ignore[index]
    newer = replace(_enrichment(object_id, chunk, 11, 60001.0, "orphan"),
                    features={**values, "ndet": 8})
    assert archive.catalog.write_enrichment([newer]) == 1
    assert archive.catalog.features(object_id)["ndet"] == 8  # type: ignore[index]
    # A result without features (none computed) leaves the stored ones alone.
    bare = _enrichment(object_id, chunk, 12, 60002.0, "orphan")
    assert archive.catalog.write_enrichment([bare]) == 1
    assert archive.catalog.features(object_id)["ndet"] == 8  # type: ignore[index]
    # An ingest write of the object never touches its features.
    _ingest(archive, stream[:100])
    assert archive.catalog.features(object_id)["ndet"] == 8  # type: ignore[index]
    assert archive.catalog.get_object(object_id) is not None


def test_histories_are_the_stored_light_curves(archive: Archive, stream: list[Alert]) -> None:
    _ingest(archive, stream[:200])
    ids = sorted({a.object_id for a in stream[:200]})
    found = archive.lightcurves.histories([*ids, "never-seen", ids[0]])
    assert set(found) == {*ids, "never-seen"}
    assert found["never-seen"].detections == []
    assert found["never-seen"].forced == []

    def key(rows: list[dict], id_column: str) -> list[tuple]:
        return sorted((r[id_column], r["object_id"], r["mjd"], r["band"], r["psf_flux"],
                       r["psf_flux_err"], r["science_flux"], r["science_flux_err"])
                      for r in rows)

    for object_id in ids:
        assert key(found[object_id].detections, "source_id") == key(
            archive.lightcurves.lightcurve(object_id), "source_id")
        assert key(found[object_id].forced, "forced_id") == key(
            archive.lightcurves.forced_photometry(object_id), "forced_id")
    assert sum(len(h.detections) for h in found.values()) == archive.lightcurves.counts()[
        "detections"]
    assert archive.lightcurves.histories([]) == {}


def test_positions_pages_every_object_or_only_those_in_cells(sky: Archive) -> None:
    """A retroactive match's read: every object of every shard by id pages; with a cover of
    cells, exactly the objects in them, chosen by the server."""
    from broker.domain.sky import SkyCells, hpx29

    rows = _positions(sky)
    every: list[tuple] = []
    for shard in range(sky.catalog.shard_count()):
        after = ""
        while page := sky.catalog.positions(shard, after, 7):
            assert len(page) <= 7
            every += page
            after = page[-1][0]
    assert sorted(r[0] for r in every) == sorted(r[0] for r in rows)
    ra = np.array([r[1] for r in rows])
    dec = np.array([r[2] for r in rows])
    order = 3
    cells_of = hpx29(ra, dec) >> 2 * (29 - order)
    chosen = np.unique(cells_of)[::3]
    cover = SkyCells(order, chosen)
    inside: list[tuple] = []
    for shard in range(sky.catalog.shard_count()):
        inside += sky.catalog.positions(shard, "", 1_000_000, cover)
    want = {r[0] for r, c in zip(rows, cells_of.tolist(), strict=True) if c in set(chosen)}
    assert {r[0] for r in inside} == want
    assert 0 < len(want) < len(rows)
