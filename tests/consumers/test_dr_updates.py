# Over 500 lines: one scenario base for the dr-updates stage, its two harnesses and its fault cases.
"""The dr-updates stage over the embedded backend and over the real Kafka and MariaDB shards.

The main scenario: a stream of inserts, moves (an arcsecond across a chunk edge, a chunk over,
across RA = 0, over a pole, anywhere), deletes, re-inserts after deletes, deletes of objects
never seen followed by older inserts, stale versions arriving late, all of it delivered twice,
must leave ``dr_objects`` exactly as a fresh load of the final state leaves another catalog:
the same main, overlap and director rows on the same shards.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from broker.domain.sky import Chunker, angular_separation_deg
from broker.exceptions import ServiceUnavailableError
from broker.storage.refcat import (
    ChunkedRefCatalogs,
    RefCatalogError,
    state_table,
    table_names,
)
from broker.storage.shards import SQLiteShards
from broker.streaming import lanner_schemas, wire
from broker.streaming.queue import Message
from consumers.dr_updates import (
    DEC_COL,
    ID_COL,
    RA_COL,
    DRTopics,
    DRUpdateStage,
    encode_change,
    row_schema,
)
from consumers.stage import Backoff
from tests.support.backends import read_topic
from tests.support.catalogs import version_rows

CHUNKER = Chunker(85, 12)
BASE_ID = 609_000_000_000_000  # DP1-like object ids
ARCSEC = 1.0 / 3600.0


# ---- harness: the same scenario over both backends ------------------------------------------


class DRHarness:
    name: str
    topics: DRTopics
    catalogs: Any

    def produce(self, value: bytes, key: bytes | None = None) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def stage(self, group: str = "lanner-dr", **overrides: Any) -> DRUpdateStage:
        raise NotImplementedError

    def dlq(self) -> list[Message]:
        raise NotImplementedError

    def run_once(self, group: str = "lanner-dr", **overrides: Any) -> Any:
        stage = self.stage(group, **overrides)
        try:
            return stage.run(once=True, idle_polls=3)
        finally:
            stage.source.close()
            stage.publisher.close()

    def tombstones(self, name: str = "dr_objects") -> set[int]:
        return {key for key, (_, deleted) in self.state(name).items() if deleted}

    def run_batches(self, **overrides: Any) -> tuple[Any, list[Any]]:
        """Drain the topic with a new stage of the usual group: the total and each batch."""
        stage = self.stage(**overrides)
        batches: list[Any] = []
        try:
            total = stage.run(once=True, idle_polls=3, on_batch=batches.append)
        finally:
            stage.source.close()
            stage.publisher.close()
        return total, batches

    def close(self) -> None:
        self.catalogs.close()

    def dump(self, name: str) -> dict[str, Any]:
        [entry] = [e for e in self.catalogs.list() if e["name"] == name]
        return {"rows": entry["rows"], "shards": version_rows(self.catalogs, name)}

    def state(self, name: str) -> dict[int, tuple[int, int]]:
        """The catalog's row-level state: id -> (version, deleted)."""
        [entry] = [e for e in self.catalogs.list() if e["name"] == name]
        table = state_table(name, entry["version"])

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT id, version, deleted FROM `{table}`")
            return list(cursor.fetchall())

        per_shard = self.catalogs.shards.all_shards(work, write=False)
        rows = [r for part in per_shard.values() for r in part]
        return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


