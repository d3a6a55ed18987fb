"""Benchmark: watchlist matching, in memory and live on the real services.

1. ``batch_ms``: ``--cones`` cones (default 1,000,000) uniform on the sky with radii of the
   ``--radii`` mix (default ``wide``: log-uniform between 1'' and 1,800'', so every filing
   order of the index is used, and a tenth of the cones are wider than 8'; see `RADII`),
   indexed by `broker.domain.watchlists.ConeIndex`; then batches of ``--batch`` positions
   (default 10,000, uniform on the sky) are matched,
   ``--repeats`` times; the median time per batch, one core. ``build_s`` is the index's build.
2. ``live_after_s`` (needs `lanner services up`; skipped with ``--no-live``): fresh topics,
   keyspace and database; `lanner ingest`, `lanner enrich` and `lanner serve` run; a user and
   a token are made with `lanner users add` / `lanner tokens issue`; ``--cones`` cones (one of
   them around a chosen position) are uploaded as CSV over the API (``upload_s``);
   from the upload's answer on, a simulated packet at that position is produced every 0.5 s,
   and ``live_after_s`` is the time from the answer to the first ``internal.enriched`` record
   that names the cone.
3. ``retro_s`` (needs `lanner services up`; with ``--retro``): a fresh database on the shards
   gets ``--objects`` synthetic archived objects (default 10,000,000, uniform on the sky, bulk
   loaded into the chunked ``objects`` table as ingest would place them) and a watchlist of the
   ``--cones`` cones; then the retroactive job (`broker.retro.run_job`, what the API's job
   runner runs) matches every object against it: ``retro_s`` is its time, ``retro_hits`` what
   it found.

The last line of output is one JSON object::

    {"cones": ..., "batch": ..., "batch_ms": ..., "build_s": ..., "live_after_s": ...,
     "upload_s": ..., "retro_s": null, "archive_objects": null, "matches_per_batch": ...}

Run: ``python bench/watchlist.py [--cones N] [--batch N] [--no-live]``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.domain.watchlists import ConeIndex, Cones  # noqa: E402
from broker.simulator import AlertSimulator  # noqa: E402
from broker.storage.kafka import KafkaClients  # noqa: E402
from broker.streaming import lanner_schemas, wire  # noqa: E402
from tests.support.alerts import placed  # noqa: E402

_TOPICS = ("LANNER_TOPIC_ALERTS_LSST", "LANNER_TOPIC_ALERTS_ZTF", "LANNER_TOPIC_INGESTED",
           "LANNER_TOPIC_ENRICHED", "LANNER_TOPIC_DLQ")


def _sky(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))


#: Radius mixes (arcsec). ``wide``: log-uniform over the whole allowed range, 1'' to 1,800''
#: (a million such cones cover the sky 1.24 times over: a worst case, where most objects are
#: hits). ``typical``: log-uniform 1'' to 30'' (the radii catalogue matching uses: 1.5''
#: Sherlock's synonym radius, 2'' Gaia in Babamul, 30'' its point-source catalogue), and one cone
#: in a hundred log-uniform 30'' to 1,800'' (galaxies, clusters).
RADII = ("wide", "typical")


def cones(n: int, seed: int, radii: str = "wide") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ra, dec = _sky(rng, n)
    if radii == "wide":
        return ra, dec, np.exp(rng.uniform(math.log(1.0), math.log(1800.0), n))
    radius = np.exp(rng.uniform(math.log(1.0), math.log(30.0), n))
    wide = rng.random(n) < 0.01
    radius[wide] = np.exp(rng.uniform(math.log(30.0), math.log(1800.0), int(wide.sum())))
    return ra, dec, radius


def in_memory(n: int, batch: int, repeats: int, seed: int, radii: str) -> dict[str, Any]:
    ra, dec, radius = cones(n, seed, radii)
    started = time.perf_counter()
    index = ConeIndex(ra, dec, radius)
    build = time.perf_counter() - started
    rng = np.random.default_rng(seed + 1)
    times, found = [], []
    for _ in range(repeats):
        pra, pdec = _sky(rng, batch)
        started = time.perf_counter()
        points, _, _ = index.match(pra, pdec)
        times.append(time.perf_counter() - started)
        found.append(points.size)
    batch_ms = statistics.median(times) * 1000.0
    print(f"{n:,} cones indexed in {build:.2f} s; {batch:,} positions matched in "
          f"{batch_ms:.1f} ms (median of {repeats}), {statistics.median(found):.0f} matches "
          "per batch", flush=True)
    return {"cones": n, "batch": batch, "batch_ms": round(batch_ms, 2),
            "build_s": round(build, 3), "matches_per_batch": statistics.median(found)}


def _env(run: str) -> dict[str, str]:
    return {**os.environ, "LANNER_BACKEND": "services",
            "LANNER_TOPIC_ALERTS_LSST": f"bench.{run}.lsst",
            "LANNER_TOPIC_ALERTS_ZTF": f"bench.{run}.ztf",
            "LANNER_TOPIC_INGESTED": f"bench.{run}.ingested",
            "LANNER_TOPIC_ENRICHED": f"bench.{run}.enriched",
            "LANNER_TOPIC_DLQ": f"bench.{run}.dlq",
            "LANNER_CASSANDRA_KEYSPACE": f"bench_{run}", "LANNER_MARIADB_DATABASE": f"bench_{run}",
            "LANNER_INGEST_GROUP": f"bench-{run}-ingest",
            "LANNER_ENRICH_GROUP": f"bench-{run}-enrich", "LANNER_LOG_LEVEL": "WARNING"}


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "broker.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = f"lanner {' '.join(args)} failed: {done.stderr[-2000:]}"
        raise RuntimeError(msg)
    return done.stdout


def _first_hit(settings: Settings, clients: KafkaClients, env: dict[str, str],
               watchlist_id: int, target: tuple[float, float], answered: float,
               seed: int) -> float | None:
    """Produce a packet at ``target`` every 0.5 s until an enriched record names the cone;
    the seconds from ``answered`` to that record (None after two minutes)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap,
                         "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([env["LANNER_TOPIC_ENRICHED"]])
    producer = clients.producer(**{"linger.ms": 0})
    packets = iter(AlertSimulator(schema="11.1", seed=seed).packets(1000))
    next_send = answered
    object_id = 990_000_000_000
    try:
        while time.monotonic() - answered < 120:
            if time.monotonic() >= next_send:
                object_id += 1
                record = placed(next(packets), object_id, *target)
                producer.produce(env["LANNER_TOPIC_ALERTS_LSST"], key=str(object_id).encode(),
                                 value=wire.encode(record, 1101))
                producer.poll(0)
                next_send += 0.5
            for message in consumer.consume(num_messages=100, timeout=0.1):
                if message.error() is not None:
                    continue
                enriched = lanner_schemas.decode("enriched", message.value())
                if any(w["watchlist_id"] == watchlist_id and w["cone_name"] == "target"
                       for w in enriched["watchlists"]):
                    return time.monotonic() - answered
    finally:
        consumer.close()
    return None


