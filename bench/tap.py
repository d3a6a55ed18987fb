"""TAP service figures (issue 12): a full-table aggregate over 1e7 alert rows on 1 and 2 shards,
and a small ADQL cone through HTTP ``/tap/sync`` under 16 concurrent clients.

Needs `lanner services up`. The archive is synthetic but shaped as Lanner stores it
(`ChunkedCatalog`'s tables, created by its own ``setup``): ``--rows`` alert rows (default 1e7)
of ``rows / 20`` objects, each object with a geometric number of detections (mean 20) spread
over the survey's 1,000 nights (gaps exponential, mean 3 days), in the six Rubin bands at LSST's
share of visits per band (ZTF's objects in g, r, i), signed difference fluxes, flux errors,
science fluxes (NULL for a third), S/N and reliability; 90 % of the objects are Rubin's
(positions uniform on the sphere below dec +30, with 18-digit diaObjectIds) and 10 % ZTF's
(above dec -30, ``ZTF`` names). Each object row carries its counts and newest values per band as
the archive computes them from its alert rows, and the director maps it to its chunk. Rows go to
their chunk's shard (`ChunkPlacement`), director rows to their id's shard, as the archive puts
them, by ``LOAD DATA`` (the dialect's bulk insert) with the secondary indexes built after the
load. Two databases are loaded from the same generated rows, ``bench_tap_1shard`` (all rows on
the first server) and ``bench_tap_2shards`` (both servers); a ``bench_loaded`` table records
what was loaded, batch by batch: a rerun with the same ``--rows`` and ``--seed`` reuses them,
or goes on with a load cut short (``--reload`` loads again; ``--drop`` drops them at the end).

Scan: ``SELECT band, COUNT(*) FROM lanner.alert_rows GROUP BY band`` through
`broker.tap.adql.check` and `broker.tap.execute.Engine.run` (partial counts per shard, in
parallel, merged), timed ``--repeats`` times after one untimed run, on each database; the two
answers must be equal and sum to ``--rows``. ``scan_speedup_2_shards`` is the 1-shard median
over the 2-shard median (goal: >= 1.8).

Cross-match: 1e5 positions (half within 0.9 arcsec of archived detections, half anywhere on the
survey's sky) uploaded as a BINARY2 VOTable (read by `broker.tap.upload.read`) and joined with
the alert rows of ``bench_tap_2shards`` within 1 arcsec (`XMATCH`), through the engine.

Cone: ``lanner serve --workers W`` on ``bench_tap_2shards``; ``--clients`` processes, each with
one keep-alive connection and a power-tier user's token (the anonymous tier allows 1,800
requests an hour), send ``GET /tap/sync?LANG=ADQL&QUERY=SELECT object_id, ra, dec,
n_detections FROM lanner.objects WHERE 1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', a, d,
0.05))`` (BINARY2) at random positions of the survey's sky, after a warm-up, each request timed
to its last byte; every answer is then read with astropy and compared with the engine's own
answer to the same query (``agree``).

    nice -n 10 python bench/tap.py [--rows 1e7] [--clients 16] [--queries 100] [--workers 2]

Prints human lines, then one JSON object as the last line: ``cone_p50_ms``, ``cone_p99_ms``,
``scan_s`` (2 shards), ``scan_rows``, ``scan_speedup_2_shards``, ``upload_xmatch_s``, and the
details.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from api_cone import clients_against  # noqa: E402

from broker.config import Settings  # noqa: E402
from broker.domain.sky import Chunker, ChunkPlacement, hpx29  # noqa: E402
from broker.exceptions import ConflictError  # noqa: E402
from broker.storage import schema  # noqa: E402
from broker.storage.accounts import AccountStore  # noqa: E402
from broker.storage.catalog import ChunkedCatalog  # noqa: E402
from broker.storage.shards import MariaDBShards  # noqa: E402
from broker.tap.adql import check  # noqa: E402
from broker.tap.execute import Engine  # noqa: E402
from broker.tap.tapschema import TapSchema  # noqa: E402

DATABASES = {1: "bench_tap_1shard", 2: "bench_tap_2shards"}
#: What the marker records; a change of the generator bumps it, and the data is loaded again.
GENERATOR = "1"
SCAN = "SELECT band, COUNT(*) AS n FROM lanner.alert_rows GROUP BY band"
RADIUS = 0.05
BANDS = np.array(list("ugrizy"))
#: LSST's share of visits per band (u g r i z y), and ZTF's in g, r, i.
LSST_BANDS = np.array([0.07, 0.10, 0.22, 0.22, 0.20, 0.19])
ZTF_BANDS = np.array([0.0, 0.47, 0.45, 0.08, 0.0, 0.0])
ALERTS_PER_OBJECT = 20
OBJECT_BATCH = 40_000
_OBJECT_COLUMNS = ("object_id", "survey", "chunk_id", "hpx29", "ra", "dec", "first_mjd",
                   "last_mjd", "n_detections", "position_mjd", "position_source_id",
                   *(f"{b}_{c}" for b in BANDS for c in ("n", "last_mjd", "last_flux",
                                                         "last_flux_err")))
_ALERT_COLUMNS = schema.columns("alert_rows")
_DIRECTOR_COLUMNS = ("object_id", "chunk_id", "last_detection_mjd")


def survey_sky(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions as the surveys see the sky: Rubin below dec +30, ZTF above dec -30, uniform
    on the sphere within each; and which survey (True: Rubin)."""
    rubin = rng.random(n) < 0.9
    low = np.where(rubin, np.sin(np.radians(-90.0)), np.sin(np.radians(-30.0)))
    high = np.where(rubin, np.sin(np.radians(30.0)), np.sin(np.radians(90.0)))
    dec = np.degrees(np.arcsin(rng.uniform(low, high)))
    return rng.uniform(0.0, 360.0, n), dec, rubin