class EmbeddedDR(DRHarness):
    name = "embedded"

    def __init__(self, tmp_path: Path) -> None:
        from broker.streaming.memory import MemoryBroker

        self.broker = MemoryBroker(partitions=3)
        self.topics = DRTopics()
        self.files = SQLiteShards(tmp_path / "shards", 2)
        self.catalogs = ChunkedRefCatalogs(self.files, CHUNKER)

    def produce(self, value: bytes, key: bytes | None = None) -> None:
        self.broker.produce(self.topics.updates, value, key=key)

    def stage(self, group: str = "lanner-dr", **overrides: Any) -> DRUpdateStage:
        from broker.streaming.memory import MemoryPublisher, MemorySource

        arguments: dict[str, Any] = {
            "source": MemorySource(self.broker, group=group, topics=[self.topics.updates]),
            "publisher": MemoryPublisher(self.broker), "catalogs": self.catalogs,
            "topics": self.topics, "batch_size": 500, "poll_timeout": 0.05,
        }
        arguments.update(overrides)
        return DRUpdateStage(**arguments)

    def dlq(self) -> list[Message]:
        return self.broker.messages(self.topics.dlq)

    def close(self) -> None:
        super().close()
        self.files.close()


class ServicesDR(DRHarness):
    name = "services"

    def __init__(self, stack: Any, topic_factory: Any, shards: Any) -> None:
        from broker.storage.kafka import KafkaPublisher

        self.stack = stack
        self.topics = DRTopics(updates=topic_factory("dr.updates", partitions=3),
                               dlq=topic_factory("alerts.dlq", partitions=1))
        self.catalogs = ChunkedRefCatalogs(shards, CHUNKER)
        self._producer = KafkaPublisher(bootstrap=stack.kafka.bootstrap)
        self.group_suffix = uuid.uuid4().hex[:8]

    def produce(self, value: bytes, key: bytes | None = None) -> None:
        self._producer.publish(self.topics.updates, value, key=key)

    def flush(self) -> None:
        self._producer.flush(60)

    def stage(self, group: str = "lanner-dr", **overrides: Any) -> DRUpdateStage:
        from broker.storage.kafka import KafkaPublisher, KafkaSource

        self.flush()
        bootstrap = self.stack.kafka.bootstrap
        arguments: dict[str, Any] = {
            "source": KafkaSource(bootstrap=bootstrap, group=f"{group}-{self.group_suffix}",
                                  topics=[self.topics.updates]),
            "publisher": KafkaPublisher(bootstrap=bootstrap), "catalogs": self.catalogs,
            "topics": self.topics, "batch_size": 500, "poll_timeout": 1.0,
        }
        arguments.update(overrides)
        return DRUpdateStage(**arguments)

    def dlq(self) -> list[Message]:
        return read_topic(self.stack.kafka.bootstrap, self.topics.dlq)

    def close(self) -> None:
        self._producer.close()
        super().close()


@pytest.fixture(params=["embedded", "services"])
def dr(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DRHarness]:
    if request.param == "embedded":
        built: DRHarness = EmbeddedDR(tmp_path)
    else:
        built = ServicesDR(request.getfixturevalue("stack"),
                           request.getfixturevalue("kafka_topics"),
                           request.getfixturevalue("shards"))
    try:
        yield built
    finally:
        built.close()


# ---- the stream ----------------------------------------------------------------------------


def _record(op: str, object_id: int, version: int, ra: float | None = None,
            dec: float | None = None, rng: np.random.Generator | None = None) -> dict:
    record: dict[str, Any] = {"op": op, ID_COL: object_id, "version": version}
    if op == "delete":
        return record
    rng = rng or np.random.default_rng(object_id + version)
    record.update({RA_COL: float(ra), DEC_COL: float(dec),
                   "coord_raErr": float(rng.uniform(1e-6, 1e-5)),
                   "coord_decErr": float(rng.uniform(1e-6, 1e-5)),
                   "refExtendedness": float(rng.choice([0.0, 1.0])),
                   "refBand": str(rng.choice(list("ugrizy"))),
                   "tract": int(rng.integers(0, 20000)), "patch": int(rng.integers(0, 100))})
    for band in "ugrizy":
        flux = float(rng.lognormal(6, 1))
        missing = rng.random() < 0.1
        record[f"{band}_psfFlux"] = None if missing else flux
        record[f"{band}_psfFluxErr"] = None if missing else flux * 0.05
        record[f"{band}_psfMag"] = None if missing else 31.4 - 2.5 * math.log10(flux)
    return record


