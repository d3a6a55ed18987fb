# Over 500 lines: the reference-catalog contract (load, reload, changes, locks, CLI) as one suite.
"""Reference catalogs in the chunked layout: one store, run unchanged over two SQLite files and
over the two real MariaDB shards."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from broker.domain.catalogs import plan_columns, prepare_batch, validate_name
from broker.domain.described import CatalogDescription, ColumnDescription
from broker.domain.sky import Chunker, angular_separation_deg, crc32_of
from broker.storage.refcat import (
    CatalogBusyError,
    ChunkedRefCatalogs,
    RefCatalogError,
    UnknownCatalogError,
    catalog_lock_name,
    open_catalog_file,
    state_table,
    table_names,
)
from broker.storage.shards import MariaDBShards, ShardSet, SQLiteShards
from tests.storage.conftest import reopen
from tests.support.catalogs import HIPPARCOS, OPENNGC, SIRIUS, VEGA, version_rows
from tests.support.data import REPO_ROOT

CHUNKER = Chunker(85, 12)


@pytest.fixture
def catalogs(shard_set: ShardSet) -> Iterator[ChunkedRefCatalogs]:
    store = ChunkedRefCatalogs(shard_set, CHUNKER)
    try:
        yield store
    finally:
        store.close()


def _brute_force(table: pa.Table, id_col: str, ra_col: str, dec_col: str, ra: float,
                 dec: float, radius: float) -> list:
    ids = table.column(id_col).to_pylist()
    ras = table.column(ra_col).to_numpy(zero_copy_only=False)
    decs = table.column(dec_col).to_numpy(zero_copy_only=False)
    distance = angular_separation_deg(np.full(len(ras), ra), np.full(len(ras), dec), ras, decs)
    inside = [(d, i) for d, i in zip(distance.tolist(), ids, strict=True) if d <= radius]
    return [i for _, i in sorted(inside, key=lambda p: (p[0], str(p[1])))]


def test_hipparcos(catalogs, tmp_path: Path) -> None:
    path = HIPPARCOS
    source = open_catalog_file(path, 30_000)
    seen: list[int] = []
    report = catalogs.load("hipparcos", source.batches, "hip", "ra", "dec", seen.append)
    table = pq.read_table(path)
    assert report.rows == table.num_rows
    assert report.skipped == 0
    assert sum(seen) == table.num_rows
    assert report.overlap_rows > 0
    [entry] = catalogs.list()
    assert entry["name"] == "hipparcos"
    assert entry["rows"] == table.num_rows
    assert entry["columns"][:3] == [["id", "int64"], ["ra", "float64"], ["dec", "float64"]]

    sirius = catalogs.get("hipparcos", SIRIUS[0])
    assert sirius is not None
    assert sirius["id"] == SIRIUS[0]
    assert sirius["ra"] == pytest.approx(SIRIUS[1], abs=1e-4)
    assert sirius["dec"] == pytest.approx(SIRIUS[2], abs=1e-4)
    assert catalogs.get("hipparcos", str(VEGA[0]))["ra"] == pytest.approx(VEGA[1], abs=1e-4)
    assert catalogs.get("hipparcos", 999_999_999) is None

    found = catalogs.cone("hipparcos", VEGA[1], VEGA[2], 1.0, 100_000)
    expected = _brute_force(table, "hip", "ra", "dec", VEGA[1], VEGA[2], 1.0)
    assert len(expected) >= 5
    assert [r["id"] for r in found] == expected
    assert found[0]["id"] == VEGA[0]
    assert found[0]["distance_arcsec"] < 1.0
    distances = [r["distance_arcsec"] for r in found]
    assert distances == sorted(distances)
    # A wider cone spans many chunks (and both shards): still exactly the brute-force answer.
    wide = catalogs.cone("hipparcos", VEGA[1], VEGA[2], 6.0, 100_000)
    assert [r["id"] for r in wide] == _brute_force(table, "hip", "ra", "dec", VEGA[1], VEGA[2],
                                                   6.0)


def test_openngc(catalogs) -> None:
    path = OPENNGC
    source = open_catalog_file(path, 4_000)
    report = catalogs.load("openngc", source.batches, "id", "ra_deg", "dec_deg")
    source.close()
    table = pacsv.read_csv(path)
    assert report.skipped == 7  # rows with empty coordinates
    assert report.rows == table.num_rows - 7
    assert catalogs.list()[0]["rows"] == report.rows
    m31 = catalogs.get("openngc", "NGC0224")
    original = table.filter(pa.compute.equal(table.column("id"), "NGC0224")).to_pylist()[0]
    assert m31["ra"] == pytest.approx(original["ra_deg"])
    assert m31["identifiers"] == original["identifiers"]  # commas and quotes survive the load
    assert m31["messier"] == 31
    assert m31["common_names"] == original["common_names"]
    # A row with empty coordinates was skipped, not stored.
    no_position = table.filter(pa.compute.is_null(table.column("ra_deg"))).column("id")
    assert catalogs.get("openngc", no_position[0].as_py()) is None
    found = catalogs.cone("openngc", m31["ra"], m31["dec"], 0.5, 1000)
    valid = table.filter(pa.compute.is_valid(table.column("ra_deg")))
    assert [r["id"] for r in found] == _brute_force(valid, "id", "ra_deg", "dec_deg",
                                                     m31["ra"], m31["dec"], 0.5)


def _edge_pairs() -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Pairs of points 10-20 arcsec apart on either side of chunk edges."""
    step = 10.0 / 3600.0
    pairs = []
    # Stripe boundaries (declination edges), at a few RAs.
    height = 180.0 / CHUNKER.num_stripes
    for k, ra in ((20, 33.3), (42, 150.0), (43, 200.5), (70, 300.0)):
        edge = -90.0 + k * height
        pairs.append(((ra, edge - step), (ra, edge + step)))
    # RA boundaries inside stripes: found by scanning for a change of chunk id.
    for dec in (-61.0, 0.4, 30.1, 75.2):
        ras = np.arange(0.5, 40.0, 1e-4)
        ids = CHUNKER.locate(ras, np.full(ras.size, dec))
        i = int(np.nonzero(np.diff(ids))[0][0])
        edge = 0.5 * (ras[i] + ras[i + 1])
        d_ra = step / np.cos(np.radians(dec))
        pairs.append(((edge - d_ra, dec), (edge + d_ra, dec)))
    # RA = 0 wraps around.
    for dec in (0.1, -45.2):
        d_ra = step / np.cos(np.radians(dec))
        pairs.append(((360.0 - d_ra, dec), (d_ra, dec)))
    return pairs