def _detections_per_object(rows: int, rng: np.random.Generator) -> np.ndarray:
    counts = rng.geometric(1.0 / ALERTS_PER_OBJECT, rows // ALERTS_PER_OBJECT + 1000)
    total = np.cumsum(counts)
    keep = int(np.searchsorted(total, rows))  # objects until the rows are reached
    counts = counts[:keep + 1].copy()
    counts[-1] -= int(total[keep]) - rows
    return counts[counts > 0]


def generate(rows: int, seed: int, chunker: Chunker
             ) -> Iterator[tuple[pa.Table, pa.Table, pa.Table]]:
    """Batches of (alert rows, objects, director rows), ``rows`` alert rows in all."""
    rng = np.random.default_rng(seed)
    counts = _detections_per_object(rows, rng)
    first_source = 170_000_000_000_000_000
    row_at = 0
    for start in range(0, len(counts), OBJECT_BATCH):
        per = counts[start:start + OBJECT_BATCH]
        n_obj, n = len(per), int(per.sum())
        ra, dec, rubin = survey_sky(n_obj, rng)
        numbers = np.arange(start, start + n_obj)
        names = np.where(rubin, (3_000_000_000_000_000_000 // 10 + numbers * 7919).astype(str),
                         np.char.add("ZTF2", np.char.zfill((numbers * 37).astype(str), 8)))
        chunk = chunker.locate(ra, dec)
        owner = np.repeat(np.arange(n_obj), per)
        first = np.repeat(np.cumsum(per) - per, per)  # index of each row's object's first row
        gaps = rng.exponential(3.0, n)
        gaps[np.cumsum(per) - per] = 0.0
        elapsed = np.cumsum(gaps)
        elapsed -= elapsed[first]
        start_mjd = rng.uniform(60_000.0, 61_000.0, n_obj)  # first seen within the survey
        mjd = start_mjd[owner] + elapsed
        scatter = rng.normal(0.0, 0.1 / 3600.0, (2, n))
        det_dec = np.clip(dec[owner] + scatter[1], -90.0, 90.0)
        det_ra = np.mod(ra[owner] + scatter[0] / np.maximum(np.cos(np.radians(det_dec)), 1e-6),
                        360.0)
        band_index = np.where(rubin[owner], rng.choice(6, n, p=LSST_BANDS),
                              rng.choice(6, n, p=ZTF_BANDS))
        flux_err = rng.lognormal(np.log(300.0), 0.3, n)
        flux = rng.lognormal(np.log(5_000.0), 1.0, n) * np.where(rng.random(n) < 0.8, 1, -1)
        science = rng.lognormal(np.log(20_000.0), 1.2, n)
        has_science = rng.random(n) < 2 / 3
        source_id = first_source + row_at + np.arange(n, dtype=np.int64)
        row_at += n
        alerts = pa.table({
            "source_id": source_id, "object_id": names[owner],
            "survey": np.where(rubin[owner], "lsst", "ztf"), "chunk_id": chunk[owner],
            "hpx29": hpx29(det_ra, det_dec), "mjd": mjd, "ra": det_ra, "dec": det_dec,
            "band": BANDS[band_index], "psf_flux": flux, "psf_flux_err": flux_err,
            "science_flux": pa.array(science, mask=~has_science),
            "science_flux_err": pa.array(science * 0.02, mask=~has_science),
            "snr": np.abs(flux) / flux_err, "reliability": rng.beta(5.0, 1.5, n)})
        last = np.cumsum(per) - 1
        objects: dict[str, Any] = {
            "object_id": names, "survey": np.where(rubin, "lsst", "ztf"), "chunk_id": chunk,
            "hpx29": hpx29(ra, dec), "ra": ra, "dec": dec, "first_mjd": mjd[first[last]],
            "last_mjd": mjd[last], "n_detections": per, "position_mjd": mjd[last],
            "position_source_id": source_id[last]}
        key = owner * 6 + band_index
        in_band = np.bincount(key, minlength=n_obj * 6).reshape(n_obj, 6)
        newest = np.full(n_obj * 6, -1)
        newest[key] = np.arange(n)  # rows are in time order per object: the last one wins
        newest = newest.reshape(n_obj, 6)
        for b, band in enumerate(BANDS):
            seen = newest[:, b] >= 0
            at = np.where(seen, newest[:, b], 0)
            objects[f"{band}_n"] = in_band[:, b]
            objects[f"{band}_last_mjd"] = pa.array(mjd[at], mask=~seen)
            objects[f"{band}_last_flux"] = pa.array(flux[at], mask=~seen)
            objects[f"{band}_last_flux_err"] = pa.array(flux_err[at], mask=~seen)
        director = pa.table({"object_id": names, "chunk_id": chunk,
                             "last_detection_mjd": mjd[last]})
        yield alerts, pa.table(objects).select(list(_OBJECT_COLUMNS)), director


def _indexes(table: str) -> list[str]:
    dialect = MariaDBShards.dialect
    return [s for s in dialect.create_statements(schema.table(table)) if "INDEX" in s]


class Layout:
    """One benchmark database over the first ``count`` shard servers."""

    def __init__(self, settings: Settings, chunker: Chunker, count: int) -> None:
        self.count = count
        self.shards = MariaDBShards(addresses=settings.shard_addresses[:count],
                                    user=settings.mariadb_user,
                                    password=settings.mariadb_password.get_secret_value(),
                                    database=DATABASES[count])
        self.catalog = ChunkedCatalog(shards=self.shards, chunker=chunker)
        self.placement = ChunkPlacement(count)

    def loaded(self) -> dict[str, str]:
        def work(cursor: Any) -> dict[str, str]:
            cursor.execute("CREATE TABLE IF NOT EXISTS bench_loaded "
                           "(name VARCHAR(32) PRIMARY KEY, value VARCHAR(64))")
            cursor.execute("SELECT name, value FROM bench_loaded")
            return dict(cursor.fetchall())
        self.shards.ensure_database()
        return self.shards.run(0, work)

    def begin(self) -> None:
        """A fresh database with the archive's tables, their secondary indexes dropped."""
        self.shards.drop_database()
        self.catalog.setup()

        def work(cursor: Any) -> None:
            for table in ("alert_rows", "objects"):
                for statement in _indexes(table):
                    name = statement.split(" ON ")[0].split()[-1]
                    cursor.execute(f"DROP INDEX {name} ON {table}")
        self.shards.all_shards(work)

    def add(self, alerts: pa.Table, objects: pa.Table, director: pa.Table, folder: str) -> None:
        by_chunk = self.placement.shards_of(alerts.column("chunk_id").to_numpy())
        by_object = self.placement.shards_of(objects.column("chunk_id").to_numpy())
        by_id = self.placement.director_shards(director.column("object_id").combine_chunks())
        dialect = self.shards.dialect

        def on(shard: int) -> Any:
            def work(cursor: Any) -> None:
                for table, rows, where in (("alert_rows", alerts, by_chunk),
                                           ("objects", objects, by_object),
                                           ("director", director, by_id)):
                    mine = rows.filter(pa.array(where == shard))
                    dialect.bulk_insert(cursor, table, mine.column_names, mine, folder)
            return work
        self.shards.on_shards({s: on(s) for s in range(self.count)})

    def finish(self) -> None:
        def work(cursor: Any) -> None:
            for table in ("alert_rows", "objects"):
                for statement in _indexes(table):
                    cursor.execute(statement)
                cursor.execute(f"ANALYZE TABLE {table}")
                cursor.fetchall()
        self.shards.all_shards(work)

    def mark(self, marker: dict[str, str]) -> None:
        def work(cursor: Any) -> None:
            cursor.executemany("REPLACE INTO bench_loaded VALUES (%s, %s)", list(marker.items()))
        self.shards.run(0, work)


def load(layouts: list[Layout], rows: int, seed: int, chunker: Chunker, *,
         reload: bool) -> float | None:
    """Load the rows into every layout not already holding them; the seconds it took.

    The marker says how many batches are in; a load cut short (a server restarted under it)
    goes on from there at the next run. A batch loaded twice adds nothing: ``LOAD DATA LOCAL``
    skips rows whose key is stored, so a batch half-committed over the shards is whole after.
    """
    marker = {"rows": str(rows), "seed": str(seed), "generator": GENERATOR}
    found = {layout.count: layout.loaded() for layout in layouts}
    todo = [layout for layout in layouts if reload or found[layout.count] != {
        **marker, "batches": "all"}]
    if not todo:
        print(f"reusing the loaded databases ({rows:,} alert rows)", flush=True)
        return None
    started = time.perf_counter()
    done_before: dict[int, int] = {}
    for layout in todo:
        was = found[layout.count]
        if not reload and {k: was.get(k) for k in marker} == marker:
            done_before[layout.count] = int(was.get("batches", "0"))
        else:
            layout.begin()
            layout.loaded()  # the marker's table, empty
            done_before[layout.count] = 0
    done = 0
    with tempfile.TemporaryDirectory(prefix="bench-tap-") as folder:
        for batch, (alerts, objects, director) in enumerate(generate(rows, seed, chunker)):
            wanted = [t for t in todo if done_before[t.count] <= batch]
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(Layout.add, wanted, *zip(*[(alerts, objects, director, folder)]
                                                        * len(wanted), strict=True)))
            for layout in wanted:
                layout.mark({**marker, "batches": str(batch + 1)})
            done += alerts.num_rows
            print(f"  loaded {done:,} / {rows:,} alert rows "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    for layout in todo:
        layout.finish()
        layout.mark({**marker, "batches": "all"})
    seconds = time.perf_counter() - started
    print(f"loaded {rows:,} alert rows into {', '.join(DATABASES[t.count] for t in todo)} in "
          f"{seconds:.0f} s (indexes included)", flush=True)
    return seconds


def scan(engine: Engine, repeats: int) -> tuple[float, list[float], dict[str, int]]:
    checked = check(SCAN, engine.tap)
    engine.run(checked, 100)  # untimed: the first read of the tables
    times = []
    answer = None
    for _ in range(repeats):
        started = time.perf_counter()
        answer = engine.run(checked, 100)
        times.append(time.perf_counter() - started)
    assert answer is not None
    counts = {r["band"]: int(r["n"]) for r in answer.table.to_pylist()}
    return statistics.median(times), times, counts


XMATCH_ROWS = 100_000
XMATCH_RADIUS_ARCSEC = 1.0
XMATCH = ("SELECT u.name, a.source_id, DISTANCE(POINT('ICRS', u.ra, u.dec), "
          "POINT('ICRS', a.ra, a.dec)) AS d FROM TAP_UPLOAD.mine AS u "
          "JOIN lanner.alert_rows AS a ON 1 = CONTAINS(POINT('ICRS', a.ra, a.dec), "
          f"CIRCLE('ICRS', u.ra, u.dec, {XMATCH_RADIUS_ARCSEC / 3600.0!r}))")


def xmatch(engine: Engine, layout: Layout, seed: int) -> dict[str, Any]:
    """A scientist's list of 1e5 positions, half within an arcsecond of archived detections
    and half anywhere on the survey's sky, uploaded as a VOTable and cross-matched with the
    alert rows within 1 arcsecond; timed as the engine runs it (the upload's parse apart)."""
    from astropy.io.votable import from_table  # noqa: PLC0415
    from astropy.table import Table  # noqa: PLC0415

    from broker.tap.upload import read  # noqa: PLC0415

    rng = np.random.default_rng(seed + 1)
    half = XMATCH_ROWS // 2

    def sample(cursor: Any) -> list[tuple]:
        cursor.execute("SELECT ra, `dec` FROM alert_rows WHERE source_id % 97 = 0 "
                       f"LIMIT {half}")
        return list(cursor.fetchall())

    near = [r for rows in layout.shards.all_shards(sample, write=False).values() for r in rows]
    picked = rng.choice(len(near), size=half, replace=len(near) < half)
    base = np.array([near[i] for i in picked], dtype=np.float64)
    offset = rng.uniform(0, 0.9, half) / 3600.0
    angle = rng.uniform(0, 2 * np.pi, half)
    ra_near = (base[:, 0] + offset * np.cos(angle) / np.cos(np.radians(base[:, 1]))) % 360
    dec_near = base[:, 1] + offset * np.sin(angle)
    ra_any, dec_any, _ = survey_sky(XMATCH_ROWS - half, rng)
    table = Table({"name": [f"s{i}" for i in range(XMATCH_ROWS)],
                   "ra": np.concatenate([ra_near, ra_any]),
                   "dec": np.concatenate([dec_near, dec_any])})
    buffer = io.BytesIO()
    from_table(table).to_xml(buffer, tabledata_format="binary2")
    started = time.perf_counter()
    uploads = read("mine,param:list", {"list": buffer.getvalue()}, max_bytes=2**31)
    parse_s = time.perf_counter() - started
    checked = check(XMATCH, engine.tap.with_tables(u.table for u in uploads))
    started = time.perf_counter()
    answer = engine.run(checked, 10_000_000, uploads=uploads)
    seconds = time.perf_counter() - started
    matched = len(set(answer.table.column("name").to_pylist()))
    print(f"cross-match of {XMATCH_ROWS:,} uploaded positions with the alert rows within "
          f"{XMATCH_RADIUS_ARCSEC:g}\": {seconds:.2f} s (parse {parse_s:.2f} s), "
          f"{answer.table.num_rows:,} pairs, {matched:,} positions matched", flush=True)
    return {"upload_xmatch_s": round(seconds, 2), "upload_parse_s": round(parse_s, 2),
            "upload_rows": XMATCH_ROWS, "upload_pairs": answer.table.num_rows,
            "upload_matched": matched, "upload_bytes": len(buffer.getvalue())}


def cone_query(ra: float, dec: float) -> str:
    return ("SELECT object_id, ra, dec, n_detections FROM lanner.objects WHERE "
            f"1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.6f}, {dec:.6f}, {RADIUS}))")


def _client(port: int, token: str, mine: list[str], warmup: list[str], barrier: Any,
            results: Any, index: int) -> None:
    """One client process: one keep-alive connection, warm-up, then each request timed."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

        def ask(query: str) -> bytes:
            params = urllib.parse.urlencode({"LANG": "ADQL", "QUERY": query})
            connection.request("GET", f"/tap/sync?{params}",
                               headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:300]!r}")
            return body

        for query in warmup:
            ask(query)
        barrier.wait()
        latencies, bodies = [], []
        for query in mine:
            started = time.perf_counter()
            bodies.append(ask(query))
            latencies.append((time.perf_counter() - started) * 1000.0)
        connection.close()
        results.put((index, latencies, bodies, None))
    except BaseException as exc:  # reported by the parent
        barrier.abort()
        results.put((index, [], [], repr(exc)))


def _token(layout: Layout) -> str:
    """A token of a power-tier user: the anonymous tier's 1,800 requests an hour are fewer
    than one run sends."""
    accounts = AccountStore(layout.shards)
    accounts.setup()
    with contextlib.suppress(ConflictError):  # made by an earlier run
        accounts.add_user("bench_tap", tier="power")
    return accounts.issue_token("bench_tap", "bench/tap.py")[0].text


def cones(layout: Layout, engine: Engine, workers: int, clients: int, queries: int,
          seed: int) -> dict[str, Any]:
    from astropy.io.votable import parse_single_table  # noqa: PLC0415

    token = _token(layout)

    rng = np.random.default_rng(seed + 1)
    ra, dec, _ = survey_sky(clients * queries + 8 * clients, rng)
    texts = [cone_query(float(a), float(d)) for a, d in zip(ra, dec, strict=True)]
    warmup, work = texts[:8 * clients], texts[8 * clients:]
    env = {**os.environ, "LANNER_BACKEND": "services", "LANNER_LOG_LEVEL": "WARNING",
           "LANNER_MARIADB_DATABASE": DATABASES[2]}
    gathered, wall = clients_against(
        env, workers, _client,
        [(token, work[i::clients], warmup[i::clients]) for i in range(clients)])
    agree, found = True, 0
    for index, _, bodies, _ in gathered:
        for query, body in zip(work[index::clients], bodies, strict=True):
            got = sorted(str(v) for v in parse_single_table(io.BytesIO(body)).array["object_id"])
            want = sorted(engine.run(check(query, engine.tap), 10_000).table
                          .column("object_id").to_pylist())
            agree = agree and got == want
            found += len(want)
    ms = np.array([v for g in gathered for v in g[1]])
    return {"cone_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "cone_p99_ms": round(float(np.percentile(ms, 99)), 2),
            "cone_mean_ms": round(float(ms.mean()), 2),
            "cone_requests_per_s": round(len(ms) / wall, 1), "cone_requests": len(ms),
            "cone_rows_found": found, "cone_agree": agree, "workers": workers}


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: int(float(s)), default=10_000_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--queries", type=int, default=100, help="per client")
    parser.add_argument("--workers", type=int, default=2, help="API worker processes")
    parser.add_argument("--reload", action="store_true", help="load again even if loaded")
    parser.add_argument("--drop", action="store_true", help="drop the databases at the end")
    args = parser.parse_args()

    settings = Settings()
    chunker = Chunker(settings.chunk_stripes, settings.chunk_sub_stripes)
    layouts = [Layout(settings, chunker, 1), Layout(settings, chunker, 2)]
    result: dict[str, Any] = {}
    try:
        load_s = load(layouts, args.rows, args.seed, chunker, reload=args.reload)
        with tempfile.TemporaryDirectory(prefix="bench-tap-schema-") as folder:
            tap = TapSchema(Path(folder) / "tap_schema.db")
            engines = {t.count: Engine(tap, t.catalog) for t in layouts}
            scans = {}
            for count, engine in engines.items():
                median, times, counts = scan(engine, args.repeats)
                assert sum(counts.values()) == args.rows, (count, counts)
                scans[count] = (median, times, counts)
                print(f"scan on {count} shard(s): median {median:.2f} s of "
                      f"{', '.join(f'{t:.2f}' for t in times)}; {counts}", flush=True)
            assert scans[1][2] == scans[2][2], "the two layouts answer differently"
            crossmatch = xmatch(engines[2], layouts[1], args.seed)
            figures = cones(layouts[1], engines[2], args.workers, args.clients, args.queries,
                            args.seed)
        print(f"cone over HTTP, {args.clients} clients, {args.workers} worker(s): p50 "
              f"{figures['cone_p50_ms']} ms, p99 {figures['cone_p99_ms']} ms, "
              f"{figures['cone_requests_per_s']} req/s, answers agree: {figures['cone_agree']}",
              flush=True)
        result = {
            "cone_p50_ms": figures["cone_p50_ms"], "cone_p99_ms": figures["cone_p99_ms"],
            "scan_s": round(scans[2][0], 3), "scan_rows": args.rows,
            "scan_speedup_2_shards": round(scans[1][0] / scans[2][0], 2),
            **crossmatch,
            "scan_1_shard_s": round(scans[1][0], 3), "scan_times_s": {
                str(c): [round(t, 3) for t in s[1]] for c, s in scans.items()},
            "scan_counts": scans[2][2], "objects": _count(layouts[1], "objects"),
            "load_s": None if load_s is None else round(load_s, 1),
            **{k: v for k, v in figures.items() if k not in ("cone_p50_ms", "cone_p99_ms")},
            "clients": args.clients, "radius_deg": RADIUS, "cores": os.cpu_count()}
    finally:
        for layout in layouts:
            if args.drop:
                layout.shards.drop_database()
            layout.catalog.close()
    print(json.dumps(result))
    return result


def _count(layout: Layout, table: str) -> int:
    def work(cursor: Any) -> int:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cursor.fetchone()[0])
    return sum(layout.shards.all_shards(work, write=False).values())


if __name__ == "__main__":
    main()