def _chunk_edges_near(ra: float, dec: float) -> list[float]:
    """RA of the chunk edges within a degree or two of (ra, dec), found by stepping."""
    steps = np.arange(ra - 2.5, ra + 2.5, 0.5 * ARCSEC)
    chunks = CHUNKER.locate(steps, np.full(steps.size, dec))
    return (steps[1:][np.diff(chunks) != 0]).tolist()


def _wrap(ra: float) -> float:
    return float(np.mod(ra, 360.0))


def _stream(seed: int = 7) -> tuple[list[dict], dict[int, dict]]:
    """The changes in production order, and the final state (id -> record) they lead to."""
    rng = np.random.default_rng(seed)
    positions: list[tuple[float, float]] = []
    # Uniform over the sphere, then crowds where chunking is hard: RA = 0, the poles, a field
    # crossed by chunk edges.
    for _ in range(2600):
        positions.append((float(rng.uniform(0, 360)),
                          float(np.degrees(np.arcsin(rng.uniform(-1, 1))))))
    for _ in range(600):
        positions.append((_wrap(rng.uniform(-0.2, 0.2)), float(rng.uniform(-1, 1))))
    for _ in range(400):
        positions.append((float(rng.uniform(0, 360)), float(rng.uniform(89.3, 89.999))))
    for _ in range(300):
        positions.append((float(rng.uniform(0, 360)), float(rng.uniform(-89.999, -89.3))))
    for _ in range(1100):
        positions.append((float(rng.uniform(149.0, 151.0)), float(rng.uniform(1.5, 2.5))))
    ids = [BASE_ID + 17 * i for i in range(len(positions))]
    where = dict(zip(ids, positions, strict=True))
    changes = [_record("insert", i, 1, *where[i]) for i in ids]
    order = rng.permutation(len(ids))
    movers = [ids[i] for i in order[:1000]]

    # An arcsecond across a chunk edge (the edges of the crowded field).
    field_ids = ids[3900:]
    edges = _chunk_edges_near(150.0, 2.0)
    for k, oid in enumerate(field_ids[:150]):
        edge = edges[k % len(edges)]
        dec = where[oid][1]
        where[oid] = (edge - 0.5 * ARCSEC, dec)
        changes.append(_record("update", oid, 2, *where[oid]))
        where[oid] = (edge + 0.5 * ARCSEC, dec)
        changes.append(_record("update", oid, 3, *where[oid]))
    moved = set(field_ids[:150])
    kinds = ["arcsec", "chunk", "wrap", "pole", "anywhere"]
    for k, oid in enumerate(m for m in movers if m not in moved):
        ra, dec = where[oid]
        kind = kinds[k % len(kinds)]
        if kind == "arcsec":
            angle = rng.uniform(0, 2 * math.pi)
            new = (_wrap(ra + ARCSEC * math.cos(angle) / max(math.cos(math.radians(dec)), 1e-3)),
                   float(np.clip(dec + ARCSEC * math.sin(angle), -90, 90)))
        elif kind == "chunk":
            new = (_wrap(ra + rng.choice([-1, 1]) * rng.uniform(1.0, 4.0)), dec)
        elif kind == "wrap":
            new = (_wrap(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.5, 0.5)))
        elif kind == "pole":
            new = (_wrap(ra + 180.0), float(np.sign(dec or 1) * rng.uniform(89.9, 89.9999)))
        else:
            new = (float(rng.uniform(0, 360)), float(np.degrees(np.arcsin(rng.uniform(-1, 1)))))
        where[oid] = new
        changes.append(_record("update", oid, 3, *new))
        moved.add(oid)
    # Some objects change again (version 4: only their fluxes).
    for oid in movers[:100]:
        changes.append(_record("update", oid, 4, *where[oid]))

    # Deletes (some of moved objects), 50 of them inserted again later somewhere else.
    deleted = [ids[i] for i in order[800:1300]]
    for oid in deleted:
        changes.append(_record("delete", oid, 5))
    for oid in deleted[:50]:
        where[oid] = (float(rng.uniform(0, 360)), float(rng.uniform(-60, 60)))
        changes.append(_record("insert", oid, 6, *where[oid]))

    # Deletes of objects never seen, then their (older) inserts arrive: they stay deleted.
    ghosts = [BASE_ID + 5 + 17 * i for i in range(40)]
    for oid in ghosts:
        changes.append(_record("delete", oid, 9))
    for oid in ghosts:
        changes.append(_record("insert", oid, 2, float(rng.uniform(0, 360)),
                               float(rng.uniform(-80, 80))))

    # Stale versions arriving late: old positions of moved objects, old inserts of deleted ones.
    stale = [c for c in changes if c["op"] != "delete" and c["version"] <= 2]
    picks = rng.choice(len(stale), size=300, replace=False)
    changes.extend(stale[i] for i in sorted(picks))

    final: dict[int, dict] = {}
    for change in changes:
        kept = final.get(change[ID_COL])
        if kept is None or change["version"] > kept["version"]:
            final[change[ID_COL]] = change
    return changes, {k: v for k, v in final.items() if v["op"] != "delete"}