def live(settings: Settings, n: int, seed: int, port: int, radii: str) -> dict[str, Any]:
    from bench.pipeline import _cleanup  # noqa: PLC0415

    env = _env(uuid.uuid4().hex[:8])
    clients = KafkaClients(bootstrap=settings.kafka_bootstrap, partitions=2)
    clients.ensure_topics([env[k] for k in _TOPICS])
    logs = tempfile.TemporaryDirectory(prefix="lanner-bench-")
    workers = []
    try:
        _cli(env, "users", "add", "bench", "--tier", "power")
        token = _cli(env, "tokens", "issue", "bench").strip().splitlines()[-1]
        for args in (("ingest",), ("enrich",), ("serve", "--port", str(port))):
            log = Path(logs.name, f"{args[0]}.log").open("wb")  # noqa: SIM115 (closed below)
            workers.append((subprocess.Popen([sys.executable, "-m", "broker.cli", *args],
                                             cwd=REPO, env=env, stdout=log, stderr=log), log))
        time.sleep(10)
        # n cones in all (the tier's most): n - 1 random ones and the target.
        ra, dec, radius = cones(n - 1, seed, radii)
        target = (123.456, -23.456)
        body = io.StringIO()
        body.write("name,ra,dec,radius\n")
        body.writelines(f"c{i},{a:.7f},{d:.7f},{r:.3f}\n"
                        for i, (a, d, r) in enumerate(zip(ra, dec, radius, strict=True)))
        body.write(f"target,{target[0]},{target[1]},2\n")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/watchlists?name=bench", method="POST",
            data=body.getvalue().encode(), headers={"Authorization": f"Bearer {token}",
                                                    "Content-Type": "text/csv"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=600) as answer:  # noqa: S310
                watchlist_id = json.loads(answer.read())["watchlist_id"]
        except urllib.error.HTTPError as exc:
            msg = f"the upload was refused: {exc.code} {exc.read()[:500]!r}"
            raise RuntimeError(msg) from None
        answered = time.monotonic()
        live_after = _first_hit(settings, clients, env, watchlist_id, target, answered, seed)
    finally:
        for worker, _ in workers:
            worker.terminate()
        for worker, log in workers:
            worker.wait(60)
            log.close()
        _cleanup(settings, env)
        logs.cleanup()
    print(f"upload of {n:,} cones answered in {answered - started:.1f} s; first live hit "
          f"{live_after if live_after is None else round(live_after, 2)} s after", flush=True)
    return {"live_after_s": None if live_after is None else round(live_after, 2),
            "upload_s": round(answered - started, 2)}


