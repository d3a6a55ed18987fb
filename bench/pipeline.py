"""Benchmark: the ingest + enrich pipeline on the real services, throughput and latency.

Needs `lanner services up`. Each measurement runs on fresh topics, keyspace and database, with
the reference catalogs the demo loads (Hipparcos with its proper motions, OpenNGC's galaxies
with a 10' overlap) loaded by `lanner catalog load`, ``--processes`` `lanner ingest` processes
(one group) and one `lanner enrich` process, all started and joined before the clock starts.

1. Sustained rate: ``--count`` simulated packets (profile ``--profile``, by default
   ``realistic``) are produced as fast as Kafka takes them; the rate is the alerts enriched over
   the time from the first produce to the last ``internal.enriched`` record read. With the
   pipeline saturated from the first second, that is the highest rate it sustains: produced
   any faster, the lag would grow. ``sustained_alerts_per_s_per_core`` divides by every core of
   the machine (the services run on the same cores).
2. Latency: packets are produced at 250 alerts/s (LSST's design mean) for ``--seconds``, or at
   half the sustained rate when the machine sustains less than 500/s (``latency_rate`` and
   ``latency_rate_rule`` say which). Latency is from the packet's Kafka timestamp (producer
   time, carried through as ``source_timestamp_ms``) to the moment a reader of
   ``internal.enriched`` receives the alert's record: p50 and p99 over every alert.

Prints human lines, then one JSON object as the last line::

    {"profile": ..., "p50_s": ..., "p99_s": ..., "sustained_alerts_per_s": ...,
     "sustained_alerts_per_s_per_core": ..., "latency_rate": ..., "latency_rate_rule": ...,
     "alerts": ..., "latency_alerts": ..., "cores": ..., "ingest_processes": ...}

Run: ``python bench/pipeline.py [--count N] [--seconds S] [--profile realistic|small]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.data import CATALOGS  # noqa: E402
from broker.simulator import AlertSimulator, PacketProfile  # noqa: E402
from broker.storage.cassandra import CassandraConnection  # noqa: E402
from broker.storage.kafka import KafkaClients, produce_all, produce_at_rate  # noqa: E402
from broker.storage.shards import MariaDBShards  # noqa: E402
from broker.streaming import lanner_schemas  # noqa: E402

_TOPICS = ("LANNER_TOPIC_ALERTS_LSST", "LANNER_TOPIC_ALERTS_ZTF", "LANNER_TOPIC_INGESTED",
           "LANNER_TOPIC_ENRICHED", "LANNER_TOPIC_DLQ")


def _env(run: str) -> dict[str, str]:
    return {
        **os.environ,
        "LANNER_BACKEND": "services",
        "LANNER_TOPIC_ALERTS_LSST": f"bench.{run}.lsst",
        "LANNER_TOPIC_ALERTS_ZTF": f"bench.{run}.ztf",
        "LANNER_TOPIC_INGESTED": f"bench.{run}.ingested",
        "LANNER_TOPIC_ENRICHED": f"bench.{run}.enriched",
        "LANNER_TOPIC_DLQ": f"bench.{run}.dlq",
        "LANNER_CASSANDRA_KEYSPACE": f"bench_{run}",
        "LANNER_MARIADB_DATABASE": f"bench_{run}",
        "LANNER_INGEST_GROUP": f"bench-{run}-ingest",
        "LANNER_ENRICH_GROUP": f"bench-{run}-enrich",
        "LANNER_LOG_LEVEL": "WARNING",
    }


def _lanner(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "broker.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _load_catalogs(env: dict[str, str]) -> list[str]:
    """The demo's reference catalogs, loaded as an operator would (`lanner catalog load`)."""
    names = []
    for catalog in CATALOGS:
        with catalog.path() as path:
            args = ["catalog", "load", catalog.name, str(path), "--id-col", catalog.id_col,
                    "--ra-col", catalog.ra_col, "--dec-col", catalog.dec_col,
                    "--kind", catalog.kind]
            if catalog.shape is not None:
                args += ["--major-col", catalog.shape.major_col]
                args += ["--minor-col", catalog.shape.minor_col] if catalog.shape.minor_col else []
                args += ["--pa-col", catalog.shape.pa_col] if catalog.shape.pa_col else []
            if catalog.motion is not None:
                args += ["--pmra-col", catalog.motion.pmra_col, "--pmdec-col",
                         catalog.motion.pmdec_col, "--epoch", str(catalog.motion.epoch_jyear)]
            if catalog.only is not None:
                args += ["--only", f"{catalog.only[0]}={','.join(catalog.only[1])}"]
            if catalog.overlap_deg is not None:
                args += ["--overlap-arcmin", str(catalog.overlap_deg * 60.0)]
            done = subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=REPO,
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                msg = f"loading {catalog.name} failed: {done.stderr[-2000:]}"
                raise RuntimeError(msg)
        names.append(catalog.name)
    return names