def test_overlap_at_chunk_edges(catalogs) -> None:
    pairs = _edge_pairs()
    points = [p for pair in pairs for p in pair]
    ids = np.arange(1, len(points) + 1, dtype=np.int64)
    ra = np.array([p[0] for p in points])
    dec = np.array([p[1] for p in points])
    assert angular_separation_deg(ra[0::2], dec[0::2], ra[1::2], dec[1::2]).max() < 30 / 3600
    batch = pa.record_batch({"oid": ids, "ra": ra, "dec": dec})
    catalogs.load("edges", [batch], "oid", "ra", "dec")
    chunks = CHUNKER.locate(ra, dec)
    for k in range(len(pairs)):
        a, b = 2 * k, 2 * k + 1
        assert chunks[a] != chunks[b], pairs[k]
        rows = catalogs.chunk_rows("edges", [int(chunks[a]), int(chunks[b])])
        ids_a = rows[int(chunks[a])][0].tolist()
        ids_b = rows[int(chunks[b])][0].tolist()
        assert ids[a] in ids_a
        assert ids[b] in ids_a, f"{pairs[k]}: the partner is missing from the halo"
        assert ids[a] in ids_b, f"{pairs[k]}: the partner is missing from the halo"
        assert len(ids_a) == len(set(ids_a))
        # The cone reads main tables only: each row once.
        cone = catalogs.cone("edges", ra[a], dec[a], 60 / 3600, 100)
        assert sorted(r["id"] for r in cone) == sorted({int(ids[a]), int(ids[b])})


