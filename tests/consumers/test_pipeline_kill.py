"""Issue 11's end-to-end scenario on the real services: alerts in a watchlist, in a watchmap
and elsewhere go through two ``lanner enrich`` and two ``lanner filters`` processes, one of
each killed with SIGKILL mid-stream and restarted; a plain confluent-kafka consumer, reading
through Lanner's schema registry, finds on each filter's topic exactly the alerts it passes.

A redelivered batch may publish an alert twice, with the same key (its object id) and alert
id: the test counts distinct alert ids, as docs/filters.md tells subscribers to.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np
from mocpy import MOC

from api.app import create_app
from broker.domain.watchlists import Cones
from broker.factory import Factory
from broker.storage.accounts import AccountStore
from broker.storage.filters import FilterStore
from broker.storage.kafka import KafkaClients
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import WatchmapStore
from broker.streaming import lanner_schemas
from tests.support.alerts import produce_placed
from tests.support.backends import ServicesHarness, committed_offsets
from tests.support.data import REPO_ROOT
from tests.support.server import served

ALERTS = 900
IN_CONES = 60
IN_MAP = 60
CELL = (6, 1000)  # the watchmap: one HEALPix cell of order 6 (about 0.84 deg wide)
DEADLINE_S = 300.0


def _positions(rng: np.random.Generator, cones: Cones) -> list[tuple[float, float, str]]:
    from astropy import units as u
    from cdshealpix.nested import healpix_to_lonlat

    lon, lat = healpix_to_lonlat(np.array([CELL[1]], dtype=np.uint64), CELL[0])
    centre = (float(lon.to_value(u.deg)[0]), float(lat.to_value(u.deg)[0]))
    out = []
    for i in range(ALERTS):
        if i < IN_CONES:
            out.append((float(cones.ra[i]), float(cones.dec[i]) + 1.0 / 3600, "cone"))
        elif i < IN_CONES + IN_MAP:  # well inside the cell
            out.append((centre[0] + float(rng.uniform(-0.05, 0.05)),
                        centre[1] + float(rng.uniform(-0.05, 0.05)), "map"))
        else:  # far from both: the southern sky
            out.append((float(rng.uniform(0, 360)), float(rng.uniform(-80, -20)), "none"))
    return out


def _read_through_registry(factory: Factory, bootstrap: str, topic: str,
                           expected: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Every record of a filter's topic, read by a DeserializingConsumer whose schemas come
    from Lanner's registry (keys and values)."""
    from confluent_kafka import DeserializingConsumer, KafkaError
    from confluent_kafka.error import ConsumeError
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    with served(create_app(factory)) as url:
        registry = SchemaRegistryClient({"url": f"{url}/registry"})
        consumer = DeserializingConsumer({
            "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest", "enable.partition.eof": True,
            "value.deserializer": AvroDeserializer(registry)})
        consumer.subscribe([topic])
        out: list[tuple[bytes, dict[str, Any]]] = []
        ended: set[int] = set()
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                try:
                    message = consumer.poll(1.0)
                except ConsumeError as exc:  # the end of a partition is reported as an error
                    if exc.code != KafkaError._PARTITION_EOF:
                        raise
                    ended.add(exc.kafka_message.partition())
                    if len(out) >= expected and len(ended) >= len(consumer.assignment()):
                        break
                    continue
                if message is not None:
                    out.append((message.key(), message.value()))
        finally:
            consumer.close()
    return out


