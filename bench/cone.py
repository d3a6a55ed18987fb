"""Cone-search latency of a chunked reference catalog on the MariaDB shards, with a flat baseline.

A synthetic uniform all-sky catalog (id, ra, dec, mag) of ``--rows`` rows is generated as pyarrow
batches and loaded through `ChunkedRefCatalogs.load` (chunks, 1-arcmin overlap halos, director,
LOAD DATA per shard; ``load_rows_per_s``) into a fresh database ``bench_cone_<random>`` on the
configured shards. The same rows are then loaded into ONE unchunked table on shard 0 with the
same engine as the chunk tables (MyISAM) and a plain B-tree index on ``dec``: the baseline.

Queries: centres uniform on the sphere, radius uniform in [1", 10"]. ``--clients`` client threads
(each with its own `ChunkedRefCatalogs`, i.e. its own connections and shard pool; ``--shared``
gives all of them one instance, as one API process does) call ``cone(...)`` and time each call
with ``time.perf_counter``; a warm-up of ``--warmup`` queries is not counted. Every call is the
real read path: registry lookup on shard 0, then chunks -> merged HEALPix order-29 ranges -> one
query per shard in parallel -> exact distance, nearest first. The baseline runs the same queries
with the same clients: ``dec BETWEEN d-r AND d+r`` and an RA window widened by 1/cos(dec) (wrap at
0/360 handled, all RA near a pole), then the same exact-distance cut in Python. The two answers are
compared query by query (``agree``). A one-client pass gives the unloaded service time.

    python bench/cone.py [--rows 20000000] [--clients 16] [--queries 200] [--seed 5]
                         [--keep] [--reuse DATABASE] [--sizes 1e6,1e7,3e7]

``--keep`` leaves the database in place (its name is printed); ``--reuse DATABASE`` queries a kept
database without loading (only with a single size). ``--sizes`` runs several sizes in turn (one
database each) and adds a ``trend`` list; the top-level figures are those of the largest size.

Prints human lines, then one JSON object with ``p50_ms``, ``p99_ms``, ``rows``, ``clients``,
``baseline_p50_ms`` (and ``baseline_p99_ms``, ``speedup_p50``, ``mean_ms``, ``queries_per_s``,
``load_rows_per_s``, ...) as the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from broker.config import Settings
from broker.domain.sky import Chunker, nearest_first
from broker.storage.refcat import ChunkedRefCatalogs
from broker.storage.shards import MariaDBShards

CATALOG = "bench"
BASELINE = "baseline_flat"
ARCSEC = 1.0 / 3600.0
_TSV = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none",
                          batch_size=65536)

Query = tuple[float, float, float]


# ---- data ----------------------------------------------------------------------------------


def synthetic(rows: int, batch_rows: int, seed: int) -> Iterator[pa.RecordBatch]:
    """Uniform points on the sphere with a magnitude, generated lazily (memory stays bounded)."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch_rows):
        n = min(batch_rows, rows - start)
        ra = rng.uniform(0.0, 360.0, n)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
        yield pa.RecordBatch.from_arrays(
            [pa.array(np.arange(start, start + n, dtype=np.int64) + 1_000_000_000),
             pa.array(ra), pa.array(dec), pa.array(rng.normal(18.0, 2.0, n))],
            names=["id", "ra", "dec", "mag"])