def _version_batches(tag: int, n: int, seed: int, pause: float = 0.0,
                     fail_after: int | None = None) -> Iterator[pa.RecordBatch]:
    rng = np.random.default_rng(seed)
    per = max(1, n // 8)
    for i, start in enumerate(range(0, n, per)):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("the input broke midway")
        size = min(per, n - start)
        yield pa.record_batch({
            "oid": np.arange(start, start + size, dtype=np.int64) + tag * 1_000_000,
            "ra": rng.uniform(10.0, 20.0, size), "dec": rng.uniform(-5.0, 5.0, size),
            "tag": np.full(size, tag, dtype=np.int64)})
        if pause:
            time.sleep(pause)


def test_reload_is_atomic(catalogs) -> None:
    catalogs.load("swap", _version_batches(1, 3000, 1), "oid", "ra", "dec")
    first_tables = catalogs.tables()
    seen: list[tuple[set, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                rows = catalogs.cone("swap", 15.0, 0.0, 8.0, 100_000)
                seen.append(({r["tag"] for r in rows}, len(rows)))
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        report = catalogs.load("swap", _version_batches(2, 4000, 2, pause=0.1), "oid", "ra",
                               "dec")
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    assert report.version == 2
    assert seen
    for tags, count in seen:
        assert (tags, count) in (({1}, 3000), ({2}, 4000))
    assert seen[0] == ({1}, 3000)
    assert seen[-1] == ({2}, 4000)
    tables = catalogs.tables()
    assert not set(first_tables) & set(tables)
    assert all("_v2" in t for t in tables)
    assert catalogs.list()[0]["rows"] == 4000

    # A load that fails midway leaves version 2 current and no partial tables.
    with pytest.raises(RuntimeError, match="midway"):
        catalogs.load("swap", _version_batches(3, 5000, 3, fail_after=3), "oid", "ra", "dec")
    assert catalogs.tables() == tables
    assert catalogs.list()[0]["version"] == 2
    assert {r["tag"] for r in catalogs.cone("swap", 15.0, 0.0, 8.0, 100_000)} == {2}

    catalogs.drop("swap")
    assert catalogs.list() == []
    assert catalogs.tables() == []


# ---- tombstones of row-level changes ----------------------------------------------------------


def _changes(rows: list[tuple[int, float, float, int]]) -> pa.Table:
    """Upserts (oid, ra, dec, version) with the columns of `_version_batches`."""
    return pa.table({"oid": pa.array([r[0] for r in rows], pa.int64()),
                     "ra": pa.array([r[1] for r in rows], pa.float64()),
                     "dec": pa.array([r[2] for r in rows], pa.float64()),
                     "tag": pa.array([7] * len(rows), pa.int64()),
                     "version": pa.array([r[3] for r in rows], pa.int64())})


def _apply(catalogs: Any, name: str, upserts: list[tuple[int, float, float, int]],
           deletes: list[tuple[int, int]] = ()) -> Any:
    return catalogs.apply(name, _changes(upserts), list(deletes), id_col="oid", ra_col="ra",
                          dec_col="dec")


def _snapshot(catalogs: Any, name: str) -> tuple[dict, dict[int, tuple[int, int]]]:
    """What readers see (the row count; every main, halo and director row, per shard) and the
    row-level state (id -> (version, deleted))."""
    [entry] = [e for e in catalogs.list() if e["name"] == name]
    per_shard = version_rows(catalogs, name, state=True)
    view: dict = {shard: found for shard, (found, _) in per_shard.items()}
    rows = [r for _, part in per_shard.values() for r in part]
    view["rows"] = entry["rows"]
    return view, {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _tombstones(state: dict[int, tuple[int, int]]) -> set[int]:
    return {key for key, (_, deleted) in state.items() if deleted}


def _another(catalogs: Any) -> Any:
    """A second store on the same database (another process would have its own)."""
    return ChunkedRefCatalogs(reopen(catalogs.shards), CHUNKER)


def test_purge_tombstones(catalogs) -> None:
    rng = np.random.default_rng(5)
    ids = list(range(1, 41))
    where = {i: (float(rng.uniform(0, 360)), float(rng.uniform(-80, 80))) for i in ids}
    assert _apply(catalogs, "live", [(i, *where[i], 1) for i in ids]).upserted == 40
    early, ghosts, late = ids[:10], [1001, 1002, 1003, 1004], ids[10:15]
    # Deletes of rows, and of ids never seen (their tombstones wait for a late insert).
    assert _apply(catalogs, "live", [], [(i, 2) for i in early + ghosts]).deleted == 14
    # While its tombstone is there, an older insert delivered late is ignored.
    stale = _apply(catalogs, "live", [(1, *where[1], 1), (1001, 10.0, 10.0, 1)])
    assert (stale.upserted, stale.ignored) == (0, 2)
    time.sleep(2.0)
    assert _apply(catalogs, "live", [], [(i, 3) for i in late]).deleted == 5
    view, state = _snapshot(catalogs, "live")
    assert _tombstones(state) == set(early + ghosts + late)
    assert view["rows"] == 25
    found = [catalogs.get("live", i) for i in ids]
    assert sum(r is not None for r in found) == 25

    # A grace longer than any tombstone's age removes nothing; one of 1 s only the early ones.
    assert catalogs.purge_tombstones("live", 3600) == 0
    assert _snapshot(catalogs, "live") == (view, state)
    assert catalogs.purge_tombstones("live", 1.0) == 14
    assert _tombstones(_snapshot(catalogs, "live")[1]) == set(late)
    assert catalogs.purge_tombstones("live", 0) == 5
    after, after_state = _snapshot(catalogs, "live")
    # Exactly the tombstones went: the live state rows and everything a reader sees are as before.
    assert after_state == {key: value for key, value in state.items() if not value[1]}
    assert after == view
    assert [catalogs.get("live", i) for i in ids] == found
    assert catalogs.purge_tombstones("live", 0) == 0

    # The trade-off: with the tombstones gone, the same stale inserts apply.
    again = _apply(catalogs, "live", [(1, *where[1], 1), (1001, 10.0, 10.0, 1)])
    assert (again.upserted, again.ignored) == (2, 0)
    assert catalogs.get("live", 1)["ra"] == where[1][0]
    assert catalogs.get("live", 1001) is not None

    with pytest.raises(UnknownCatalogError):
        catalogs.purge_tombstones("nothing", 0)
    catalogs.load("bulk", _version_batches(1, 500, 1), "oid", "ra", "dec")
    assert catalogs.purge_tombstones("bulk", 0) == 0  # bulk-loaded only: no state table
    assert state_table("bulk", 1) not in catalogs.tables()
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="older_than_s"):
            catalogs.purge_tombstones("live", bad)
    assert catalogs.purge_tombstones("live", 1e15) == 0  # older than the calendar: nothing


def _make_legacy(catalogs: Any, name: str) -> None:
    """Turn the catalog's state table back into one made before ``changed_at`` existed."""
    [entry] = [e for e in catalogs.list() if e["name"] == name]
    state = state_table(name, entry["version"])
    def work(cursor: Any) -> None:
        if isinstance(catalogs.shards, SQLiteShards):
            cursor.execute(f"DROP INDEX `{state}_tombstones`")
            cursor.execute(f"ALTER TABLE `{state}` DROP COLUMN changed_at")
        else:
            cursor.execute(f"ALTER TABLE `{state}` DROP INDEX `{state}_tombstones`, "
                           "DROP COLUMN changed_at")

    catalogs.shards.all_shards(work)


def test_state_tables_of_an_earlier_release_are_upgraded(catalogs) -> None:
    _apply(catalogs, "old", [(i, 20.0 + i, 5.0, 1) for i in range(1, 11)])
    _apply(catalogs, "old", [], [(i, 2) for i in range(1, 5)])
    _make_legacy(catalogs, "old")
    # Through a purge: the old tombstones are dated at the upgrade, so a grace counts from there.
    second = _another(catalogs)
    try:
        assert second.purge_tombstones("old", 60) == 0
        assert _tombstones(_snapshot(second, "old")[1]) == {1, 2, 3, 4}
        assert second.purge_tombstones("old", 0) == 4
        _apply(second, "old", [], [(5, 2), (6, 2)])
        _make_legacy(second, "old")
    finally:
        second.close()
    # Through a change: the same.
    third = _another(catalogs)
    try:
        assert _apply(third, "old", [], [(7, 2)]).deleted == 1
        assert third.purge_tombstones("old", 60) == 0
        assert third.purge_tombstones("old", 0) == 3
        assert sorted(_snapshot(third, "old")[1]) == [8, 9, 10]
    finally:
        third.close()


# ---- one writer per catalog -------------------------------------------------------------------


def test_lock_names() -> None:
    assert catalog_lock_name("lanner", "dr_objects") == "lanner_refcat.lanner.dr_objects"
    long_a = catalog_lock_name("d" * 64, "a" * 31)
    long_b = catalog_lock_name("d" * 64, "b" * 31)
    assert len(long_a) <= 64
    assert long_a != long_b
    assert long_a == catalog_lock_name("d" * 64, "a" * 31)
    with pytest.raises(ValueError, match="catalog name"):
        catalog_lock_name("lanner", "Bad")


def test_concurrent_loads_of_one_catalog(catalogs) -> None:
    catalogs.lock_wait_s = 0.3
    started, gate = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def held_open() -> Iterator[pa.RecordBatch]:
        batches = list(_version_batches(1, 3000, 1))
        yield batches[0]
        started.set()
        assert gate.wait(60)
        yield from batches[1:]

    def first() -> None:
        try:
            outcome["report"] = catalogs.load("swap", held_open(), "oid", "ra", "dec")
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(60)
        read: list[int] = []

        def second() -> Iterator[pa.RecordBatch]:
            read.append(1)
            yield from _version_batches(2, 1000, 2)

        began = time.monotonic()
        with pytest.raises(CatalogBusyError,
                           match="catalog swap is being loaded or changed by another process"):
            catalogs.load("swap", second(), "oid", "ra", "dec")
        assert time.monotonic() - began < 2.0
        assert read == []  # refused before reading its input
        # Another catalog loads meanwhile.
        assert catalogs.load("other", _version_batches(3, 500, 3), "oid", "ra", "dec").rows == 500
        # The short operations on the catalog being loaded wait a little, then give up.
        for operation in (lambda: catalogs.drop("swap"),
                          lambda: catalogs.purge_tombstones("swap", 0),
                          lambda: _apply(catalogs, "swap", [(1, 15.0, 0.0, 1)])):
            with pytest.raises(CatalogBusyError):
                operation()
    finally:
        gate.set()
        thread.join(60)
    assert "error" not in outcome, outcome
    assert (outcome["report"].rows, outcome["report"].version) == (3000, 1)
    entries = {e["name"]: e for e in catalogs.list()}
    assert (entries["swap"]["rows"], entries["swap"]["version"]) == (3000, 1)
    assert entries["other"]["rows"] == 500
    rows = catalogs.cone("swap", 15.0, 0.0, 8.0, 100_000)
    assert len(rows) == 3000
    assert {r["tag"] for r in rows} == {1}
    expected = set(table_names("swap", 1))
    assert {t for t in catalogs.tables() if t.startswith("rc_swap")} == expected
    # Free again: a reload goes through.
    assert catalogs.load("swap", _version_batches(2, 1000, 2), "oid", "ra", "dec").version == 2


def test_a_failed_load_frees_the_lock(catalogs) -> None:
    with pytest.raises(RuntimeError, match="midway"):
        catalogs.load("swap", _version_batches(1, 2000, 1, fail_after=2), "oid", "ra", "dec")
    if isinstance(catalogs.shards, MariaDBShards):
        database = catalogs.shards.database

        def free(cursor: Any) -> int:
            cursor.execute("SELECT IS_FREE_LOCK(%s)", [catalog_lock_name(database, "swap")])
            return int(cursor.fetchone()[0])

        assert catalogs.shards.run(0, free, write=False) == 1
    with pytest.raises(RefCatalogError, match="no rows"):
        catalogs.load("swap", [], "oid", "ra", "dec")
    # A load never waits: a lock left behind would fail it at once.
    assert catalogs.load("swap", _version_batches(1, 2000, 1), "oid", "ra", "dec").rows == 2000


@contextlib.contextmanager
def _locked_elsewhere(catalogs: Any, name: str) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Hold a catalog's lock outside this process's store: a MariaDB session of its own, or
    another process (SQLite). Yields who holds it, as the error names it, and how to end the
    holder (the session closes, the process is killed)."""
    if isinstance(catalogs.shards, SQLiteShards):
        code = textwrap.dedent(f"""
            import sys
            from broker.domain.sky import Chunker
            from broker.storage.refcat import ChunkedRefCatalogs
            from broker.storage.shards import SQLiteShards
            store = ChunkedRefCatalogs(SQLiteShards({str(catalogs.shards.folder)!r},
                                                    {len(catalogs.shards)}), Chunker(85, 12))
            with store._exclusive({name!r}, 0):
                print("held", flush=True)
                sys.stdin.read()
        """)
        process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"held\n"
            yield f"pid {process.pid}", lambda: (process.kill(), process.wait())
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return
    catalogs.setup()
    connection = catalogs.shards.connect(0)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()",
                           [catalog_lock_name(catalogs.shards.database, name)])
            taken, session = cursor.fetchone()
        assert taken == 1
        yield f"MariaDB connection id {session}", connection.close
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def test_a_catalog_locked_by_another_process(catalogs) -> None:
    catalogs.load("swap", _version_batches(1, 1000, 1), "oid", "ra", "dec")
    before = catalogs.cone("swap", 15.0, 0.0, 8.0, 100_000)
    catalogs.lock_wait_s = 0.3
    with _locked_elsewhere(catalogs, "swap") as (holder, end_holder):
        with pytest.raises(CatalogBusyError, match=re.escape(
                f"catalog swap is being loaded or changed by another process ({holder})")):
            catalogs.load("swap", _version_batches(2, 1000, 2), "oid", "ra", "dec")
        began = time.monotonic()
        with pytest.raises(CatalogBusyError, match=re.escape(holder)) as busy:
            _apply(catalogs, "swap", [(5, 15.0, 1.0, 1)])
        assert 0.25 <= time.monotonic() - began < 5.0  # waited lock_wait_s, then gave up
        assert busy.value.reason == "catalog_busy"
        assert catalogs.cone("swap", 15.0, 0.0, 8.0, 100_000) == before  # reads never wait
        # The holder ends (its process dies) while a change waits: the change goes through.
        catalogs.lock_wait_s = 20.0
        timer = threading.Timer(0.5, end_holder)
        timer.start()
        began = time.monotonic()
        try:
            report = _apply(catalogs, "swap", [(5, 15.0, 1.0, 1)])
        finally:
            timer.join()
        assert time.monotonic() - began >= 0.4
        assert report.upserted == 1
    assert catalogs.get("swap", 5)["dec"] == 1.0
    assert catalogs.load("swap", _version_batches(2, 1000, 2), "oid", "ra", "dec").version == 2


def test_catalog_busy_is_transient() -> None:
    from broker.exceptions import TransientError

    error = CatalogBusyError("swap", "MariaDB connection id 12")
    assert isinstance(error, TransientError)
    assert isinstance(error, RefCatalogError)
    assert str(error) == ("catalog swap is being loaded or changed by another process "
                          "(MariaDB connection id 12)")


def test_bad_input(catalogs) -> None:
    batch = pa.record_batch({"oid": [1, 2], "ra": [1.0, 2.0], "dec": [3.0, 4.0]})
    for bad in ("Bad", "1abc", "a-b", "", "x" * 32):
        with pytest.raises(ValueError, match="catalog name"):
            catalogs.load(bad, [batch], "oid", "ra", "dec")
    with pytest.raises(ValueError, match="'nope'"):
        catalogs.load("good", [batch], "nope", "ra", "dec")
    with pytest.raises(ValueError, match="'decl'"):
        catalogs.load("good", [batch], "oid", "ra", "decl")
    duplicated = pa.record_batch({"oid": [1, 1], "ra": [1.0, 2.0], "dec": [3.0, 4.0]})
    with pytest.raises(RefCatalogError, match="ids"):
        catalogs.load("dupes", [duplicated], "oid", "ra", "dec")
    assert catalogs.list() == []
    assert catalogs.tables() == []
    with pytest.raises(UnknownCatalogError):
        catalogs.cone("good", 1.0, 3.0, 1.0, 10)
    with pytest.raises(UnknownCatalogError):
        catalogs.get("good", 1)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RefCatalogError, match="not a file"):
        open_catalog_file(tmp_path / "missing.parquet")
    other = tmp_path / "cat.fits"
    other.write_bytes(b"SIMPLE")
    with pytest.raises(RefCatalogError, match="unknown format"):
        open_catalog_file(other)


# ---- domain -------------------------------------------------------------------------------


def test_names_and_columns() -> None:
    assert validate_name("gaia_dr3") == "gaia_dr3"
    for bad in ("Gaia", "gaia\n", "gaia-dr3", "", "x" * 32):
        with pytest.raises(ValueError, match="is not valid"):
            validate_name(bad)
    schema = pa.schema([("ID", pa.string()), ("RA", pa.float64()), ("Dec", pa.float32()),
                        ("ra", pa.float64()), ("chunk_id", pa.int32()), ("B-V", pa.float32()),
                        ("2mass", pa.string()), ("flag", pa.bool_()), ("when", pa.date32())])
    columns = plan_columns(schema, "ID", "RA", "Dec")
    assert columns.id.kind == "text"
    assert columns.stored == [("id", "text"), ("ra", "float64"), ("dec", "float64"),
                              ("ra_2", "float64"), ("chunk_id_2", "int64"), ("b_v", "float64"),
                              ("_2mass", "text"), ("flag", "bool"), ("when", "text")]


def test_prepare_skips_bad_positions() -> None:
    batch = pa.record_batch({
        "oid": pa.array([1, 2, None, 4, 5, 6, 7], pa.int64()),
        "ra": pa.array([10.0, None, 10.0, np.nan, 400.0, 360.0, 0.0]),
        "dec": pa.array([0.0, 0.0, 0.0, 0.0, 0.0, 91.0, -90.0])})
    columns = plan_columns(batch.schema, "oid", "ra", "dec")
    prepared = prepare_batch(batch, columns, CHUNKER, 1 / 60)
    assert prepared.skipped == 5
    assert prepared.table.column("id").to_pylist() == [1, 7]
    assert prepared.chunk_id.tolist() == CHUNKER.locate(np.array([10.0, 0.0]),
                                                        np.array([0.0, -90.0])).tolist()


def test_crc32_matches_zlib() -> None:
    ids = pa.array(["32349", "NGC0224", "é", "", "x" * 70])
    assert crc32_of(ids).tolist() == [zlib.crc32(s.encode()) for s in ids.to_pylist()]
    numbers = pa.array(np.arange(-5, 100_000, 7, dtype=np.int64)).slice(3)
    assert crc32_of(numbers).tolist() == [zlib.crc32(str(i).encode())
                                          for i in numbers.to_pylist()]


def test_cli_load_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from broker.cli import app
    from broker.config import get_settings

    monkeypatch.setenv("LANNER_BACKEND", "embedded")
    monkeypatch.setenv("LANNER_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        path = tmp_path / "tiny.csv"
        path.write_text('name,RA,DEC,note\na1,10.5,-3.25,"x, ""y"""\na2,,1.0,\na3,200.0,45.0,z\n')
        result = runner.invoke(app, ["catalog", "load", "tiny", str(path), "--id-col", "name",
                                     "--ra-col", "RA", "--dec-col", "DEC"])
        assert result.exit_code == 0, result.output
        assert "2 rows, 1 skipped" in result.output
        result = runner.invoke(app, ["catalog", "list"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("tiny 2 rows v1")
        files = SQLiteShards(tmp_path / "state" / "embedded", 2, stem="catalog")
        try:
            assert ChunkedRefCatalogs(files, CHUNKER).get("tiny", "a1")["note"] == 'x, "y"'
        finally:
            files.close()
        # Dropping asks first (no: nothing happens), then drops.
        result = runner.invoke(app, ["catalog", "drop", "tiny"], input="n\n")
        assert result.exit_code == 1, result.output
        assert runner.invoke(app, ["catalog", "list"]).output.startswith("tiny 2 rows")
        result = runner.invoke(app, ["catalog", "drop", "tiny"], input="y\n")
        assert result.exit_code == 0, result.output
        assert "catalog tiny dropped (2 rows)" in result.output
        assert "no reference catalogs loaded" in runner.invoke(app, ["catalog", "list"]).output
        result = runner.invoke(app, ["catalog", "drop", "tiny", "--yes"])
        assert result.exit_code == 1
        assert "no reference catalog named 'tiny'" in result.output
        result = runner.invoke(app, ["catalog", "load", "tiny", str(path), "--id-col", "name",
                                     "--ra-col", "RA", "--dec-col", "DEC"])
        assert result.exit_code == 0, result.output
        for args, message in (
            (["catalog", "load", "tiny", str(tmp_path / "no.csv")], "not a file"),
            (["catalog", "load", "Tiny", str(path)], "catalog name"),
            (["catalog", "load", "tiny", str(path), "--id-col", "nope"], "'nope'"),
        ):
            result = runner.invoke(app, args)
            assert result.exit_code == 1, result.output
            assert message in result.output
            assert "Traceback" not in result.output
    finally:
        get_settings.cache_clear()


def test_cli_purge_tombstones_and_busy_load(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from broker.cli import app
    from broker.config import get_settings

    monkeypatch.setenv("LANNER_BACKEND", "embedded")
    monkeypatch.setenv("LANNER_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    files = SQLiteShards(tmp_path / "state" / "embedded", 2, stem="catalog")
    store = ChunkedRefCatalogs(files, CHUNKER)
    try:
        runner = CliRunner()
        _apply(store, "tiny", [(1, 10.0, 0.0, 1), (2, 11.0, 0.0, 1), (3, 12.0, 0.0, 1)])
        _apply(store, "tiny", [], [(1, 2), (2, 2)])
        result = runner.invoke(app, ["catalog", "purge-tombstones", "tiny"])
        assert result.exit_code == 0, result.output
        assert "catalog tiny: 0 tombstones older than 1,296,000 s (15 days)" in result.output
        result = runner.invoke(app, ["catalog", "purge-tombstones", "tiny", "--older-than", "0"])
        assert result.exit_code == 0, result.output
        assert "catalog tiny: 2 tombstones" in result.output
        assert _tombstones(_snapshot(store, "tiny")[1]) == set()
        assert store.get("tiny", 3) is not None
        result = runner.invoke(app, ["catalog", "purge-tombstones", "nope"])
        assert result.exit_code == 1
        assert "no reference catalog named 'nope'" in result.output

        path = tmp_path / "tiny.csv"
        path.write_text("oid,ra,dec\n1,10.5,-3.25\n2,200.0,45.0\n")
        args = ["catalog", "load", "tiny", str(path), "--id-col", "oid"]
        with store._exclusive("tiny", 0):
            result = runner.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "error: catalog tiny is being loaded or changed by another" in result.output
        assert "Traceback" not in result.output
        assert store.get("tiny", 3) is not None  # untouched
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "catalog tiny v2: 2 rows" in result.output
    finally:
        files.close()
        get_settings.cache_clear()


def test_dead_shard_is_named(catalogs: ChunkedRefCatalogs) -> None:
    from broker.exceptions import ServiceUnavailableError

    catalogs.load("swap", _version_batches(1, 2000, 1), "oid", "ra", "dec")
    broken = reopen(catalogs.shards)
    if isinstance(broken, MariaDBShards):
        broken.addresses = [broken.addresses[0], ("127.0.0.1", 1)]
        where = r"MariaDB at 127\.0\.0\.1:1"
    else:
        assert isinstance(broken, SQLiteShards)
        broken.path(1).unlink()
        broken.path(1).mkdir()  # shard 1's file replaced by a folder
        where = "SQLite file " + re.escape(str(broken.path(1)))
    try:
        with pytest.raises(ServiceUnavailableError, match=rf"shard 1 \({where}\)"):
            ChunkedRefCatalogs(broken, CHUNKER).cone("swap", 15.0, 0.0, 8.0, 100)
    finally:
        broken.close()


@pytest.mark.parametrize(("stripes", "sub_stripes", "overlap"),
                         [(85, 12, 1 / 60), (36, 8, 0.2), (340, 3, 30 / 3600)])
def test_halo_pairs_equal_overlap_chunks(stripes: int, sub_stripes: int,
                                         overlap: float) -> None:
    from broker.domain.catalogs import halo_pairs
    from broker.domain.sky import overlap_chunks

    chunker = Chunker(stripes, sub_stripes)
    rng = np.random.default_rng(stripes)
    ra = rng.uniform(0, 360, 100_000)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 100_000)))
    # Points hugging stripe edges and the poles.
    edges = -90 + rng.integers(0, stripes, 20_000) * 180 / stripes
    ra = np.concatenate([ra, rng.uniform(0, 360, 20_000), [0.0, 359.99999, 12.0]])
    dec = np.clip(np.concatenate([dec, edges + rng.normal(0, overlap, 20_000),
                                  [89.999, -89.99, 0.0]]), -90, 90)
    fast = halo_pairs(chunker, ra, dec, overlap)
    full = overlap_chunks(chunker, ra, dec, overlap)
    assert set(zip(*(a.tolist() for a in fast), strict=True)) == \
        set(zip(*(a.tolist() for a in full), strict=True))


def test_cone_rejects_bad_input(catalogs: ChunkedRefCatalogs) -> None:
    catalogs.load("swap", _version_batches(1, 500, 1), "oid", "ra", "dec")
    for ra, dec, radius, limit in [(math.nan, 0.0, 1.0, 10), (0.0, math.inf, 1.0, 10),
                                   (0.0, 91.0, 1.0, 10), (0.0, -90.5, 1.0, 10),
                                   (0.0, 0.0, -1.0, 10), (0.0, 0.0, math.nan, 10),
                                   (0.0, 0.0, 1.0, -1), (0.0, 0.0, 181.0, 10)]:
        with pytest.raises(ValueError, match=r"cone|limit"):
            catalogs.cone("swap", ra, dec, radius, limit)
    assert catalogs.cone("swap", 15.0, 0.0, 8.0, 0) == []
    with pytest.raises(UnknownCatalogError):
        catalogs.cone("nope", 15.0, 0.0, 1.0, 10)


# ---- kinds and shapes ---------------------------------------------------------------------------


def test_kind_and_shape_are_kept_in_the_registry(catalogs: ChunkedRefCatalogs) -> None:
    from broker.domain.catalogs import CatalogShape, ShapeSpec

    source = open_catalog_file(OPENNGC, 4_000)
    try:
        catalogs.load("openngc", source.batches, "id", "ra_deg", "dec_deg", kind="galaxy",
                      shape=ShapeSpec("majax_arcmin", "minax_arcmin", "pa_deg"))
    finally:
        source.close()
    catalogs.load("hip", [pa.record_batch({"hip": [1, 2], "ra": [1.0, 2.0], "dec": [0.0, 0.0]})],
                  "hip", "ra", "dec", kind="star")
    entries = {e["name"]: e for e in catalogs.list()}
    assert entries["hip"]["kind"] == "star"
    assert entries["hip"]["shape"] is None
    assert entries["openngc"]["kind"] == "galaxy"
    assert entries["openngc"]["shape"] == {"major": "majax_arcmin", "minor": "minax_arcmin",
                                           "pa": "pa_deg", "unit": "arcmin", "axes": "diameter"}
    assert catalogs.describe("openngc")["shape"] == entries["openngc"]["shape"]
    # M31: 177.8' x 69.7' diameters in OpenNGC, so semi-axes of 88.9' and 34.85'.
    m31 = catalogs.get("openngc", "NGC0224")
    shape = CatalogShape.from_json(entries["openngc"]["shape"])
    assert shape is not None
    major, minor = shape.semi_axes_arcsec(m31["majax_arcmin"], m31["minax_arcmin"])
    assert (major, minor) == pytest.approx((m31["majax_arcmin"] * 30, m31["minax_arcmin"] * 30))
    # A reload may change the kind; a catalog made by row-level changes is generic.
    catalogs.load("hip", [pa.record_batch({"hip": [1], "ra": [1.0], "dec": [0.0]})],
                  "hip", "ra", "dec", kind="qso")
    assert catalogs.describe("hip")["kind"] == "qso"
    _apply(catalogs, "changed", [(1, 10.0, 0.0, 1)])
    assert catalogs.describe("changed")["kind"] == "generic"


def test_a_catalog_without_the_shape_its_kind_needs_is_refused(
        catalogs: ChunkedRefCatalogs) -> None:
    from broker.domain.catalogs import ShapeSpec

    batch = pa.record_batch({"gid": [1], "ra": [1.0], "dec": [0.0], "d25": [1.5],
                             "name": ["x"]})
    for kind, shape, message in (
            ("galaxy", None, "galaxy catalog needs its shape columns: give --major-col"),
            ("galaxy", ShapeSpec("size"), "shape columns major 'size' are not data columns"),
            ("galaxy", ShapeSpec("d25", "b25", "pa"), "minor 'b25', pa 'pa'"),
            ("galaxy", ShapeSpec("name"), "major 'name' are not numeric"),
            ("galaxy", ShapeSpec("d25", unit="parsec"), "shape unit 'parsec'"),
            ("nebula", None, "catalog kind 'nebula' is not one of"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            catalogs.load("gals", [batch], "gid", "ra", "dec", kind=kind, shape=shape)
    assert "gals" not in {e["name"] for e in catalogs.list()}
    assert not [t for t in catalogs.tables() if t.startswith("rc_gals")]  # nothing written
    catalogs.load("gals", [batch], "gid", "ra", "dec", kind="galaxy", shape=ShapeSpec("d25"))
    assert catalogs.describe("gals")["shape"]["minor"] is None


def test_motion_is_kept_in_the_registry_and_checked(catalogs: ChunkedRefCatalogs) -> None:
    from broker.domain.catalogs import CatalogMotion, CatalogShape, MotionSpec, ShapeSpec

    batch = pa.record_batch({"hip": [1, 2], "ra": [1.0, 2.0], "dec": [0.0, 0.0],
                             "pm ra": [100.0, -5.0], "pmdec": [50.0, 3.0], "name": ["a", "b"]})
    for motion, message in (
            (MotionSpec("pmx", "pmdec", 1991.25), "proper-motion columns pmra 'pmx' are not"),
            (MotionSpec("pm ra", "name", 1991.25), "pmdec 'name' are not numeric"),
            (MotionSpec("pm ra", "pmdec", math.nan), "epoch nan is not a Julian year"),
            (MotionSpec("pm ra", "pmdec", 48000.0), "epoch 48000.0 is not a Julian year"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            catalogs.load("stars", [batch], "hip", "ra", "dec", kind="star", motion=motion)
    assert "stars" not in {e["name"] for e in catalogs.list()}
    catalogs.load("stars", [batch], "hip", "ra", "dec", kind="star",
                  motion=MotionSpec("pm ra", "pmdec", 1991.25))
    shape = catalogs.describe("stars")["shape"]
    # Stored column names (sanitised), not the input's.
    assert shape == {"motion": {"pmra": "pm_ra", "pmdec": "pmdec", "epoch_jyear": 1991.25}}
    assert CatalogShape.from_json(shape) is None
    assert CatalogMotion.from_json(shape) == CatalogMotion("pm_ra", "pmdec", 1991.25)
    assert catalogs.get("stars", 1)["pm_ra"] == 100.0
    # A galaxy catalog may carry both.
    catalogs.load("gals", [pa.record_batch({"gid": [1], "ra": [1.0], "dec": [0.0], "d25": [1.0],
                                            "pmra": [0.0], "pmdec": [0.0]})],
                  "gid", "ra", "dec", kind="galaxy", shape=ShapeSpec("d25"),
                  motion=MotionSpec("pmra", "pmdec", 2016.0))
    both = catalogs.describe("gals")["shape"]
    assert CatalogShape.from_json(both) is not None
    assert CatalogMotion.from_json(both) == CatalogMotion("pmra", "pmdec", 2016.0)


def test_only_the_selected_rows_are_loaded(catalogs: ChunkedRefCatalogs) -> None:
    from broker.domain.catalogs import select_rows

    source = open_catalog_file(OPENNGC, 4_000)
    try:
        report = catalogs.load("galaxies", select_rows(source.batches, "type", ["G"]), "id",
                               "ra_deg", "dec_deg")
    finally:
        source.close()
    table = pacsv.read_csv(OPENNGC)
    types = table.column("type").to_pylist()
    galaxies = [t == "G" for t in types]
    valid = [g and ra is not None and dec is not None for g, ra, dec in zip(
        galaxies, table.column("ra_deg").to_pylist(), table.column("dec_deg").to_pylist(),
        strict=True)]
    assert report.rows == sum(valid)
    assert 0 < report.rows < len(types)
    assert catalogs.get("galaxies", "NGC0224") is not None  # M31, a galaxy
    assert catalogs.get("galaxies", "NGC7000") is None  # the North America nebula
    with pytest.raises(ValueError, match="the --only column 'kind' is not in the input"):
        list(select_rows(iter([pa.record_batch({"a": [1]})]), "kind", ["G"]))


def test_a_registry_of_an_earlier_release_gains_the_new_columns(
        catalogs: ChunkedRefCatalogs) -> None:
    """The registry made before kinds existed is brought up to date by setup: old catalogs
    read as generic, with no shape."""
    catalogs.load("old", [pa.record_batch({"i": [1], "ra": [1.0], "dec": [0.0]})],
                  "i", "ra", "dec", kind="star")

    def legacy(cursor: Any) -> None:
        if isinstance(catalogs.shards, SQLiteShards):
            for column in ("kind", "shape", "metadata"):
                cursor.execute(f"ALTER TABLE refcat_registry DROP COLUMN {column}")
        else:
            cursor.execute("ALTER TABLE refcat_registry DROP COLUMN kind, DROP COLUMN shape, "
                           "DROP COLUMN metadata")

    catalogs.shards.run(0, legacy)
    fresh = _another(catalogs)
    try:
        [entry] = fresh.list()
        assert (entry["name"], entry["kind"], entry["shape"], entry["metadata"]) == (
            "old", "generic", None, None)
    finally:
        fresh.shards.close()


def test_a_load_records_what_it_is_told_of_the_columns(catalogs: ChunkedRefCatalogs) -> None:
    """Units, UCDs and descriptions from the input's field metadata and from the caller (who
    wins), kept in the registry for TAP_SCHEMA; the id and the position are always the main
    ones, in degrees; a wrong unit, UCD or column name is refused before anything is
    written."""
    batch = pa.record_batch(
        [pa.array([1, 2]), pa.array([10.0, 11.0]), pa.array([5.0, 6.0]),
         pa.array([12.5, 13.0]), pa.array(["a", "b"])],
        schema=pa.schema([
            pa.field("sid", pa.int64()),
            pa.field("RA", pa.float64(), metadata={"unit": "rad", "ucd": "pos.eq.ra"}),
            pa.field("Dec", pa.float64()),
            pa.field("Vmag", pa.float64(), metadata={"unit": "mag", "ucd": "phot.mag",
                                                     "description": "From the file."}),
            pa.field("note", pa.string(), metadata={"description": "A note."})]))
    told = CatalogDescription("Two stars.", {
        "Vmag": ColumnDescription(ucd="phot.mag;em.opt.V"),
        "RA": ColumnDescription(description="Where it is.")})
    catalogs.load("told", [batch], "sid", "RA", "Dec", description=told)
    [entry] = catalogs.list()
    assert entry["metadata"] == {"description": "Two stars.", "columns": {
        "id": {"ucd": "meta.id;meta.main",
               "description": "The catalog's identifier (input column sid)."},
        "ra": {"unit": "deg", "ucd": "pos.eq.ra;meta.main", "description": "Where it is."},
        "dec": {"unit": "deg", "ucd": "pos.eq.dec;meta.main",
                "description": "ICRS declination (input column Dec)."},
        "vmag": {"unit": "mag", "ucd": "phot.mag;em.opt.V", "description": "From the file."},
        "note": {"description": "A note."}}}
    for wrong, said in [
        ({"Vmag": ColumnDescription(unit="furlongs")}, "column vmag: Invalid unit"),
        ({"Vmag": ColumnDescription(ucd="phot.nonsense")}, "column vmag: Invalid IVOA UCD"),
        ({"vmag": ColumnDescription(unit="mag")}, "columns the input does not have: vmag"),
    ]:
        with pytest.raises(ValueError, match=said):
            catalogs.load("told", [batch], "sid", "RA", "Dec",
                          description=CatalogDescription(columns=wrong))
    assert [e["version"] for e in catalogs.list()] == [1]
    assert catalogs.tables() == sorted(table_names("told", 1))


def test_cli_load_with_kind_and_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from broker.cli import app
    from broker.config import get_settings

    monkeypatch.setenv("LANNER_BACKEND", "embedded")
    monkeypatch.setenv("LANNER_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        args = ["catalog", "load", "ngc", str(OPENNGC), "--id-col", "id", "--ra-col", "ra_deg",
                "--dec-col", "dec_deg", "--kind", "galaxy"]
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "galaxy catalog needs its shape columns" in result.output
        assert "Traceback" not in result.output
        result = runner.invoke(app, [*args, "--major-col", "majax_arcmin", "--minor-col",
                                     "minax_arcmin", "--pa-col", "pa_deg"])
        assert result.exit_code == 0, result.output
        listed = runner.invoke(app, ["catalog", "list"]).output
        assert "ngc 14026 rows v1 galaxy" in listed
        assert "shape: majax_arcmin,minax_arcmin,pa_deg (diameters in arcmin)" in listed
        result = runner.invoke(app, ["catalog", "load", "x", str(OPENNGC), "--pa-col", "pa_deg"])
        assert result.exit_code == 1
        assert "--minor-col and --pa-col need --major-col" in result.output
        # Galaxies only, a wider overlap, and proper motions (OpenNGC has pmra_mas_yr).
        result = runner.invoke(app, [
            *args, "--major-col", "majax_arcmin", "--only", "type=G", "--overlap-arcmin", "10",
            "--pmra-col", "pmra_mas_yr", "--pmdec-col", "pmdec_mas_yr", "--epoch", "2000"])
        assert result.exit_code == 0, result.output
        listed = runner.invoke(app, ["catalog", "list"]).output
        assert "ngc 10521 rows v2 galaxy overlap 10'" in listed
        assert "motion: pmra_mas_yr,pmdec_mas_yr (mas/yr, epoch J2000)" in listed
        for extra, message in (
                (["--pmra-col", "pmra_mas_yr"], "--pmra-col, --pmdec-col and --epoch go"),
                (["--only", "type"], "--only 'type' is not COLUMN=V1[,V2...]"),
                (["--only", "kind=G"], "the --only column 'kind' is not in the input"),
                (["--overlap-arcmin", "30"], "overlap 30' is out of range")):
            result = runner.invoke(app, [*args, "--major-col", "majax_arcmin", *extra])
            assert result.exit_code == 1, extra
            assert message in result.output, (extra, result.output)
            assert "Traceback" not in result.output
        # The columns' units and UCDs, for TAP_SCHEMA, from a JSON file.
        told = tmp_path / "ngc.json"
        told.write_text(json.dumps({"description": "OpenNGC.", "columns": {
            "bmag": {"unit": "mag", "ucd": "phot.mag;em.opt.B"}}}))
        result = runner.invoke(app, [*args, "--major-col", "majax_arcmin", "--describe",
                                     str(told)])
        assert result.exit_code == 0, result.output
        from broker.factory import Factory

        factory = Factory(get_settings())
        try:
            [entry] = factory.refcats.list()
        finally:
            factory.close()
        assert entry["metadata"]["description"] == "OpenNGC."
        assert entry["metadata"]["columns"]["bmag"] == {"unit": "mag",
                                                        "ucd": "phot.mag;em.opt.B"}
        told.write_text(json.dumps({"columns": {"bmag": {"unit": "furlongs"}}}))
        result = runner.invoke(app, [*args, "--major-col", "majax_arcmin", "--describe",
                                     str(told)])
        assert result.exit_code == 1
        assert "column bmag: Invalid unit" in result.output
    finally:
        get_settings.cache_clear()


def test_rows_by_id_and_reads_of_one_version(catalogs: ChunkedRefCatalogs) -> None:
    from broker.exceptions import CatalogReloadedError
    from broker.storage.chunks import RefCatChunkSource, versioned

    source = open_catalog_file(HIPPARCOS, 30_000)
    try:
        catalogs.load("hip", source.batches, "hip", "ra", "dec", kind="star")
    finally:
        source.close()
    table = pq.read_table(HIPPARCOS, columns=["hip", "ra", "dec"])
    wanted = [int(i) for i in table.column("hip").to_pylist()[::997]]
    found = catalogs.rows("hip", [*wanted, -5, "not an int", wanted[0]])
    assert sorted(found) == sorted(wanted)
    for key in wanted[:20]:
        assert found[key] == catalogs.get("hip", key)
    # Chunks of version 1 by name@1; a reload makes that version gone, never half-read.
    chunker_source = RefCatChunkSource(catalogs)
    chunks = [CHUNKER.locate_one(*SIRIUS[1:]), CHUNKER.locate_one(*VEGA[1:])]
    one = chunker_source.load(versioned("hip", 1), chunks)
    assert {c: len(r) for c, r in one.items()} == {
        c: len(r) for c, r in chunker_source.load("hip", chunks).items()}
    assert SIRIUS[0] in one[chunks[0]].ids.tolist()
    catalogs.load("hip", [pa.record_batch({"hip": [1], "ra": [1.0], "dec": [0.0]})],
                  "hip", "ra", "dec", kind="star")
    with pytest.raises(CatalogReloadedError, match="version 1 is gone: version 2 is current"):
        chunker_source.load(versioned("hip", 1), chunks)
    with pytest.raises(CatalogReloadedError):
        catalogs.rows("hip", wanted, version=1)
    assert catalogs.rows("hip", [1], version=2)[1]["ra"] == 1.0
