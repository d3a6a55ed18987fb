"""`lanner demo`: the embedded first look archives simulated and real alerts with no server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker import demo
from broker.config import Backend, Settings
from broker.exceptions import LannerError
from broker.factory import Factory
from broker.filterset import utc_day
from broker.streaming.schemas import SchemaVersion
from consumers import ingest
from tests.support.catalogs import HIPPARCOS
from tests.support.data import REPO_ROOT


def test_demo_archives_simulated_and_real_alerts(tmp_path: Path) -> None:
    env = {**os.environ, "LANNER_STATE_DIR": str(tmp_path), "LANNER_BACKEND": "embedded"}
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "demo", "--count", "150", "--no-serve"],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # 150 simulated, 3 more placed on a star, a galaxy's disk and empty sky, 53 real ZTF.
    assert "archived 206 alerts (153 simulated Rubin 11.1, 53 real ZTF)" in result.stdout
    assert "enriched 206 alerts (" in result.stdout
    for placement in demo.PLACEMENTS:
        assert (f"/api/v1/objects/{placement.object_id}   {placement.label} "
                f"(context: {placement.context})") in result.stdout
    assert "/api/v1/objects/ZTF18abmmoot/lightcurve" in result.stdout
    assert "reference catalogs: hipparcos, openngc" in result.stdout
    assert "/api/v1/objects/ZTF20aabaesq/crossmatches?radius=300" in result.stdout

    # Read back through the stores the demo wrote, whatever files the embedded backend uses.
    factory = Factory(Settings(state_dir=tmp_path, backend=Backend.embedded))
    try:
        assert factory.lightcurves.counts()["packets"] == 206
        for placement in demo.PLACEMENTS:
            context = factory.catalog.context(str(placement.object_id))
            assert context is not None
            assert context["context"] == placement.context
        ztf = factory.catalog.get_object("ZTF18abmmoot")
        assert ztf is not None
        assert ztf["survey"] == "ztf"
        pointed = factory.catalog.get_object("ZTF20aabaesq")
        assert pointed is not None
        rows = {entry["name"]: entry["rows"] for entry in factory.refcats.list()}
        # OpenNGC: its 10,521 galaxies (type G) of 14,033 rows.
        assert rows == {"hipparcos": 117_955, "openngc": 10_521}
        vega = factory.refcats.cone("hipparcos", 279.23411, 38.78299, 0.01, 5)
        assert vega[0]["id"] == 91262
        # The neighbour the demo points at is there.
        near = factory.refcats.cone("hipparcos", pointed["ra"], pointed["dec"], 300 / 3600, 5)
        assert [r["id"] for r in near] == [64192]
        # The demo user's public filters, enabled, and what each published, as the summary says.
        published = dict(re.findall(r"(supernova-candidates|bright) (\d+)", result.stdout))
        made = {f.name: f for f in factory.filters.visible(None)}
        assert set(made) == {name for name, _, _ in demo.DEMO_FILTERS} == set(published)
        assert {(f.owner, f.state, f.visibility) for f in made.values()} == {
            ("demo", "enabled", "public")}
        counts = factory.filters.day_counts(utc_day(time.time()))
        assert {name: str(counts.get(f.filter_id, (0, 0))[0]) for name, f in made.items()} \
            == published
        assert int(published["supernova-candidates"]) >= 1  # the placed transient in a galaxy
        for f in made.values():
            assert f"/api/v1/filters/{f.filter_id}   the {f.name} filter" in result.stdout
    finally:
        factory.close()


class _Recorded:
    """A `broker.demo.Progress` that records each step and how far it was advanced."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, int | None, int]] = []

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        done = [0]

        def advance(count: int) -> None:
            done[0] += count

        yield advance
        self.steps.append((description, total, done[0]))


def test_run_queues_ingests_and_loads_then_reports(tmp_path: Path) -> None:
    settings = demo.embedded_settings(Settings(state_dir=tmp_path, backend=Backend.services))
    factory = Factory(settings)
    try:
        progress = _Recorded()
        report = demo.run(factory, build_ingest=ingest.build, count=20, seed=7, progress=progress)
        assert progress.steps == [
            ("simulating schema 11.1", 20, 20),
            ("ingesting into the embedded archive", 73, 73),
            ("loading the hipparcos catalog", None, 0),
            ("loading the openngc catalog", None, 0),
        ]
        assert (report.simulated, report.ztf, report.archived) == (20, 53, 73)
        assert report.archive == tmp_path / "embedded"
        assert report.catalogs == ("hipparcos", "openngc")
        assert report.example is not None
        assert report.summary().startswith(
            "archived 73 alerts (20 simulated Rubin 11.1, 53 real ZTF)")

        # A second run loads no catalog again and archives only what is new.
        again = _Recorded()
        second = demo.run(factory, build_ingest=ingest.build, count=5, seed=8, progress=again)
        assert [step[0] for step in again.steps] == [
            "simulating schema 11.1", "ingesting into the embedded archive"]
        assert second.catalogs == ("hipparcos", "openngc")
        assert second.objects >= report.objects
    finally:
        factory.close()