def _final_table(final: dict[int, dict]) -> pa.Table:
    schema = row_schema()
    table = pa.Table.from_pylist(list(final.values()), schema=schema)
    return table.select([n for n in schema.names if n != "version"])


def _produce(dr: DRHarness, changes: list[dict]) -> None:
    for change in changes:
        dr.produce(encode_change(change), key=str(change[ID_COL]).encode())
    dr.flush()


# ---- tests ----------------------------------------------------------------------------------


def test_schema_round_trip() -> None:
    record = _record("insert", BASE_ID, 3, 10.0, -20.0)
    value = encode_change(record)
    assert wire.read_header(value) == lanner_schemas.schema_id("dr_update") == 90020100
    assert lanner_schemas.decode("dr_update", value) == record
    delete = lanner_schemas.decode("dr_update", encode_change(_record("delete", BASE_ID, 4)))
    assert delete["op"] == "delete"
    assert delete[RA_COL] is None


def test_stream_equals_fresh_load_of_final_state(dr: DRHarness) -> None:
    changes, final = _stream()
    # Delivered twice: the whole stream, then all of it again (a replay from offset 0).
    _produce(dr, changes)
    _produce(dr, changes)
    report = dr.run_once()
    assert report.consumed == 2 * len(changes)
    assert report.dead_lettered == 0
    assert report.upserted > 0
    assert report.deleted > 0
    assert report.ignored > 0

    dr.catalogs.load("dr_fresh", _final_table(final).to_batches(max_chunksize=2000),
                     ID_COL, RA_COL, DEC_COL)
    entries = {e["name"]: e for e in dr.catalogs.list()}
    assert entries["dr_objects"]["rows"] == len(final)
    assert entries["dr_objects"]["columns"] == entries["dr_fresh"]["columns"]
    updated, fresh = dr.dump("dr_objects"), dr.dump("dr_fresh")
    for shard in updated["shards"]:
        for kind in ("main", "overlap", "director"):
            assert updated["shards"][shard][kind] == fresh["shards"][shard][kind], (
                f"{kind} rows on shard {shard} differ")
    assert sum(len(p["overlap"]) for p in updated["shards"].values()) > 0
    assert updated["rows"] == fresh["rows"] == len(final)

    # Cone searches around moved objects, near RA = 0 and the poles, equal brute force.
    ids = np.array(list(final))
    ra = np.array([final[i][RA_COL] for i in ids])
    dec = np.array([final[i][DEC_COL] for i in ids])
    centres = [(final[i][RA_COL], final[i][DEC_COL]) for i in list(final)[3900:3930]]
    centres += [(0.0, 0.0), (359.99, 0.3), (0.0, 90.0), (123.0, -89.95), (150.0, 2.0)]
    centres += [(final[c[ID_COL]][RA_COL], final[c[ID_COL]][DEC_COL]) for c in changes
                if c["version"] == 3 and c[ID_COL] in final][:40]
    for cra, cdec in centres:
        for radius in (2 * ARCSEC, 1.0 / 60, 0.3):
            distance = angular_separation_deg(np.full(ids.size, cra), np.full(ids.size, cdec),
                                              ra, dec)
            expected = sorted(int(i) for i in ids[distance <= radius])
            got = sorted(r["id"] for r in dr.catalogs.cone("dr_objects", cra, cdec, radius,
                                                             100_000))
            assert got == expected, (cra, cdec, radius)

    # Id lookups through the director: present, moved and deleted objects.
    for oid in list(final)[:20] + list(final)[3900:3920]:
        row = dr.catalogs.get("dr_objects", oid)
        assert row is not None
        assert (row["ra"], row["dec"]) == (final[oid][RA_COL], final[oid][DEC_COL])
        assert row["g_psfflux"] == final[oid]["g_psfFlux"]
    gone = [c[ID_COL] for c in changes if c["op"] == "delete" and c[ID_COL] not in final]
    assert gone
    assert all(dr.catalogs.get("dr_objects", oid) is None for oid in gone[:30])

    # Offsets were committed: the group has nothing left to read.
    again = dr.run_once()
    assert again.consumed == 0


