"""Ingest benchmark on the real services: Kafka -> decode -> Cassandra + MariaDB shards ->
internal.ingested, offsets committed.

Needs `lanner services up`. Two measurements, each on fresh topics, keyspace and database:

1. Throughput: ``--processes`` `lanner ingest` processes (one consumer group) start and join
   their group; then ``--count`` full-size simulated v11.1 packets (three cutouts each, packet
   profile ``--profile``, by default ``realistic``: Rubin's April-2026 sizes, about 176 kB with
   a year of history; ``small`` gives the earlier runs' 37 kB packets) are produced as fast as
   Kafka takes them. The rate is archived alerts over the time from the first produce to the
   last ``internal.ingested`` record published. The realistic profile's solar-system alerts
   (about one in ten) name no diaObject; ingest archives them under their ssObjectId
   (``broker.domain.alerts.rubin_object_id``), and ``dead_lettered_expected`` counts the
   packets that name no object at all (none in a simulated stream).
   ``alerts_per_s_per_core`` divides by every core of the machine (the services run on the
   same cores). The decode rate of the same packets (bench/decode.py's measure, same run) gives
   ``ratio_to_decode``.
2. Latency: the same number of ingest processes run while packets are produced at ``--rate``
   per second for ``--seconds``; latency is the ingested record's publish time minus the
   packet's Kafka timestamp (producer time), p50 and p99.

Prints human lines, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.domain.alerts import rubin_object_id  # noqa: E402
from broker.simulator import AlertSimulator, PacketProfile  # noqa: E402
from broker.storage.cassandra import CassandraConnection  # noqa: E402
from broker.storage.kafka import KafkaClients, produce_all, produce_at_rate  # noqa: E402
from broker.storage.shards import MariaDBShards  # noqa: E402
from broker.streaming import lanner_schemas, wire  # noqa: E402


def _env(settings: Settings, run: str) -> dict[str, str]:
    return {
        **os.environ,
        "LANNER_BACKEND": "services",
        "LANNER_TOPIC_ALERTS_LSST": f"bench.{run}.lsst",
        "LANNER_TOPIC_ALERTS_ZTF": f"bench.{run}.ztf",
        "LANNER_TOPIC_INGESTED": f"bench.{run}.ingested",
        "LANNER_TOPIC_DLQ": f"bench.{run}.dlq",
        "LANNER_CASSANDRA_KEYSPACE": f"bench_{run}",
        "LANNER_MARIADB_DATABASE": f"bench_{run}",
        "LANNER_INGEST_GROUP": f"bench-{run}",
        "LANNER_LOG_LEVEL": "WARNING",
    }


def _prepare(settings: Settings, env: dict[str, str], partitions: int) -> KafkaClients:
    clients = KafkaClients(bootstrap=settings.kafka_bootstrap, partitions=partitions)
    clients.ensure_topics([env[k] for k in ("LANNER_TOPIC_ALERTS_LSST", "LANNER_TOPIC_ALERTS_ZTF",
                                            "LANNER_TOPIC_INGESTED", "LANNER_TOPIC_DLQ")])
    return clients


def _cleanup(settings: Settings, env: dict[str, str]) -> None:
    connection = CassandraConnection(hosts=settings.cassandra_hosts, port=settings.cassandra_port,
                                     keyspace=env["LANNER_CASSANDRA_KEYSPACE"])
    connection.session().execute(f"DROP KEYSPACE IF EXISTS {env['LANNER_CASSANDRA_KEYSPACE']}",
                                 timeout=120)
    connection.close()
    MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
             password=settings.mariadb_password.get_secret_value(),
             database=env["LANNER_MARIADB_DATABASE"]).drop_database()
    admin = KafkaClients(bootstrap=settings.kafka_bootstrap).admin()
    topics = [env[k] for k in ("LANNER_TOPIC_ALERTS_LSST", "LANNER_TOPIC_ALERTS_ZTF",
                               "LANNER_TOPIC_INGESTED", "LANNER_TOPIC_DLQ")]
    for future in admin.delete_topics(topics, operation_timeout=60).values():
        future.result(60)


def _ingest(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "ingest", *args], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(workers: list[subprocess.Popen]) -> None:
    """SIGTERM every ingest process, then wait for each."""
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait(60)


def _read_ingested(bootstrap: str, topic: str, expected: int, timeout: float) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=1.0):
                if message.error() is None:
                    records.append(lanner_schemas.decode("ingested", message.value()))
    finally:
        consumer.close()
    return records


def _archivable(messages: list[tuple[bytes, bytes]]) -> int:
    """How many packets ingest archives: those that name an object, a diaObject or a known
    solar-system object (the others go to the DLQ)."""
    return sum(rubin_object_id(wire.decode(value)[1]) is not None for _, value in messages)


def decode_rate(messages: list[tuple[bytes, bytes]]) -> float:
    started = time.perf_counter()
    for _, value in messages:
        wire.decode(value)
    return len(messages) / (time.perf_counter() - started)


def throughput(settings: Settings, count: int, processes: int, partitions: int,
               seed: int, profile: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    env = _env(settings, run)
    clients = _prepare(settings, env, partitions)
    messages = list(AlertSimulator(schema="11.1", seed=seed, profile=profile).encoded(count))
    expected = _archivable(messages)
    decode = max(decode_rate(messages) for _ in range(2))
    packet_bytes = int(statistics.median(len(v) for _, v in messages))
    print(f"{count} packets ({profile} profile, {packet_bytes} B median, {count - expected} "
          f"naming no object) on {partitions} partitions; decode alone {decode:.0f} alerts/s",
          flush=True)
    # The processes start, create their tables and join their group before the clock starts;
    # the rate is from the first packet produced to the last alert's record published.
    workers = [_ingest(env) for _ in range(processes)]
    try:
        time.sleep(8)
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(f"ingest died: {worker.stderr.read().decode()[-2000:]}")
        started_ms = time.time() * 1000
        produce_all(clients.producer(), env["LANNER_TOPIC_ALERTS_LSST"], messages)
        del messages
        records = _read_ingested(settings.kafka_bootstrap, env["LANNER_TOPIC_INGESTED"], expected,
                                 1800)
    finally:
        _stop(workers)
        _cleanup(settings, env)
    archived = len({r["alert_id"] for r in records})
    elapsed = (max(r["ingested_ms"] for r in records) - started_ms) / 1000
    rate = archived / elapsed
    cores = os.cpu_count() or 1
    print(f"ingest: {archived} alerts in {elapsed:.1f} s with {processes} process(es): "
          f"{rate:.0f} alerts/s, {rate / cores:.0f} per core", flush=True)
    return {"alerts": archived, "seconds": round(elapsed, 2), "alerts_per_s": round(rate, 1),
            "alerts_per_s_per_core": round(rate / cores, 1),
            "decode_alerts_per_s": round(decode, 1),
            "ratio_to_decode": round(rate / decode, 3), "cores": cores, "processes": processes,
            "packet_bytes": packet_bytes, "profile": profile,
            "dead_lettered_expected": count - expected}


def latency(settings: Settings, rate: float, seconds: float, seed: int,
            processes: int, profile: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    env = _env(settings, run)
    clients = _prepare(settings, env, 4)
    count = int(rate * seconds)
    messages = list(AlertSimulator(schema="11.1", seed=seed, profile=profile).encoded(count))
    expected = _archivable(messages)
    workers = [_ingest(env) for _ in range(processes)]
    try:
        time.sleep(8)  # let the consumers set up and join their group before the clock starts
        produce_at_rate(clients.producer(**{"linger.ms": 0}), env["LANNER_TOPIC_ALERTS_LSST"],
                        messages, rate)
        records = _read_ingested(settings.kafka_bootstrap, env["LANNER_TOPIC_INGESTED"], expected,
                                 seconds + 120)
    finally:
        _stop(workers)
        _cleanup(settings, env)
    latencies = sorted(r["ingested_ms"] - r["source_timestamp_ms"] for r in records
                       if r["source_timestamp_ms"])
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"latency at {rate:.0f} alerts/s over {seconds:.0f} s ({len(latencies)} alerts, "
          f"{processes} process(es)): "
          f"p50 {p50} ms, p99 {p99} ms", flush=True)
    return {"latency_p50_ms": p50, "latency_p99_ms": p99, "latency_rate": rate,
            "latency_alerts": len(latencies)}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6000, help="packets for the throughput run")
    parser.add_argument("--processes", type=int, default=2, help="ingest processes (one group)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the alert topic")
    parser.add_argument("--rate", type=float, default=250.0, help="alerts/s for the latency run")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of the latency run")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--profile", default=PacketProfile.realistic.value,
                        choices=[p.value for p in PacketProfile], help="packet profile")
    args = parser.parse_args()
    settings = Settings()
    result = throughput(settings, args.count, args.processes, args.partitions, args.seed,
                        args.profile)
    result.update(latency(settings, args.rate, args.seconds, args.seed + 1, args.processes,
                          args.profile))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
