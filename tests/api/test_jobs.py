"""Retroactive matching on each backend: a watchlist or watchmap made over the API is matched
against the archive by a background job, with its progress over the API."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from broker.domain.sky import hpx29
from broker.simulator import AlertSimulator
from broker.streaming import wire
from tests.api.conftest import users_with_tokens
from tests.support.alerts import placed


def _wait(client: TestClient, job_id: int, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_new_watchlists_and_watchmaps_are_matched_against_the_archive(harness,
                                                                       tmp_path) -> None:
    records = list(AlertSimulator(schema="11.1", seed=23, cutouts=False).packets(40))
    rng = np.random.default_rng(4)
    where = {800_000_000_100 + i: (float(rng.uniform(0, 360)), float(rng.uniform(-60, 60)))
             for i in range(40)}
    for record, (object_id, (ra, dec)) in zip(records, where.items(), strict=True):
        harness.produce(harness.topics.lsst, wire.encode(placed(record, object_id, ra, dec),
                                                         1101), key=str(object_id).encode())
    assert harness.ingest_once().archived == 40
    factory = harness.factory(tmp_path)
    factory.__dict__["catalog"] = harness.catalog
    tokens = users_with_tokens(factory, "alice", "bob")
    chosen = list(where.items())[:5]
    body = "name,ra,dec,radius\n" + "".join(
        f"t{i},{ra + 1 / 3600:.8f},{dec},3\n" for i, (_, (ra, dec)) in enumerate(chosen))
    body += "nowhere,1.0,-89.0,1\n"
    with TestClient(create_app(factory)) as client:
        made = client.post("/api/v1/watchlists?name=past", content=body,
                           headers={**tokens["alice"], "Content-Type": "text/csv"}).json()
        job = _wait(client, made["retro_job_id"], tokens["alice"])
        # Only the objects in the cells the cones cover were read: the five chosen ones.
        assert (job["state"], job["kind"], job["done"], job["total"], job["progress"]) == (
            "done", "watchlist_retro", 5, 5, 1.0)
        assert job["hits"] == 5
        hits = client.get(f"/api/v1/watchlists/{made['watchlist_id']}/hits",
                          headers=tokens["alice"]).json()["hits"]
        assert sorted(h["object_id"] for h in hits) == sorted(str(o) for o, _ in chosen)
        assert not any(h["live"] for h in hits)
        for h in hits:  # 1 arcsec of RA east: cos(dec) arcsec on the sky
            dec = where[int(h["object_id"])][1]
            assert h["separation_arcsec"] == pytest.approx(np.cos(np.radians(dec)), abs=1e-3)
        # Another user sees neither the job nor the hits.
        assert client.get(f"/api/v1/jobs/{job['job_id']}", headers=tokens["bob"]
                          ).status_code == 404
        assert client.get(f"/api/v1/jobs/{job['job_id']}").status_code == 401
        assert [j["job_id"] for j in client.get("/api/v1/jobs", headers=tokens["bob"]
                                                ).json()] == []
        # A watchmap: the four northern HEALPix base cells (0-3).
        mapped = client.post("/api/v1/watchmaps?name=north", content="0/0-3",
                             headers={**tokens["bob"], "Content-Type": "text/plain"}).json()
        job = _wait(client, mapped["retro_job_id"], tokens["bob"])
        assert job["state"] == "done", job
        base = hpx29(np.array([p[0] for p in where.values()]),
                     np.array([p[1] for p in where.values()])) >> 58  # order-29 to order 0
        north = sorted(str(o) for o, cell in zip(where, base.tolist(), strict=True) if cell < 4)
        found = client.get(f"/api/v1/watchmaps/{mapped['watchmap_id']}/hits?limit=100",
                           headers=tokens["bob"]).json()["hits"]
        assert sorted(h["object_id"] for h in found) == north
        assert job["hits"] == len(north) > 0
        # Matched again (a replacement): the hits are stored once.
        again = client.put(f"/api/v1/watchlists/{made['watchlist_id']}", content=body,
                           headers={**tokens["alice"], "Content-Type": "text/csv"}).json()
        assert _wait(client, again["retro_job_id"], tokens["alice"])["state"] == "done"
        assert len(client.get(f"/api/v1/watchlists/{made['watchlist_id']}/hits",
                              headers=tokens["alice"]).json()["hits"]) == 5


def test_the_command_line_shows_jobs_with_a_progress_bar(tmp_path, monkeypatch) -> None:
    import threading

    from typer.testing import CliRunner

    from broker.cli import app
    from broker.config import Backend, get_settings
    from broker.domain.watchlists import Cones
    from broker.factory import Factory
    from broker.jobs import runner as job_runner

    monkeypatch.setenv("LANNER_BACKEND", "embedded")
    monkeypatch.setenv("LANNER_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    factory = Factory(get_settings())
    try:
        assert factory.settings.backend is Backend.embedded
        made = factory.watchlists.create("alice", "l", Cones(["a"], np.array([1.0]),
                                                             np.array([1.0]),
                                                             np.array([2.0])))
        job = factory.jobs.queue("alice", "watchlist_retro", made.watchlist_id, made.version)
        runner = CliRunner()
        shown = runner.invoke(app, ["jobs", "show", str(job.job_id)])
        assert shown.exit_code == 0, shown.output
        assert f"job {job.job_id} watchlist_retro of {made.watchlist_id} v1: queued" in (
            shown.output)
        # --follow waits for the job, run meanwhile by a runner on another thread.
        jobs = job_runner(factory)
        threading.Timer(1.0, jobs.run_once).start()
        followed = runner.invoke(app, ["jobs", "show", str(job.job_id), "--follow"])
        assert followed.exit_code == 0, followed.output
        assert "done, 0/0 objects matched, 0 hits" in followed.output
        assert f"{job.job_id} watchlist_retro" in runner.invoke(app, ["jobs", "list",
                                                                      "alice"]).output
        missing = runner.invoke(app, ["jobs", "show", "12345"])
        assert (missing.exit_code, "no job 12345" in missing.output) == (1, True)
    finally:
        factory.close()
        get_settings.cache_clear()
