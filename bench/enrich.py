"""Enrich benchmark on the real services: the confluent-kafka loop against the faust-streaming
agent, on the same ingested alerts and the same catalogs, with the ingest rate of the same run.

Needs `lanner services up` and the ``faust`` extra. Everything lives in a run of its own
(topics ``bench.<run>.*``, keyspace and database ``bench_<run>``, consumer groups
``bench-<run>-*``), all dropped at the end, even on failure.

1. Ingest: ``--ingest-processes`` `lanner ingest` processes (one group; 2, as `lanner run`
   starts) join their group; then ``--count`` simulated packets of the latest schema (profile
   ``--profile``, default ``realistic``) are produced. The rate is archived alerts over the time
   from the first packet produced to the last ``internal.ingested`` record published, as
   bench/ingest.py measures it (not ``lanner ingest --once``, whose start-up, a few seconds of
   connections and a group join, would count against a run of a few thousand alerts).
   The realistic profile's solar-system alerts name no object: ingest dead-letters them.
2. Catalogs, in the run's database: the bundled Hipparcos (stars, moved by their proper
   motions) and OpenNGC's galaxies (type G), loaded as `lanner demo` loads them, and a synthetic
   galaxy catalog of ``--galaxies`` rows (default 10,000,000, about 240 per square degree:
   positions uniform on the sphere, major-axis diameters log-normal around 8 arcsec, axis
   ratios 0.25 to 1, position angles uniform), written as Parquet in a temporary folder and
   loaded like any catalog file. Loading 1e7 rows takes about a minute here. They are loaded
   after ingest, so that ingest does not share the disk with MariaDB writing out the fresh
   load.
3. Enrich, one process of each engine (`lanner enrich --engine confluent|faust`) over the
   ingested records: a first unmeasured confluent run (``--once``) over ``internal.ingested``
   brings the catalogs' pages into MariaDB's and the system's caches, so that the measured runs
   find them alike. Then, ``--rounds`` times (the engines' order alternating from round to
   round), for each engine: the enrichment tables emptied, the engine started on an empty copy
   topic of ``internal.ingested`` and left to join its group, then every ingested record copied
   there (same key, same partition); the rate is alerts over the time from the first record
   copied to the last ``internal.enriched`` record made (its ``enriched_ms``). Each run is a
   new process: its chunk cache starts empty, as after a restart. The CPU time the engine's
   process used meanwhile (from /proc) is reported per alert: the two engines run the same
   enrichment code, so the difference is what their Kafka clients cost.

Per-core figures divide by every core of the machine (the services share them). The figure of
each engine is the median of its rounds. Prints human lines, then one JSON object as the last
line: ``profile``, ``alerts``, ``ingest_alerts_per_s``, ``confluent_alerts_per_s``,
``faust_alerts_per_s``, ``confluent_per_core``, ``faust_per_core``, ``ratio_to_ingest`` (the
faster engine over ingest), ``catalogs`` (name and rows), ``galaxy_rows``, and the runs.

    python bench/enrich.py [--count 3000] [--galaxies 10000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.demo import load_catalogs  # noqa: E402
from broker.domain.alerts import rubin_object_id  # noqa: E402
from broker.domain.catalogs import ShapeSpec  # noqa: E402
from broker.factory import Factory  # noqa: E402
from broker.simulator import AlertSimulator, PacketProfile  # noqa: E402
from broker.storage.cassandra import CassandraConnection  # noqa: E402
from broker.storage.kafka import KafkaClients, produce_all  # noqa: E402
from broker.storage.refcat import open_catalog_file  # noqa: E402
from broker.storage.shards import MariaDBShards  # noqa: E402
from broker.streaming import lanner_schemas, wire  # noqa: E402
from broker.streaming.schemas import latest_version  # noqa: E402

ENGINES = ("confluent", "faust")
PARTITIONS = 4
GALAXIES = "synthetic_galaxies"


class Run:
    """The names of one benchmark run, and what its processes are told."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.id = uuid.uuid4().hex[:8]
        self.database = self.keyspace = f"bench_{self.id}"
        prefix = f"bench.{self.id}"
        self.lsst, self.ztf = f"{prefix}.lsst", f"{prefix}.ztf"
        self.ingested, self.dlq = f"{prefix}.ingested", f"{prefix}.dlq"
        self.enriched = f"{prefix}.enriched"
        self.ingest_group = f"bench-{self.id}-ingest"
        self.topics = [self.lsst, self.ztf, self.ingested, self.dlq, self.enriched]
        self.groups = [self.ingest_group, f"bench-{self.id}-warmup"]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "LANNER_BACKEND": "services",
            "LANNER_TOPIC_ALERTS_LSST": self.lsst, "LANNER_TOPIC_ALERTS_ZTF": self.ztf,
            "LANNER_TOPIC_INGESTED": self.ingested, "LANNER_TOPIC_DLQ": self.dlq,
            "LANNER_TOPIC_ENRICHED": self.enriched,
            "LANNER_CASSANDRA_KEYSPACE": self.keyspace,
            "LANNER_MARIADB_DATABASE": self.database,
            "LANNER_INGEST_GROUP": self.ingest_group,
            "LANNER_LOG_LEVEL": "WARNING",
            **extra,
        }

    def engine_env(self, engine: str, round_: int) -> dict[str, str]:
        """An engine run's own input copy, output topic and consumer group."""
        name = f"{engine}{round_}"
        topics = {"LANNER_TOPIC_INGESTED": f"bench.{self.id}.ingested.{name}",
                  "LANNER_TOPIC_ENRICHED": f"bench.{self.id}.enriched.{name}",
                  "LANNER_ENRICH_GROUP": f"bench-{self.id}-{name}"}
        self.topics += [topics["LANNER_TOPIC_INGESTED"], topics["LANNER_TOPIC_ENRICHED"]]
        self.groups.append(topics["LANNER_ENRICH_GROUP"])
        return self.env(**topics)

    def settings_of_run(self) -> Settings:
        return self.settings.model_copy(update={"mariadb_database": self.database,
                                                "cassandra_keyspace": self.keyspace})

    def cleanup(self) -> None:
        """Drop everything the run made; each step tried even if another fails."""
        s = self.settings
        steps = []
        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
        steps.append(lambda: [f.result(60) for f in admin.delete_topics(
            list(dict.fromkeys(self.topics)), operation_timeout=60).values()])
        steps.append(lambda: [f.result(60) for f in admin.delete_consumer_groups(
            self.groups, request_timeout=30).values()])

        def drop_keyspace() -> None:
            connection = CassandraConnection(hosts=s.cassandra_hosts, port=s.cassandra_port,
                                             keyspace=self.keyspace)
            try:
                connection.session().execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}",
                                             timeout=120)
            finally:
                connection.close()

        def drop_database() -> None:
            shards = MariaDBShards(addresses=s.shard_addresses, user=s.mariadb_user,
                                   password=s.mariadb_password.get_secret_value(),
                                   database=self.database)
            try:
                shards.drop_database()
            finally:
                shards.close()

        steps += [drop_keyspace, drop_database]
        for step in steps:
            try:
                step()
            except Exception as exc:  # report and go on cleaning
                print(f"cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)


def synthetic_galaxies(path: Path, rows: int, seed: int, batch_rows: int = 1_000_000) -> None:
    """An all-sky galaxy catalog as Parquet: uniform positions, log-normal sizes."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), ("ra", pa.float64()), ("dec", pa.float64()),
                        ("major_arcsec", pa.float32()), ("minor_arcsec", pa.float32()),
                        ("pa_deg", pa.float32())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, batch_rows):
            n = min(batch_rows, rows - start)
            major = np.clip(rng.lognormal(np.log(8.0), 0.5, n), 2.0, 120.0)
            writer.write_batch(pa.record_batch([
                pa.array(np.arange(start, start + n, dtype=np.int64) + 5_000_000_000),
                pa.array(rng.uniform(0.0, 360.0, n)),
                pa.array(np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))),
                pa.array(major.astype(np.float32)),
                pa.array((major * rng.uniform(0.25, 1.0, n)).astype(np.float32)),
                pa.array(rng.uniform(0.0, 180.0, n).astype(np.float32)),
            ], schema=schema))


def load_everything(run: Run, galaxies: int, seed: int) -> list[dict[str, Any]]:
    """The bundled catalogs and the synthetic galaxies, in the run's database."""
    factory = Factory(run.settings_of_run())
    try:
        started = time.perf_counter()
        load_catalogs(factory)
        print(f"bundled catalogs loaded in {time.perf_counter() - started:.1f} s", flush=True)
        with tempfile.TemporaryDirectory(prefix="lanner-bench-") as folder:
            path = Path(folder) / "galaxies.parquet"
            started = time.perf_counter()
            synthetic_galaxies(path, galaxies, seed)
            print(f"{galaxies:,} synthetic galaxies generated in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            source = open_catalog_file(path, 500_000)
            try:
                report = factory.refcats.load(
                    GALAXIES, source.batches, "id", "ra", "dec", kind="galaxy",
                    shape=ShapeSpec("major_arcsec", "minor_arcsec", "pa_deg", unit="arcsec"))
            finally:
                source.close()
        print(f"{report.rows:,} synthetic galaxies loaded in {report.seconds:.1f} s "
              f"({report.rows / report.seconds:,.0f} rows/s, +{report.overlap_rows:,} "
              "overlap rows)", flush=True)
        return [{"name": e["name"], "rows": e["rows"], "kind": e["kind"]}
                for e in factory.refcats.list()]
    finally:
        factory.close()


def empty_enrichment(run: Run) -> None:
    """Empty the enrichment tables: each engine run starts from none stored."""
    factory = Factory(run.settings_of_run())
    try:
        factory.catalog.shards.all_shards(  # type: ignore[attr-defined]
            lambda cursor: [cursor.execute(f"DELETE FROM {table}")
                            for table in ("object_context", "object_matches")])
    finally:
        factory.close()


def lanner(env: dict[str, str], *args: str) -> subprocess.Popen:
    """A ``lanner`` process; its output goes to temporary files (a pipe left unread would
    block a process that logs much, a store retrying for instance)."""
    # They outlive this call (read once the process has ended), and go with the interpreter.
    files = {"stdout": tempfile.TemporaryFile(),  # noqa: SIM115
             "stderr": tempfile.TemporaryFile()}  # noqa: SIM115
    process = subprocess.Popen([sys.executable, "-m", "broker.cli", *args], cwd=REPO,
                               env=env, **files)
    OUTPUTS[process.pid] = files
    return process


#: The output files of each `lanner` process, by pid.
OUTPUTS: dict[int, dict[str, Any]] = {}


def output(process: subprocess.Popen, stream: str = "stderr", tail: int = 2000) -> str:
    """The end of what a `lanner` process wrote to ``stream``."""
    file = OUTPUTS[process.pid][stream]
    file.seek(0)
    return file.read().decode(errors="replace")[-tail:]


def died(process: subprocess.Popen) -> RuntimeError:
    return RuntimeError(f"{process.args} ended with {process.returncode}: {output(process)}")


def stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM each process, wait for it, fail if it did not end cleanly."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=120)
        if process.returncode != 0:
            raise died(process)


def cpu_seconds(process: subprocess.Popen) -> float:
    """User and system CPU time of a live process so far (Linux: /proc/<pid>/stat)."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_joined(bootstrap: str, group: str, topic: str, processes: list[subprocess.Popen],
                timeout: float = 120.0) -> None:
    """Until the group is stable and its members own every partition of ``topic``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise died(process)
        group_info = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
        owned = sum(1 for m in group_info.members for tp in m.assignment.topic_partitions
                    if tp.topic == topic)
        if getattr(group_info.state, "name", "") == "STABLE" and owned == PARTITIONS:
            return
        time.sleep(0.2)
    raise RuntimeError(f"group {group} did not take {topic} within {timeout:.0f} s")


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float,
               processes: list[subprocess.Popen]) -> list[Any]:
    """Every message of ``topic`` once it holds ``expected`` (watermarks polled meanwhile, so
    that reading costs the measured processes nothing)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        deadline = time.monotonic() + timeout
        while sum(consumer.get_watermark_offsets(tp, timeout=10)[1]
                  for tp in partitions) < expected:
            for process in processes:
                if process.poll() is not None:
                    raise died(process)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic} did not reach {expected} records in {timeout} s")
            time.sleep(0.5)
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        out: list[Any] = []
        while len(out) < expected:
            out += [m for m in consumer.consume(num_messages=1000, timeout=1.0)
                    if m.error() is None]
        return out
    finally:
        consumer.close()


def ingest(run: Run, count: int, processes: int, seed: int, profile: str) -> dict[str, Any]:
    """Packets onto the alert topic, through ``processes`` ingest processes; the rate."""
    settings = run.settings
    clients = KafkaClients(bootstrap=settings.kafka_bootstrap, partitions=PARTITIONS)
    clients.ensure_topics(run.topics)
    messages = list(AlertSimulator(schema=latest_version(), seed=seed,
                                   profile=profile).encoded(count))
    expected = sum(rubin_object_id(wire.decode(value)[1]) is not None for _, value in messages)
    workers = [lanner(run.env(), "ingest") for _ in range(processes)]
    try:
        wait_joined(settings.kafka_bootstrap, run.ingest_group, run.lsst, workers)
        started_ms = time.time() * 1000
        produce_all(clients.producer(), run.lsst, messages)
        del messages
        ingested = read_topic(settings.kafka_bootstrap, run.ingested, expected, 1800, workers)
    finally:
        stop(workers)
    records = [lanner_schemas.decode("ingested", m.value()) for m in ingested]
    elapsed = (max(r["ingested_ms"] for r in records) - started_ms) / 1000
    rate = len(records) / elapsed
    print(f"ingest: {len(records)} alerts archived of {count} packets ({count - expected} "
          f"naming no object) in {elapsed:.1f} s with {processes} processes: {rate:.0f} alerts/s",
          flush=True)
    return {"alerts": len(records), "seconds": elapsed, "rate": rate, "messages": ingested}


def warm_up(run: Run, alerts: int) -> float:
    """An unmeasured confluent run over internal.ingested (see the module docstring)."""
    started = time.perf_counter()
    process = lanner(run.env(LANNER_ENRICH_GROUP=f"bench-{run.id}-warmup"), "enrich", "--once")
    process.wait(timeout=3600)
    if process.returncode != 0:
        raise died(process)
    said = output(process, "stdout")
    if f"enriched {alerts} alerts" not in said:
        raise RuntimeError(f"warm-up enrich did not enrich {alerts} alerts: {said}")
    return time.perf_counter() - started


def enrich(run: Run, engine: str, round_: int, ingested: list[Any]) -> dict[str, Any]:
    """One engine's run over a copy of the ingested records; its rate."""
    settings = run.settings
    env = run.engine_env(engine, round_)
    source, output = env["LANNER_TOPIC_INGESTED"], env["LANNER_TOPIC_ENRICHED"]
    clients = KafkaClients(bootstrap=settings.kafka_bootstrap, partitions=PARTITIONS)
    clients.ensure_topics([source, output])
    empty_enrichment(run)
    process = lanner(env, "enrich", "--engine", engine)
    try:
        wait_joined(settings.kafka_bootstrap, env["LANNER_ENRICH_GROUP"], source, [process])
        producer = clients.producer()
        cpu_before = cpu_seconds(process)
        started_ms = time.time() * 1000
        for message in ingested:  # the same bytes on the same partitions
            while True:
                try:
                    producer.produce(source, value=message.value(), key=message.key(),
                                     partition=message.partition())
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        producer.flush(120)
        enriched = read_topic(settings.kafka_bootstrap, output, len(ingested), 3600, [process])
        cpu = cpu_seconds(process) - cpu_before
    finally:
        stop([process])
    records = [lanner_schemas.decode("enriched", m.value()) for m in enriched]
    alerts = len({r["alert_id"] for r in records})
    if alerts != len(ingested):
        raise RuntimeError(f"{engine}: {alerts} alerts enriched of {len(ingested)}")
    elapsed = (max(r["enriched_ms"] for r in records) - started_ms) / 1000
    rate = alerts / elapsed
    print(f"enrich, {engine} engine (round {round_}): {alerts} alerts in {elapsed:.1f} s: "
          f"{rate:.0f} alerts/s; the engine's process used {cpu:.1f} s of CPU "
          f"({cpu / alerts * 1000:.2f} ms per alert)", flush=True)
    return {"engine": engine, "round": round_, "seconds": round(elapsed, 2),
            "alerts_per_s": round(rate, 1), "cpu_ms_per_alert": round(cpu / alerts * 1000, 3)}


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def orders(rounds: int) -> Iterator[tuple[int, str]]:
    """(round, engine) in the order run: confluent first in odd rounds, faust in even ones."""
    for round_ in range(1, rounds + 1):
        for engine in (ENGINES if round_ % 2 else ENGINES[::-1]):
            yield round_, engine


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="packets to simulate")
    parser.add_argument("--galaxies", type=int, default=10_000_000,
                        help="rows of the synthetic galaxy catalog")
    parser.add_argument("--ingest-processes", type=int, default=2,
                        help="ingest processes (one group)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="measured runs of each engine (order alternating)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--profile", default=PacketProfile.realistic.value,
                        choices=[p.value for p in PacketProfile], help="packet profile")
    args = parser.parse_args(argv)
    run = Run(Settings())
    cores = os.cpu_count() or 1
    print(f"run {run.id}: {args.count} packets ({args.profile}), {args.galaxies:,} synthetic "
          f"galaxies, {cores} cores", flush=True)
    # A stop by signal cleans up too.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        ingested = ingest(run, args.count, args.ingest_processes, args.seed, args.profile)
        catalogs = load_everything(run, args.galaxies, args.seed)
        alerts = ingested["alerts"]
        warm_s = warm_up(run, alerts)
        print(f"warm-up (confluent, --once, start-up included): {warm_s:.1f} s", flush=True)
        runs = [enrich(run, engine, round_, ingested["messages"])
                for round_, engine in orders(args.rounds)]
    finally:
        run.cleanup()
    rates = {engine: statistics.median(r["alerts_per_s"] for r in runs if r["engine"] == engine)
             for engine in ENGINES}
    best = max(rates, key=rates.__getitem__)
    result = {
        "profile": args.profile,
        "alerts": alerts,
        "ingest_alerts_per_s": round(ingested["rate"], 1),
        "confluent_alerts_per_s": round(rates["confluent"], 1),
        "faust_alerts_per_s": round(rates["faust"], 1),
        "confluent_per_core": round(rates["confluent"] / cores, 1),
        "faust_per_core": round(rates["faust"] / cores, 1),
        "ratio_to_ingest": round(rates[best] / ingested["rate"], 3),
        "faster": best,
        "catalogs": {c["name"]: c["rows"] for c in catalogs},
        "galaxy_rows": args.galaxies,
        "ingest_processes": args.ingest_processes,
        "cores": cores,
        "warmup_seconds": round(warm_s, 1),
        "runs": runs,
    }
    print(f"faster: {best} ({rates[best]:.0f} alerts/s against "
          f"{min(rates.values()):.0f}); enrich/ingest {result['ratio_to_ingest']}", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