def _cleanup(settings: Settings, env: dict[str, str]) -> None:
    keyspace = env["LANNER_CASSANDRA_KEYSPACE"]
    connection = CassandraConnection(hosts=settings.cassandra_hosts, port=settings.cassandra_port,
                                     keyspace=keyspace)
    connection.session().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
    connection.close()
    MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                  password=settings.mariadb_password.get_secret_value(),
                  database=env["LANNER_MARIADB_DATABASE"]).drop_database()
    admin = KafkaClients(bootstrap=settings.kafka_bootstrap).admin()
    for future in admin.delete_topics([env[k] for k in _TOPICS],
                                      operation_timeout=60).values():
        future.result(60)


class Reader(threading.Thread):
    """Reads a topic of ``family`` records (``internal.enriched`` by default) from the start
    and notes when each alert's first record arrives (wall-clock ms), until stopped."""

    def __init__(self, bootstrap: str, topic: str, family: str = "enriched") -> None:
        super().__init__(daemon=True)
        self.family = family
        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"bench-{uuid.uuid4().hex}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 50})
        self.consumer.subscribe([topic])
        self.received: dict[int, tuple[float, int | None]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                for message in self.consumer.consume(num_messages=1000, timeout=0.2):
                    if message.error() is not None:
                        continue
                    now_ms = time.time() * 1000.0
                    record = lanner_schemas.decode(self.family, message.value())
                    self.received.setdefault(record["alert_id"],
                                             (now_ms, record["source_timestamp_ms"]))
        finally:
            self.consumer.close()

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        if len(self.received) < count:
            msg = (f"only {len(self.received)} of {count} alerts read on the topic within "
                   f"{timeout:.0f} s")
            raise RuntimeError(msg)


def _start(settings: Settings, env: dict[str, str], processes: int,
           partitions: int) -> tuple[KafkaClients, list[subprocess.Popen]]:
    clients = KafkaClients(bootstrap=settings.kafka_bootstrap, partitions=partitions)
    clients.ensure_topics([env[k] for k in _TOPICS])
    _load_catalogs(env)
    workers = [_lanner(env, "ingest") for _ in range(processes)] + [_lanner(env, "enrich")]
    time.sleep(10)  # set up, join the groups
    for worker in workers:
        if worker.poll() is not None:
            stderr = worker.stderr.read().decode() if worker.stderr else ""
            raise RuntimeError(f"a stage died: {stderr[-2000:]}")
    return clients, workers


def feed(clients: KafkaClients, topic: str, messages: list[tuple[bytes | None, bytes]],
         reader: Reader, count: int, *, rate: float | None = None,
         timeout: float = 3600.0) -> float:
    """Produce the packets, as fast as Kafka takes them or at ``rate`` a second, then wait
    until the reader has ``count`` records and stop it; when the first was produced (ms).
    The list is emptied once produced, so that its memory is free while the stages work."""
    started_ms = time.time() * 1000.0
    if rate is None:
        produce_all(clients.producer(), topic, messages)
    else:
        produce_at_rate(clients.producer(**{"linger.ms": 0}), topic, messages, rate)
    messages.clear()
    reader.wait_for(count, timeout)
    reader.stopping.set()
    reader.join(30)
    return started_ms


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(60)


def sustained(settings: Settings, count: int, processes: int, partitions: int, seed: int,
              profile: str) -> dict[str, Any]:
    messages = list(AlertSimulator(schema="11.1", seed=seed, profile=profile).encoded(count))
    env = _env(uuid.uuid4().hex[:8])
    workers: list[subprocess.Popen] = []
    try:
        clients, workers = _start(settings, env, processes, partitions)
        reader = Reader(settings.kafka_bootstrap, env["LANNER_TOPIC_ENRICHED"])
        reader.start()
        started_ms = feed(clients, env["LANNER_TOPIC_ALERTS_LSST"], messages, reader, count)
    finally:
        _stop(workers)
        _cleanup(settings, env)
    elapsed = (max(at for at, _ in reader.received.values()) - started_ms) / 1000.0
    rate = count / elapsed
    cores = os.cpu_count() or 1
    print(f"sustained: {count} alerts ingested and enriched in {elapsed:.1f} s with "
          f"{processes} ingest process(es) and one enrich process: {rate:.1f} alerts/s, "
          f"{rate / cores:.1f} per core", flush=True)
    return {"alerts": count, "sustained_alerts_per_s": round(rate, 1),
            "sustained_alerts_per_s_per_core": round(rate / cores, 1), "cores": cores}


def latency(settings: Settings, rate: float, seconds: float, processes: int, partitions: int,
            seed: int, profile: str) -> dict[str, Any]:
    count = max(1, int(rate * seconds))
    messages = list(AlertSimulator(schema="11.1", seed=seed, profile=profile).encoded(count))
    env = _env(uuid.uuid4().hex[:8])
    workers: list[subprocess.Popen] = []
    try:
        clients, workers = _start(settings, env, processes, partitions)
        reader = Reader(settings.kafka_bootstrap, env["LANNER_TOPIC_ENRICHED"])
        reader.start()
        feed(clients, env["LANNER_TOPIC_ALERTS_LSST"], messages, reader, count, rate=rate,
             timeout=seconds + 600)
    finally:
        _stop(workers)
        _cleanup(settings, env)
    latencies = sorted((at - source) / 1000.0 for at, source in reader.received.values()
                       if source)
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"latency at {rate:.1f} alerts/s for {seconds:.0f} s ({len(latencies)} alerts): "
          f"produced -> internal.enriched read: p50 {p50:.2f} s, p99 {p99:.2f} s", flush=True)
    return {"p50_s": round(p50, 3), "p99_s": round(p99, 3), "latency_alerts": len(latencies)}


def arguments(description: str, seed: int) -> argparse.ArgumentParser:
    """The options of a pipeline benchmark (this one and `bench/latency.py`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=3000, help="packets for the sustained run")
    parser.add_argument("--processes", type=int, default=2, help="ingest processes (one group)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the latency run")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--profile", default=PacketProfile.realistic.value,
                        choices=[p.value for p in PacketProfile], help="packet profile")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(__doc__.splitlines()[0], seed=21).parse_args(argv)
    settings = Settings()
    result: dict[str, Any] = {"profile": args.profile, "ingest_processes": args.processes}
    result.update(sustained(settings, args.count, args.processes, args.partitions, args.seed,
                            args.profile))
    sustained_rate = result["sustained_alerts_per_s"]
    if sustained_rate >= 500.0:
        rate, rule = 250.0, "LSST mean (250/s)"
    else:
        rate, rule = sustained_rate / 2.0, "half the sustained rate (below 500/s)"
    result.update({"latency_rate": round(rate, 1), "latency_rate_rule": rule})
    result.update(latency(settings, rate, args.seconds, args.processes, args.partitions,
                          args.seed + 1, args.profile))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
