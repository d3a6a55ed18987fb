"""Cone search through the HTTP API, as a user's client sees it, with 1 and more API workers.

Needs `lanner services up`. A synthetic reference catalog (bench/cone.py's generator, ``--rows``
rows, catalog name ``bench``) is loaded into a fresh database on the shards, or a database kept
by ``bench/cone.py --keep`` is reused (``--reuse DATABASE``). For each count of ``--workers``,
`lanner serve --workers W` runs on that database, and ``--clients`` client processes, each with
one keep-alive HTTP connection, send ``GET /api/v1/cone?ra=&dec=&radius=&catalog=bench`` (radii
1"-10" at random positions, as bench/cone.py) after a warm-up of their own; each request is
timed from sending to the parsed JSON answer. The ids answered are compared with the library
call (`ChunkedRefCatalogs.cone`) for every query (``agree``).

    python bench/api_cone.py [--rows 1e6] [--reuse DATABASE] [--workers 1,2] [--clients 16]
                             [--queries 200]

Prints human lines, then one JSON object as the last line: ``p50_ms``, ``p99_ms``,
``queries_per_s`` of the largest worker count, ``by_workers`` for each, ``rows``, ``clients``,
``agree``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from cone import CATALOG, Query, queries, synthetic  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.domain.sky import Chunker  # noqa: E402
from broker.storage.refcat import ChunkedRefCatalogs  # noqa: E402
from broker.storage.shards import MariaDBShards  # noqa: E402

ARCSEC = 1.0 / 3600.0


def _client(port: int, mine: list[Query], warmup: list[Query], barrier: Any, results: Any,
            index: int) -> None:
    """One client process: one keep-alive connection, warm-up, then each request timed."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def ask(q: Query) -> list[str]:
            query = urllib.parse.urlencode({"ra": q[0], "dec": q[1], "radius": q[2] / ARCSEC,
                                            "catalog": CATALOG, "limit": 1000})
            connection.request("GET", f"/api/v1/cone?{query}")
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
            return [row["id"] for row in json.loads(body)["rows"]]

        for q in warmup:
            ask(q)
        barrier.wait()
        latencies, ids = [], []
        for q in mine:
            t0 = time.perf_counter()
            found = ask(q)
            latencies.append((time.perf_counter() - t0) * 1000.0)
            ids.append(found)
        connection.close()
        results.put((index, latencies, ids, None))
    except BaseException as exc:  # reported by the parent
        barrier.abort()
        results.put((index, [], [], repr(exc)))


def _serve(env: dict[str, str], port: int, workers: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--port", str(port), "--workers",
         str(workers)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lanner serve died: {process.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    time.sleep(2.0 if workers > 1 else 0.5)  # every worker up, not only the first
    return process


def clients_against(env: dict[str, str], workers: int, client: Any,
                    args: list[tuple[Any, ...]]) -> tuple[list[tuple], float]:
    """Serve the API (``workers`` processes) and run one ``client`` process per item of
    ``args``, each called as ``client(port, *item, barrier, results, index)``: it warms up,
    waits at the barrier, sends its timed requests and puts ``(index, latencies, bodies,
    error)`` on ``results``. Every client's results in order, and the wall time from the
    barrier to the last result."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    server = _serve(env, port, workers)
    try:
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(len(args) + 1)
        results = context.Queue()
        processes = [context.Process(target=client, args=(port, *item, barrier, results, i))
                     for i, item in enumerate(args)]
        for process in processes:
            process.start()
        try:
            barrier.wait(timeout=600)
        except threading.BrokenBarrierError:  # a client failed in its warm-up: say why
            failed = results.get(timeout=60)
            raise RuntimeError(f"client {failed[0]} failed: {failed[3]}") from None
        started = time.perf_counter()
        gathered = sorted((results.get(timeout=1200) for _ in args), key=lambda g: g[0])
        wall = time.perf_counter() - started
        for process in processes:
            process.join(60)
    finally:
        server.terminate()
        server.wait(60)
    errors = [g[3] for g in gathered if g[3]]
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]}")
    return gathered, wall


def one_run(env: dict[str, str], workers: int, work: list[list[Query]],
            warmup: list[Query]) -> tuple[dict[str, Any], list[list[list[str]]]]:
    clients = len(work)
    gathered, wall = clients_against(env, workers, _client,
                                     [(work[i], warmup[i::clients]) for i in range(clients)])
    ms = np.array([v for g in gathered for v in g[1]])
    figures = {"workers": workers, "p50_ms": round(float(np.percentile(ms, 50)), 3),
               "p99_ms": round(float(np.percentile(ms, 99)), 3),
               "mean_ms": round(float(ms.mean()), 3),
               "queries_per_s": round(len(ms) / wall, 1)}
    print(f"  {workers} worker(s), {clients} clients, {len(ms)} requests: "
          f"p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
          f"{figures['queries_per_s']:.0f} req/s", flush=True)
    return figures, [g[2] for g in gathered]


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: int(float(s)), default=1_000_000)
    parser.add_argument("--reuse", metavar="DATABASE",
                        help="a database kept by bench/cone.py --keep (catalog 'bench')")
    parser.add_argument("--workers", default="1,2",
                        type=lambda s: sorted({int(x) for x in s.split(",") if x}))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=200, help="per client")
    parser.add_argument("--warmup", type=int, default=400, help="requests, not counted")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    settings = Settings()
    chunker = Chunker(settings.chunk_stripes, settings.chunk_sub_stripes)
    database = args.reuse or f"bench_api_{secrets.token_hex(4)}"
    shards = MariaDBShards(addresses=settings.shard_addresses, user=settings.mariadb_user,
                      password=settings.mariadb_password.get_secret_value(), database=database)
    library = ChunkedRefCatalogs(shards, chunker, 1.0 / 60.0)
    try:
        if args.reuse:
            rows = next(e["rows"] for e in library.list() if e["name"] == CATALOG)
            print(f"database {database}: reusing {rows:,} rows", flush=True)
        else:
            report = library.load(CATALOG, synthetic(args.rows, 500_000, args.seed), "id", "ra",
                                  "dec")
            rows = report.rows
            print(f"database {database}: loaded {rows:,} rows in {report.seconds:.1f} s",
                  flush=True)
        env = {**os.environ, "LANNER_BACKEND": "services", "LANNER_MARIADB_DATABASE": database,
               "LANNER_LOG_LEVEL": "WARNING"}
        rng = np.random.default_rng(args.seed + 1)
        warmup = queries(args.warmup, rng)
        work = [queries(args.queries, rng) for _ in range(args.clients)]
        expected = [[[str(r["id"]) for r in library.cone(CATALOG, *q, 1000)] for q in mine]
                    for mine in work]
        by_workers, agree = [], True
        for workers in args.workers:
            figures, answers = one_run(env, workers, work, warmup)
            agree = agree and answers == expected
            by_workers.append(figures)
    finally:
        library.close()
        if not args.reuse:
            shards.drop_database()
    result = {**{k: v for k, v in by_workers[-1].items() if k != "workers"},
              "workers": by_workers[-1]["workers"], "by_workers": by_workers, "rows": rows,
              "clients": args.clients, "queries": args.clients * args.queries,
              "radius_arcsec": [1, 10], "agree": agree, "cores": os.cpu_count()}
    print(f"answers identical to the library call: {agree}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