def _archive(settings: Settings, database: str, n: int, seed: int) -> Any:
    """A fresh chunked catalog on the shards holding ``n`` synthetic objects."""
    import pyarrow as pa  # noqa: PLC0415

    from broker.domain.sky import Chunker, hpx29  # noqa: PLC0415
    from broker.storage import schema  # noqa: PLC0415
    from broker.storage.catalog import ChunkedCatalog  # noqa: PLC0415
    from broker.storage.shards import MariaDBShards  # noqa: PLC0415

    shards = MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                           password=settings.mariadb_password.get_secret_value(),
                           database=database)
    chunker = Chunker(settings.chunk_stripes, settings.chunk_sub_stripes)
    catalog = ChunkedCatalog(shards=shards, chunker=chunker)
    catalog.setup()
    columns = ("object_id", "survey", "chunk_id", "hpx29", "ra", "dec", "n_detections",
               *(f"{b}_n" for b in "ugrizy"), "position_mjd", "position_source_id")
    assert set(columns) <= set(schema.columns("objects"))
    rng = np.random.default_rng(seed)
    step = 500_000
    with tempfile.TemporaryDirectory(prefix="lanner-bench-") as folder:
        for first in range(0, n, step):
            size = min(step, n - first)
            ra, dec = _sky(rng, size)
            chunks = chunker.locate(ra, dec)
            shard_of = catalog.placement.shards_of(chunks)
            zeros = np.zeros(size, dtype=np.int64)
            table = pa.table({
                "object_id": pa.array([str(10**12 + first + i) for i in range(size)]),
                "survey": pa.array(["lsst"] * size), "chunk_id": pa.array(chunks),
                "hpx29": pa.array(hpx29(ra, dec)), "ra": pa.array(ra), "dec": pa.array(dec),
                "n_detections": pa.array(np.ones(size, dtype=np.int64)),
                **{f"{b}_n": pa.array(zeros) for b in "ugrizy"},
                "position_mjd": pa.array(np.full(size, 60000.0)),
                "position_source_id": pa.array(np.arange(first, first + size, dtype=np.int64))})
            for shard in range(len(shards)):
                part = table.filter(pa.array(shard_of == shard))
                shards.run(shard, lambda cursor, p=part: shards.dialect.bulk_insert(
                    cursor, "objects", columns, p, folder))
    return catalog


def retro(settings: Settings, n_cones: int, n_objects: int, seed: int,
          radii: str) -> dict[str, Any]:
    from broker.retro import JobStore, run_job  # noqa: PLC0415
    from broker.storage.watchlists import WatchlistStore  # noqa: PLC0415
    from broker.storage.watchmaps import WatchmapStore  # noqa: PLC0415

    database = f"bench_retro_{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    catalog = _archive(settings, database, n_objects, seed + 7)
    loaded = time.perf_counter() - started
    try:
        shards = catalog.shards
        watchlists = WatchlistStore(shards)
        ra, dec, radius = cones(n_cones, seed, radii)
        made = watchlists.create("bench", "retro", Cones([f"c{i}" for i in range(n_cones)],
                                                         ra, dec, radius))
        jobs = JobStore(shards)
        job = jobs.queue("bench", "watchlist_retro", made.watchlist_id, made.version)
        started = time.perf_counter()
        hits = run_job(job, jobs, catalog, watchlists, WatchmapStore(shards))
        seconds = time.perf_counter() - started
    finally:
        catalog.shards.drop_database()
        catalog.shards.close()
    print(f"{n_objects:,} archived objects loaded in {loaded:.0f} s; retroactive match of "
          f"{n_cones:,} cones: {seconds:.1f} s, {hits:,} hits", flush=True)
    return {"retro_s": round(seconds, 1), "archive_objects": n_objects, "retro_hits": hits}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cones", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--port", type=int, default=18_480)
    parser.add_argument("--radii", choices=RADII, default="wide",
                        help="the cones' radius mix (see RADII)")
    parser.add_argument("--no-live", action="store_true", help="leave out the live part")
    parser.add_argument("--retro", action="store_true", help="also the retroactive part")
    parser.add_argument("--objects", type=int, default=10_000_000,
                        help="archived objects for the retroactive part")
    args = parser.parse_args(argv)
    result = in_memory(args.cones, args.batch, args.repeats, args.seed, args.radii)
    result["radii"] = args.radii
    result.update({"live_after_s": None, "upload_s": None})
    if not args.no_live:
        result.update(live(Settings(), args.cones, args.seed, args.port, args.radii))
    result.update({"retro_s": None, "archive_objects": None})
    if args.retro:
        result.update(retro(Settings(), args.cones, args.objects, args.seed, args.radii))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