def test_run_needs_the_embedded_backend(tmp_path: Path) -> None:
    factory = Factory(Settings(state_dir=tmp_path, backend=Backend.services))
    with pytest.raises(LannerError, match="embedded backend"):
        demo.run(factory, build_ingest=ingest.build, count=1, seed=1)


def test_report_urls_follow_what_was_loaded() -> None:
    bare = demo.DemoReport(version=SchemaVersion(11, 1), simulated=0, ztf=0, archived=0,
                           archive=Path("x"), objects=0, detections=0, catalogs=(),
                           example=None)
    assert bare.urls("http://h:1") == [
        "http://h:1/                      the landing page",
        "http://h:1/docs                  the API documentation",
    ]
    full = demo.DemoReport(version=SchemaVersion(11, 1), simulated=1, ztf=53, archived=54,
                           archive=Path("x"), objects=2, detections=3,
                           catalogs=("hipparcos", "openngc"),
                           example={"object_id": "42", "ra": 1.0, "dec": -2.0})
    urls = full.urls("http://h:1")
    assert "http://h:1/api/v1/objects/42/lightcurve" in urls
    assert "http://h:1/api/v1/cone?ra=1.00000&dec=-2.00000&radius=60" in urls
    assert "reference catalogs: hipparcos, openngc (see http://h:1/api/v1/catalogs)" in urls
    assert any("ZTF20aabaesq/crossmatches" in url for url in urls)


def test_demo_refuses_a_busy_port_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = {**os.environ, "LANNER_STATE_DIR": str(tmp_path)}
        result = subprocess.run(
            [sys.executable, "-m", "broker.cli", "demo", "--count", "5", "--port", str(port)],
            capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=env, timeout=120,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_serves_its_own_metrics(tmp_path: Path) -> None:
    """`lanner ingest --metrics-port` exposes the stage's counters while it runs."""
    import socket
    import time
    import urllib.request

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "LANNER_STATE_DIR": str(tmp_path), "LANNER_BACKEND": "embedded"}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "ingest", "--metrics-port", str(port)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert "lanner_batch_seconds" in body
        assert "lanner_alerts_dlq_total" in body
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, process.stderr.read().decode()


def test_serve_runs_several_worker_processes(tmp_path: Path) -> None:
    """`lanner serve --workers 2`: two worker processes behind one listening socket."""
    import json
    import socket
    import time
    import urllib.request

    env = {**os.environ, "LANNER_STATE_DIR": str(tmp_path), "LANNER_BACKEND": "embedded"}
    loaded = subprocess.run(
        [sys.executable, "-m", "broker.cli", "catalog", "load", "hipparcos",
         str(HIPPARCOS),
         "--id-col", "hip", "--ra-col", "ra", "--dec-col", "dec"],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=env, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "serve", "--port", str(port), "--workers", "2"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/api/v1/cone?catalog=hipparcos&ra=279.23411&dec=38.78299&radius=36"
    try:
        answer = None
        for _ in range(150):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.2)
        assert answer is not None, "the API never answered"
        assert answer["rows"][0]["id"] == "91262"  # Vega
        children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _parent_of(p) == process.pid and b"spawn_main" in _cmdline(p)]
        assert len(children) == 2
        for _ in range(20):
            with urllib.request.urlopen(url, timeout=5) as response:
                assert json.loads(response.read())["rows"][0]["id"] == "91262"
    finally:
        process.terminate()
        process.wait(30)
    assert process.returncode == 0, process.stderr.read().decode()


def _parent_of(proc: Path) -> int | None:
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_the_workers_listener_gives_connections_tcp_nodelay() -> None:
    """`lanner serve --workers N` binds its own listener: asyncio must turn Nagle off on the
    connections it accepts (uvicorn's own listener leaves it on, ~40 ms per keep-alive request)."""
    import asyncio
    import socket

    from broker.cli.serve import tcp_listener

    listener = tcp_listener("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    port = listener.getsockname()[1]
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(accept_one())
    assert seen == [1]