def queries(n: int, rng: np.random.Generator) -> list[Query]:
    """Centres uniform on the sphere, radii uniform in [1", 10"] (degrees)."""
    ra = rng.uniform(0.0, 360.0, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    radius = rng.uniform(1.0, 10.0, n) * ARCSEC
    return list(zip(ra.tolist(), dec.tolist(), radius.tolist(), strict=True))


def load_chunked(catalogs: ChunkedRefCatalogs, rows: int, batch_rows: int,
                 seed: int) -> dict[str, Any]:
    report = catalogs.load(CATALOG, synthetic(rows, batch_rows, seed), "id", "ra", "dec")
    rate = report.rows / report.seconds
    print(f"  chunked load: {report.rows:,} rows (+{report.overlap_rows:,} overlap rows) over "
          f"{len(catalogs.shards)} shards in {report.seconds:.1f} s: {rate:,.0f} rows/s",
          flush=True)
    return {"load_seconds": round(report.seconds, 2), "load_rows_per_s": round(rate),
            "overlap_rows": report.overlap_rows}


def load_baseline(shards: MariaDBShards, rows: int, batch_rows: int, seed: int) -> dict[str, Any]:
    """The same rows in one MyISAM table on shard 0: PRIMARY KEY (id) and a plain KEY (dec)."""
    started = time.perf_counter()
    shards.ensure_database()
    folder = tempfile.mkdtemp(prefix="lanner-bench-cone-",
                              dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)  # noqa: S108
    connection = shards.connect(0)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{BASELINE}`")
            cursor.execute(f"CREATE TABLE `{BASELINE}` (id BIGINT NOT NULL, ra DOUBLE NOT NULL, "
                           "`dec` DOUBLE NOT NULL, mag DOUBLE NULL, PRIMARY KEY (id), "
                           "KEY dec_idx (`dec`)) ENGINE=MyISAM")
            cursor.execute(f"ALTER TABLE `{BASELINE}` DISABLE KEYS")
            path = f"{folder}/flat.tsv"
            for batch in synthetic(rows, batch_rows, seed):
                pacsv.write_csv(pa.Table.from_batches([batch]), path, write_options=_TSV)
                cursor.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE `{BASELINE}` "
                               "FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' "
                               "(id, ra, `dec`, mag)", [path])
            cursor.execute(f"ALTER TABLE `{BASELINE}` ENABLE KEYS")
        connection.commit()
    finally:
        connection.close()
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"  baseline load: {rows:,} rows into one table on shard 0 in {seconds:.1f} s: "
          f"{rows / seconds:,.0f} rows/s", flush=True)
    return {"baseline_load_seconds": round(seconds, 2)}


# ---- the two searches ----------------------------------------------------------------------


class FlatCone:
    """The classic search: a dec band on a B-tree index, an RA window, exact distance after."""

    def __init__(self, shards: MariaDBShards) -> None:
        self.shards = shards
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def _conn(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self.shards.connect(0)
            connection.autocommit(True)
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def cone(self, ra: float, dec: float, radius_deg: float, limit: int = 1000) -> list[dict]:
        lo, hi = dec - radius_deg, dec + radius_deg
        sql = f"SELECT id, ra, `dec`, mag FROM `{BASELINE}` WHERE `dec` BETWEEN %s AND %s"
        args: list[float] = [lo, hi]
        if lo > -90.0 and hi < 90.0:
            # The widest RA half-width of the cone (exact for a small circle on the sphere).
            half = math.degrees(math.asin(min(1.0, math.sin(math.radians(radius_deg))
                                              / math.cos(math.radians(dec)))))
            if half < 180.0:
                a, b = (ra - half) % 360.0, (ra + half) % 360.0
                if a <= b:
                    sql += " AND ra BETWEEN %s AND %s"
                else:  # the window crosses RA 0/360
                    sql += " AND (ra >= %s OR ra <= %s)"
                args += [a, b]
        with self._conn().cursor() as cursor:
            cursor.execute(sql, args)
            found = cursor.fetchall()
        rows = [{"id": r[0], "ra": r[1], "dec": r[2], "mag": r[3]} for r in found]
        return nearest_first(rows, ra, dec, radius_deg, limit, key="id")

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                with contextlib.suppress(Exception):
                    connection.close()


def run_clients(make: Callable[[], Any], close: Callable[[Any], None],
                call: Callable[[Any, Query], list[dict]], work: list[list[Query]],
                warmup: list[Query]) -> tuple[np.ndarray, float, list[list[list]]]:
    """One thread per client list; returns latencies (ms), wall seconds and the ids found."""
    clients = len(work)
    instances = [make() for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    answers: list[list[list]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        instance, mine, out, ids = instances[i], work[i], latencies[i], answers[i]
        try:
            # The warm-up runs in the thread that is then timed: connections are per thread,
            # and opening them (a few hundred ms with 16 at once on 2 cores) is not a query.
            for q in warmup[i::clients]:
                call(instance, q)
            barrier.wait()
            for q in mine:
                t0 = time.perf_counter()
                rows = call(instance, q)
                out.append((time.perf_counter() - t0) * 1000.0)
                ids.append([r["id"] for r in rows])
        except BaseException as exc:  # reported after the join
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: see errors
        barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for instance in {id(x): x for x in instances}.values():
        close(instance)
    if errors:
        raise errors[0]
    return np.array([v for part in latencies for v in part]), wall, answers


@dataclass(frozen=True)
class Target:
    """What a client process needs to rebuild its own search (processes share nothing)."""

    kind: str  # "chunked" or "flat"
    addresses: list[tuple[str, int]]
    user: str
    password: str
    database: str
    stripes: int
    sub_stripes: int
    overlap_deg: float
    limit: int

    def open(self) -> tuple[Callable[[Query], list[dict]], Callable[[], None]]:
        shards = MariaDBShards(addresses=self.addresses, user=self.user, password=self.password,
                          database=self.database)
        if self.kind == "flat":
            flat = FlatCone(shards)
            return (lambda q: flat.cone(q[0], q[1], q[2], self.limit)), flat.close
        chunked = ChunkedRefCatalogs(shards, Chunker(self.stripes, self.sub_stripes),
                                     self.overlap_deg)
        return (lambda q: chunked.cone(CATALOG, q[0], q[1], q[2], self.limit)), shards.close


def _client_process(target: Target, mine: list[Query], warmup: list[Query], barrier: Any,
                    results: Any, index: int) -> None:
    """One client in its own process: warm up, wait for the others, then time each query."""
    try:
        call, close = target.open()
        for q in warmup:
            call(q)
        barrier.wait()
        latencies, ids = [], []
        for q in mine:
            t0 = time.perf_counter()
            rows = call(q)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            ids.append([r["id"] for r in rows])
        close()
        results.put((index, latencies, ids, None))
    except BaseException as exc:  # reported by the parent
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.abort()
        results.put((index, [], [], repr(exc)))


def run_processes(target: Target, work: list[list[Query]],
                  warmup: list[Query]) -> tuple[np.ndarray, float, list[list[list]]]:
    """One process per client list: the clients share no GIL, as separate users or API workers.

    Returns latencies (ms), the wall seconds from the common start to the last answer, and the
    ids found, as `run_clients` does.
    """
    clients = len(work)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(clients + 1)
    results = context.Queue()
    processes = [context.Process(target=_client_process,
                                 args=(target, work[i], warmup[i::clients], barrier, results, i))
                 for i in range(clients)]
    for process in processes:
        process.start()
    try:
        barrier.wait(timeout=600)
        started = time.perf_counter()
        gathered = [results.get(timeout=600) for _ in range(clients)]
        wall = time.perf_counter() - started
    finally:
        for process in processes:
            process.join(timeout=60)
    errors = [error for _, _, _, error in gathered if error]
    if errors:
        raise RuntimeError(f"a client process failed: {errors[0]}")
    gathered.sort(key=lambda g: g[0])
    latencies = np.array([v for _, part, _, _ in gathered for v in part])
    return latencies, wall, [ids for _, _, ids, _ in gathered]


def stats(label: str, ms: np.ndarray, wall: float, clients: int) -> dict[str, float]:
    p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
    out = {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3),
           "mean_ms": round(float(ms.mean()), 3), "max_ms": round(float(ms.max()), 3),
           "queries_per_s": round(len(ms) / wall, 1)}
    print(f"  {label:<28} {clients:>2} client(s) {len(ms):>5} queries: p50 {p50:7.2f} ms  "
          f"p99 {p99:7.2f} ms  mean {ms.mean():7.2f} ms  {len(ms) / wall:7.1f} q/s", flush=True)
    return out


# ---- one size ------------------------------------------------------------------------------


def _reused_rows(shards: MariaDBShards, chunker: Chunker, overlap: float) -> int:
    """The rows of a kept database, checked against its baseline table."""
    probe = ChunkedRefCatalogs(shards, chunker, overlap)
    try:
        entry = next(e for e in probe.list() if e["name"] == CATALOG)
    finally:
        probe.close()
    def count(cursor: Any) -> int:
        cursor.execute(f"SELECT COUNT(*) FROM `{BASELINE}`")
        return int(cursor.fetchone()[0])

    flat = shards.run(0, count, write=False)
    if flat != entry["rows"]:
        msg = f"{shards.database}: catalog has {entry['rows']} rows, baseline {flat}"
        raise SystemExit(msg)
    print(f"  reusing {flat:,} rows", flush=True)
    return flat


def _load(shards: MariaDBShards, chunker: Chunker, overlap: float, rows: int,
          args: argparse.Namespace) -> dict[str, Any]:
    loader = ChunkedRefCatalogs(shards, chunker, overlap)
    try:
        result = load_chunked(loader, rows, args.batch_rows, args.seed)
    finally:
        loader.close()
    result.update(load_baseline(shards, rows, args.batch_rows, args.seed))
    return result


def one_size(settings: Settings, chunker: Chunker, rows: int, args: argparse.Namespace,
             database: str | None) -> dict[str, Any]:
    reuse = database is not None
    database = database or f"bench_cone_{secrets.token_hex(4)}"
    shards = MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                      password=settings.mariadb_password.get_secret_value(), database=database)
    overlap = args.overlap_arcmin / 60.0
    result: dict[str, Any] = {}
    print(f"database {database} on {len(shards)} shards: "
          f"{'reused' if reuse else f'{rows:,} rows'}", flush=True)
    try:
        if reuse:
            rows = _reused_rows(shards, chunker, overlap)
        else:
            result.update(_load(shards, chunker, overlap, rows, args))

        rng = np.random.default_rng(args.seed + 1)
        warmup = queries(args.warmup, rng)
        work = [queries(args.queries, rng) for _ in range(args.clients)]
        single = [queries(args.single_queries, rng)]
        shared = ChunkedRefCatalogs(shards, chunker, overlap) if args.shared else None

        def make_chunked() -> ChunkedRefCatalogs:
            # Each client its own shard set (connections and pool), as its own process would.
            return shared or ChunkedRefCatalogs(MariaDBShards(
                addresses=settings.shard_addresses, user=settings.mariadb_user,
                password=settings.mariadb_password.get_secret_value(), database=database),
                chunker, overlap)

        def chunked_call(c: ChunkedRefCatalogs, q: Query) -> list[dict]:
            return c.cone(CATALOG, q[0], q[1], q[2], args.limit)

        def flat_call(c: FlatCone, q: Query) -> list[dict]:
            return c.cone(q[0], q[1], q[2], args.limit)

        def close_chunked(c: ChunkedRefCatalogs) -> None:
            if c is not shared:
                c.shards.close()

        def target(kind: str) -> Target:
            return Target(kind, settings.shard_addresses, settings.mariadb_user,
                          settings.mariadb_password.get_secret_value(), database,
                          chunker.num_stripes, chunker.num_sub_stripes, overlap, args.limit)

        # Headline: one process per client (separate users, or API worker processes).
        ms, wall, chunked_ids = run_processes(target("chunked"), work, warmup)
        result.update(stats("chunked, processes", ms, wall, args.clients))
        ms, wall, flat_ids = run_processes(target("flat"), work, warmup)
        flat = stats("baseline, processes", ms, wall, args.clients)
        result.update({f"baseline_{k}": v for k, v in flat.items()})
        # The same clients as threads of one process: what one API worker process sees.
        ms, wall, thread_ids = run_clients(make_chunked, close_chunked, chunked_call, work,
                                           warmup)
        result.update({f"threads_{k}": v for k, v in
                       stats("chunked, threads", ms, wall, args.clients).items()})
        ms, wall, _ = run_clients(lambda: FlatCone(shards), FlatCone.close, flat_call,
                                  work, warmup)
        result.update({f"baseline_threads_{k}": v for k, v in
                       stats("baseline, threads", ms, wall, args.clients).items()})
        ms, wall, _ = run_clients(make_chunked, close_chunked, chunked_call, single, warmup[:50])
        result["single_client_p50_ms"] = stats("chunked, unloaded", ms, wall, 1)["p50_ms"]
        ms, wall, _ = run_clients(lambda: FlatCone(shards), FlatCone.close, flat_call, single,
                                  warmup[:50])
        result["baseline_single_client_p50_ms"] = stats("baseline, unloaded", ms, wall,
                                                        1)["p50_ms"]
        if shared is not None:
            shared.close()
        pairs = [(sorted(a), sorted(b), sorted(c))
                 for ca, cb, cc in zip(chunked_ids, flat_ids, thread_ids, strict=True)
                 for a, b, c in zip(ca, cb, cc, strict=True)]
        agree = sum(a == b == c for a, b, c in pairs)
        found = sum(len(a) for a, _, _ in pairs)
        print(f"  answers: {agree}/{len(pairs)} queries identical (chunked in processes and in "
              f"threads, baseline), {found} rows found in all", flush=True)
        result.update({"rows": rows, "clients": args.clients, "queries": len(pairs),
                       "client_mode": "processes",
                       "speedup_p50": round(result["baseline_p50_ms"] / result["p50_ms"], 2),
                       "agree": agree == len(pairs), "rows_found": found,
                       "database": database if args.keep else None})
        print(f"  p50 {result['p50_ms']} ms vs baseline {result['baseline_p50_ms']} ms: "
              f"x{result['speedup_p50']}", flush=True)
        return result
    finally:
        if not args.keep:
            shards.drop_database()


def _size(text: str) -> int:
    return int(float(text))


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_size, default=20_000_000)
    parser.add_argument("--sizes", type=lambda s: [_size(x) for x in s.split(",") if x],
                        help="comma-separated sizes for a trend, e.g. 1e6,1e7,3e7")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200, help="per client")
    parser.add_argument("--warmup", type=int, default=400, help="queries, not counted")
    parser.add_argument("--single-queries", type=int, default=300,
                        help="queries of the one-client (unloaded) pass")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-rows", type=int, default=500_000)
    parser.add_argument("--overlap-arcmin", type=float, default=1.0)
    parser.add_argument("--shared", action="store_true",
                        help="one ChunkedRefCatalogs for all clients (as one API process)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="do not drop the database(s)")
    parser.add_argument("--reuse", metavar="DATABASE",
                        help="query a database kept by --keep instead of loading")
    args = parser.parse_args()
    sizes = args.sizes or [args.rows]
    if args.reuse and len(sizes) > 1:
        parser.error("--reuse takes a single size")

    settings = Settings()
    chunker = Chunker(settings.chunk_stripes, settings.chunk_sub_stripes)
    print(f"{args.clients} clients x {args.queries} queries, radius 1-10 arcsec, "
          f"{'one shared' if args.shared else 'one'} ChunkedRefCatalogs "
          f"{'' if args.shared else 'per client'}; chunking {chunker.num_stripes}/"
          f"{chunker.num_sub_stripes}, {os.cpu_count()} cores", flush=True)
    trend = [one_size(settings, chunker, rows, args, args.reuse) for rows in sorted(sizes)]
    result = dict(trend[-1])
    result.update({"shards": len(settings.shard_addresses), "radius_arcsec": [1, 10],
                   "shared_instance": args.shared, "cores": os.cpu_count(),
                   "chunking": [chunker.num_stripes, chunker.num_sub_stripes]})
    if len(trend) > 1:
        print("trend:")
        for t in trend:
            print(f"  {t['rows']:>12,} rows: p50 {t['p50_ms']:7.2f} ms  p99 {t['p99_ms']:7.2f} ms"
                  f"  baseline p50 {t['baseline_p50_ms']:7.2f} ms  x{t['speedup_p50']}")
        result["trend"] = [{k: t[k] for k in ("rows", "p50_ms", "p99_ms", "mean_ms",
                                             "queries_per_s", "baseline_p50_ms",
                                             "baseline_p99_ms", "speedup_p50",
                                             "single_client_p50_ms",
                                             "baseline_single_client_p50_ms",
                                             "load_rows_per_s") if k in t} for t in trend]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