def test_killed_enrich_and_filters_processes_lose_no_alert(stack, kafka_topics,
                                                           tmp_path) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    run = uuid.uuid4().hex[:8]
    owner = f"e{run}"
    processes: dict[str, subprocess.Popen] = {}
    try:
        # The user's lists and filters, in the database the processes use.
        AccountStore(harness.shards).setup()
        AccountStore(harness.shards).add_user(owner)
        rng = np.random.default_rng(23)
        cones = Cones([f"t{i}" for i in range(IN_CONES)],
                      rng.uniform(0, 360, IN_CONES), rng.uniform(0, 60, IN_CONES),
                      np.full(IN_CONES, 3.0))
        watchlists, watchmaps = WatchlistStore(harness.shards), WatchmapStore(harness.shards)
        watchlists.setup()
        watchmaps.setup()
        listed = watchlists.create(owner, "targets", cones)
        mapped = watchmaps.create(owner, "area", MOC.from_string(f"{CELL[0]}/{CELL[1]}"),
                                  source="ascii")
        store = FilterStore(harness.shards)
        store.setup()
        texts = {
            "listed": f"SELECT watchlist_cone({listed.watchlist_id}) AS cone "
                      f"WHERE in_watchlist({listed.watchlist_id})",
            "mapped": f"SELECT mag WHERE in_watchmap({mapped.watchmap_id})",
            "bright": "SELECT mag, band WHERE mag < 20.5",
            "red": "SELECT band WHERE band IN ('r', 'i') AND mag IS NOT NULL",
        }
        made = {name: store.create(owner, name, text, daily_cap=10**9)
                for name, text in texts.items()}
        for found in made.values():
            store.set_state(found.filter_id, "enabled")
        KafkaClients(bootstrap=stack.kafka.bootstrap).ensure_topics(
            [f.topic for f in made.values()])

        places = _positions(rng, cones)
        produce_placed(harness, [(ra, dec) for ra, dec, _ in places],
                       first_id=730_000_000_000, seed=29)
        assert harness.ingest_once().archived == ALERTS

        env = harness.process_env(
            LANNER_FILTERS_GROUP=f"filters-{run}", LANNER_ENRICH_BATCH_SIZE="40",
            LANNER_FILTERS_BATCH_SIZE="40", LANNER_WATCH_POLL_S="1",
            LANNER_TOPIC_ANNOTATIONS=kafka_topics("internal.annotations", partitions=1))

        def start(stage: str, instance: str) -> subprocess.Popen:
            variable = f"LANNER_{stage.upper()}_INSTANCE_ID"
            return subprocess.Popen(
                [sys.executable, "-m", "broker.cli", stage], cwd=REPO_ROOT,
                env={**env, variable: instance}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT)

        for stage in ("enrich", "filters"):
            for n in (0, 1):
                processes[f"{stage}{n}"] = start(stage, f"{stage}-{n}-{run}")

        def wait_for(what: str, done: Any) -> None:
            deadline = time.monotonic() + DEADLINE_S
            while not done():
                for name, process in processes.items():
                    assert process.poll() is None, (name, process.stdout.read().decode())
                assert time.monotonic() < deadline, f"waited too long for {what}"
                time.sleep(0.5)

        def enriched() -> int:
            return len(harness.outputs(harness.enriched))

        # Kill one of each mid-stream, then start it again under the same instance id.
        wait_for("some enriched alerts", lambda: enriched() >= ALERTS // 5)
        processes["enrich0"].send_signal(signal.SIGKILL)
        processes["enrich0"].wait(30)
        mid_enrich = enriched()
        wait_for("some filtered alerts",
                 lambda: len(harness.outputs(made["red"].topic)) >= 20)
        processes["filters0"].send_signal(signal.SIGKILL)
        processes["filters0"].wait(30)
        mid_filters = len(harness.outputs(made["red"].topic))
        processes["enrich0"] = start("enrich", f"enrich-0-{run}")
        processes["filters0"] = start("filters", f"filters-0-{run}")

        def drained(group: str, topic: str, total: int | None = None) -> bool:
            committed, ends = committed_offsets(stack.kafka.bootstrap, group, topic)
            return committed == ends and (total is None or sum(ends.values()) >= total)

        wait_for("enrich to finish",
                 lambda: drained(env["LANNER_ENRICH_GROUP"], harness.topics.ingested))
        wait_for("filters to finish",
                 lambda: drained(env["LANNER_FILTERS_GROUP"], harness.enriched))
        assert mid_enrich < ALERTS  # the enrich kill fell mid-stream

        # What each filter passes, from the enriched records (an alert enriched twice, around
        # the kill, has the same values) and from where the alerts were placed.
        records = {}
        for message in harness.outputs(harness.enriched):
            record = lanner_schemas.decode("enriched", message.value)
            records[record["alert_id"]] = record
        assert len(records) == ALERTS
        by_object = {r["object_id"]: r for r in records.values()}
        placed_in = {place: {by_object[str(730_000_000_000 + i)]["alert_id"]
                             for i, (_, _, p) in enumerate(places) if p == place}
                     for place in ("cone", "map")}
        want = {
            "listed": {a for a, r in records.items()
                       if any(w["watchlist_id"] == listed.watchlist_id
                              for w in r["watchlists"])},
            "mapped": {a for a, r in records.items() if mapped.watchmap_id in r["watchmaps"]},
            "bright": {a for a, r in records.items()
                       if r["mag"] is not None and r["mag"] < 20.5},
            "red": {a for a, r in records.items()
                    if r["band"] in ("r", "i") and r["mag"] is not None},
        }
        assert want["listed"] == placed_in["cone"]
        assert want["mapped"] == placed_in["map"]
        assert all(0 < len(w) < ALERTS for w in want.values()), {k: len(v) for k, v in
                                                                  want.items()}
        assert mid_filters < len(want["red"])  # the filters kill fell mid-stream

        factory = Factory(harness.stack.settings)
        try:
            for name, found in made.items():
                got = _read_through_registry(factory, stack.kafka.bootstrap, found.topic,
                                             len(want[name]))
                assert {value["alert_id"] for _, value in got} == want[name], name
                for key, value in got:  # a repeat carries the same key as the first
                    assert key == value["object_id"].encode()
                    assert value["filter_id"] == found.filter_id
        finally:
            factory.close()
        for name, process in processes.items():
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=60)
            assert process.returncode == 0, (name, output.decode()[-3000:])
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
        harness.close()