def _bad_values(good: bytes) -> dict[str, bytes]:
    def edited(**changes: Any) -> bytes:
        return encode_change({**_record("insert", BASE_ID + 999_999, 1, 10.0, 10.0), **changes})

    return {
        "bad_magic_byte": b"\x01" + good[1:],
        "truncated": good[: len(good) // 2],
        "unknown_schema_id": wire.write_header(4242) + good[5:],
        "corrupt_body": wire.write_header(90020100) + b"\x09" + b"\x00" * 40,
        "bad_coordinates": edited(coord_ra=math.nan),
        "dec_out_of_range": edited(coord_dec=91.5),
        "ra_out_of_range": edited(coord_ra=-1.0),
        "missing_id": edited(objectId=0),
        "bad_version": edited(version=-2),
    }


def test_bad_records_go_to_the_dlq(dr: DRHarness) -> None:
    good = [_record("insert", BASE_ID + 17 * i, 1, 10.0 + i * 0.01, 5.0) for i in range(20)]
    missing_coords = encode_change({"op": "insert", ID_COL: BASE_ID + 1, "version": 1})
    bad = {**_bad_values(encode_change(good[0])), "bad_coordinates_null": missing_coords}
    for i, change in enumerate(good):
        dr.produce(encode_change(change), key=b"k")
        if i < len(bad):
            dr.produce(list(bad.values())[i], key=b"k")
    dr.flush()
    report = dr.run_once()
    assert report.consumed == len(good) + len(bad)
    assert report.upserted == len(good)
    assert report.dead_lettered == len(bad)
    letters = dr.dlq()
    assert len(letters) == len(bad)
    reasons = sorted(m.headers["reason"].decode() for m in letters)
    expected = sorted(r if r != "bad_coordinates_null" else "bad_coordinates" for r in bad)
    assert reasons == expected
    for letter in letters:
        assert letter.headers["stage"] == b"dr-updates"
        assert letter.headers["topic"].decode() == dr.topics.updates
        assert int(letter.headers["offset"]) >= 0
        assert letter.value in bad.values()
    for change in good:
        assert dr.catalogs.get("dr_objects", change[ID_COL])[RA_COL.replace("coord_", "")] \
            == change[RA_COL]
    # A second stage of the same group finds nothing left: the offsets were committed.
    assert dr.run_once().consumed == 0


class _FailingOnce:
    """Catalogs whose first `apply` fails: permanently (a crash) or transiently (an outage)."""

    def __init__(self, inner: Any, error: Exception) -> None:
        self.inner = inner
        self.error: Exception | None = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.inner.apply(*args, **kwargs)


def test_offsets_are_committed_only_after_the_write(dr: DRHarness) -> None:
    changes = [_record("insert", BASE_ID + 17 * i, 1, 200.0 + i * 0.1, -30.0) for i in range(50)]
    changes += [_record("update", BASE_ID, 2, 200.0, -31.0)]
    _produce(dr, changes)
    crashed = dr.stage(catalogs=_FailingOnce(dr.catalogs, RuntimeError("killed")))
    with pytest.raises(RuntimeError):
        crashed.run(once=True)
    crashed.source.close()
    crashed.publisher.close()
    # Nothing was committed: a new member of the group gets every record again.
    flaky = _FailingOnce(dr.catalogs, ServiceUnavailableError("shard down"))
    report = dr.run_once(catalogs=flaky, backoff=Backoff(first=0.01, most=0.05))
    assert report.consumed == len(changes)
    assert flaky.error is None
    assert dr.catalogs.get("dr_objects", BASE_ID)["dec"] == -31.0
    assert [e["rows"] for e in dr.catalogs.list() if e["name"] == "dr_objects"] == [50]
    assert dr.run_once().consumed == 0


class _PurgeSpy:
    """Catalogs that record each `purge_tombstones` call (and fail it, if given an error)."""

    def __init__(self, inner: Any, error: Exception | None = None) -> None:
        self.inner = inner
        self.error = error
        self.calls: list[tuple[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def purge_tombstones(self, name: str, older_than_s: float) -> int:
        self.calls.append((name, older_than_s))
        if self.error is not None:
            raise self.error
        return self.inner.purge_tombstones(name, older_than_s)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"stage": "dr-updates", **labels}) or 0.0


def test_the_stage_purges_tombstones_on_its_interval(dr: DRHarness) -> None:
    ids = [BASE_ID + 17 * i for i in range(60)]
    _produce(dr, [_record("insert", oid, 1, 30.0 + 0.01 * k, 10.0) for k, oid in enumerate(ids)])
    _produce(dr, [_record("delete", oid, 2) for oid in ids[:20]])
    spy = _PurgeSpy(dr.catalogs)
    # A long interval: one purge in the run, after its first batch; a long grace keeps them all.
    total, batches = dr.run_batches(catalogs=spy, batch_size=25, tombstone_grace_s=3600.0,
                                    purge_interval_s=3600.0)
    assert total.consumed == 80
    assert len(batches) >= 4
    assert spy.calls == [("dr_objects", 3600.0)]
    assert (total.purged, batches[0].purged) == (0, 0)
    assert dr.tombstones() == set(ids[:20])

    # A tiny interval and no grace: a purge after every batch, every tombstone goes.
    _produce(dr, [_record("delete", oid, 2) for oid in ids[20:30]])
    spy.calls.clear()
    purged_before = _metric("lanner_tombstones_purged_total")
    total, batches = dr.run_batches(catalogs=spy, batch_size=4, tombstone_grace_s=0.0,
                                    purge_interval_s=1e-6)
    assert (total.consumed, total.deleted) == (10, 10)
    assert len(batches) >= 3
    assert spy.calls == [("dr_objects", 0.0)] * len(batches)
    assert total.purged == sum(b.purged for b in batches) == 30
    assert _metric("lanner_tombstones_purged_total") - purged_before == 30
    state = dr.state("dr_objects")
    assert dr.tombstones() == set()
    assert sorted(state) == sorted(ids[30:])  # the live rows' state is kept
    assert [e["rows"] for e in dr.catalogs.list() if e["name"] == "dr_objects"] == [30]
    assert dr.catalogs.get("dr_objects", ids[30])["ra"] == 30.3
    assert dr.catalogs.get("dr_objects", ids[0]) is None

    # Interval 0: the stage never purges.
    _produce(dr, [_record("delete", ids[30], 3)])
    spy.calls.clear()
    total, _ = dr.run_batches(catalogs=spy, tombstone_grace_s=0.0, purge_interval_s=0.0)
    assert (total.deleted, total.purged, spy.calls) == (1, 0, [])
    assert dr.tombstones() == {ids[30]}


def test_a_failing_purge_loses_nothing(dr: DRHarness) -> None:
    ids = [BASE_ID + 17 * i for i in range(30)]
    _produce(dr, [_record("insert", oid, 1, 60.0 + 0.01 * k, -10.0) for k, oid in enumerate(ids)])
    _produce(dr, [_record("delete", oid, 2) for oid in ids[:10]])
    spy = _PurgeSpy(dr.catalogs, error=RuntimeError("the purge broke"))
    failures_before = _metric("lanner_tombstone_purge_failures_total")
    total, batches = dr.run_batches(catalogs=spy, batch_size=10, tombstone_grace_s=0.0,
                                    purge_interval_s=1e-6)
    assert total.consumed == 40
    assert total.dead_lettered == 0
    assert total.purged == 0
    assert len(spy.calls) == len(batches) >= 4  # tried after every batch, never fatal
    assert _metric("lanner_tombstone_purge_failures_total") - failures_before == len(batches)
    assert dr.tombstones() == set(ids[:10])
    assert [e["rows"] for e in dr.catalogs.list() if e["name"] == "dr_objects"] == [20]
    assert all(dr.catalogs.get("dr_objects", oid) is not None for oid in ids[10:])
    assert dr.run_once().consumed == 0  # every offset was committed


def test_a_busy_catalog_is_retried_not_dead_lettered(dr: DRHarness) -> None:
    changes = [_record("insert", BASE_ID + 17 * i, 1, 80.0 + 0.01 * i, -20.0) for i in range(30)]
    _produce(dr, changes)
    dr.catalogs.setup()
    dr.catalogs.lock_wait_s = 0.1
    held, release = threading.Event(), threading.Event()

    def holder() -> None:  # a load of dr_objects, as far as the stage can tell
        with dr.catalogs._exclusive("dr_objects", 0):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    retries_before = _metric("lanner_store_retries_total", store="catalog")
    timer = threading.Timer(1.5, release.set)
    try:
        assert held.wait(30)
        timer.start()
        report = dr.run_once(backoff=Backoff(first=0.05, most=0.2))
    finally:
        release.set()
        thread.join(60)
        timer.cancel()
    assert (report.consumed, report.upserted, report.dead_lettered) == (30, 30, 0)
    assert _metric("lanner_store_retries_total", store="catalog") - retries_before >= 2
    assert [e["rows"] for e in dr.catalogs.list() if e["name"] == "dr_objects"] == [30]
    assert dr.run_once().consumed == 0


def test_the_built_stage_has_the_tombstone_settings(tmp_path: Path) -> None:
    from broker.config import Backend, Settings
    from broker.factory import Factory
    from consumers import dr_updates

    settings = Settings(backend=Backend.embedded, state_dir=tmp_path,
                        dr_tombstone_grace_s=5.0, dr_tombstone_purge_interval_s=7.0)
    factory = Factory(settings)
    try:
        stage = dr_updates.build(factory)
        assert (stage.tombstone_grace_s, stage.purge_interval_s) == (5.0, 7.0)
    finally:
        factory.close()
    defaults = Settings(backend=Backend.embedded, state_dir=tmp_path)
    assert defaults.dr_tombstone_grace_s == 15 * 86_400
    assert defaults.dr_tombstone_purge_interval_s == 3_600


def test_apply_rejects_other_columns_and_repeated_ids(shard_set: Any) -> None:
    catalogs = ChunkedRefCatalogs(shard_set, CHUNKER)
    try:
        table = pa.table({"sid": [1, 2], "ra": [1.0, 2.0], "dec": [0.0, 0.0], "version": [1, 1]})
        report = catalogs.apply("stars", table, [], id_col="sid", ra_col="ra", dec_col="dec")
        assert (report.upserted, report.created) == (2, True)
        assert state_table("stars", 1) in catalogs.tables()
        other = table.append_column("mag", pa.array([1.0, 2.0]))
        with pytest.raises(RefCatalogError, match="columns"):
            catalogs.apply("stars", other, [], id_col="sid", ra_col="ra", dec_col="dec")
        with pytest.raises(RefCatalogError, match="more than once"):
            catalogs.apply("stars", table, [(1, 5)], id_col="sid", ra_col="ra", dec_col="dec")
        bad = pa.table({"sid": [3], "ra": [math.nan], "dec": [0.0], "version": [1]})
        with pytest.raises(RefCatalogError, match="validate"):
            catalogs.apply("stars", bad, [], id_col="sid", ra_col="ra", dec_col="dec")
        # A reload replaces the catalog and its row-level state.
        catalogs.load("stars", [pa.record_batch({"sid": [7], "ra": [3.0], "dec": [1.0]})],
                      "sid", "ra", "dec")
        assert state_table("stars", 1) not in catalogs.tables()
        assert catalogs.get("stars", 1) is None
        report = catalogs.apply("stars", pa.table({"sid": [7], "ra": [4.0], "dec": [1.0],
                                                   "version": [0]}),
                                [], id_col="sid", ra_col="ra", dec_col="dec")
        assert report.upserted == 1  # a loaded row has no version: any change applies
        assert catalogs.get("stars", 7)["ra"] == 4.0
    finally:
        catalogs.close()


def test_sharded_apply_recovers_from_a_failure_between_shards(shard_set: Any,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Data shards written, director shards not: a newer change still cleans every place."""
    from broker.storage.refcat.changes import StateTables

    catalogs = ChunkedRefCatalogs(shard_set, CHUNKER)
    try:
        schema = row_schema()

        def apply(records: list[dict]) -> Any:
            table = pa.Table.from_pylist([r for r in records if r["op"] != "delete"],
                                         schema=schema)
            deletes = [(r[ID_COL], r["version"]) for r in records if r["op"] == "delete"]
            return catalogs.apply("dr_objects", table, deletes, id_col=ID_COL, ra_col=RA_COL,
                                  dec_col=DEC_COL)

        edge = _chunk_edges_near(150.0, 2.0)[0]
        apply([_record("insert", BASE_ID + i, 1, edge - 0.01 * i, 2.0) for i in range(1, 30)])
        def dies(*args: Any) -> Any:
            def work(cursor: Any) -> None:
                raise ServiceUnavailableError("shard died")
            return work

        monkeypatch.setattr(StateTables, "director_writer", dies)
        # Moves across the edge (another chunk, another shard) whose last step never happens.
        with pytest.raises(ServiceUnavailableError):
            apply([_record("update", BASE_ID + i, 2, edge + 0.01 * i, 2.0) for i in range(1, 30)])
        monkeypatch.undo()
        # Redelivery brings newer changes: yet another place, and some deletes.
        final = [_record("update", BASE_ID + i, 3, edge + 1.5, 2.0 + 0.001 * i)
                 for i in range(1, 20)]
        report = apply(final + [_record("delete", BASE_ID + i, 3) for i in range(20, 30)])
        assert (report.upserted, report.deleted) == (19, 10)
        catalogs.load("dr_fresh", _final_table({r[ID_COL]: r for r in final}).to_batches(),
                      ID_COL, RA_COL, DEC_COL)
        dump = {}
        for name in ("dr_objects", "dr_fresh"):
            [entry] = [e for e in catalogs.list() if e["name"] == name]
            tables = table_names(name, entry["version"])

            def work(cursor: Any, tables: tuple = tables) -> list[set]:
                found = []
                for table in tables:
                    cursor.execute(f"SELECT * FROM `{table}`")
                    found.append(set(cursor.fetchall()))
                return found

            dump[name] = (entry["rows"], catalogs.shards.all_shards(work, write=False))
        assert dump["dr_objects"] == dump["dr_fresh"]
    finally:
        catalogs.close()
