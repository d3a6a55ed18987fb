"""Issue 10's scenario on each backend: two users each upload a watchlist and a watchmap over
the API; simulated alerts fall inside and outside them, some archived before the uploads
(found by the retroactive jobs) and some after (found live by the enrich stage); each user sees
exactly their own hits, and nothing of the other's."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from broker.simulator import AlertSimulator
from broker.streaming import wire
from tests.support.alerts import placed

# Where each user's cone and map are, and the alerts: (object id, ra, dec, whose areas).
ALICE_CONE = (150.0, 20.0)
BOB_CONE = (40.0, -30.0)
ALICE_MAP = "6/1000"  # a HEALPix cell of order 6 (about 0.84 deg wide)
BOB_MAP = "6/40000"


def _cell_centre(order: int, cell: int) -> tuple[float, float]:
    import numpy as np
    from astropy import units as u
    from cdshealpix.nested import healpix_to_lonlat

    lon, lat = healpix_to_lonlat(np.array([cell], dtype=np.uint64), order)
    return float(lon.to_value(u.deg)[0]), float(lat.to_value(u.deg)[0])


def _alerts(first: int) -> dict[int, tuple[float, float, str]]:
    """Four alerts: in alice's cone, in bob's cone, in alice's map, in bob's map, and one in
    nobody's area."""
    return {first: (ALICE_CONE[0] + 0.5 / 3600, ALICE_CONE[1], "alice-list"),
            first + 1: (BOB_CONE[0], BOB_CONE[1] + 0.5 / 3600, "bob-list"),
            first + 2: (*_cell_centre(6, 1000), "alice-map"),
            first + 3: (*_cell_centre(6, 40000), "bob-map"),
            first + 4: (300.0, 70.0, "nobody")}


def _produce(harness: Any, alerts: dict[int, tuple[float, float, str]], seed: int) -> None:
    records = AlertSimulator(schema="11.1", seed=seed, cutouts=False).packets(len(alerts))
    for record, (object_id, (ra, dec, _)) in zip(records, alerts.items(), strict=True):
        harness.produce(harness.topics.lsst, wire.encode(placed(record, object_id, ra, dec),
                                                         1101), key=str(object_id).encode())


def _enrich(harness: Any, factory: Any, group: str) -> None:
    stage = harness.enrich_stage(watchlists=factory.watchlists, watchmaps=factory.watchmaps,
                                 group=group)
    try:
        stage.run(once=True, idle_polls=3)
    finally:
        stage.source.close()


def _done(client: TestClient, job_id: int, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()["state"] == "done":
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_two_users_see_exactly_their_own_hits_live_and_retroactive(harness, tmp_path) -> None:
    before = _alerts(800_000_000_200)  # archived before the uploads: found retroactively
    after = _alerts(800_000_000_300)  # arriving after them: found live
    _produce(harness, before, seed=31)
    harness.ingest_once()
    factory = harness.factory(tmp_path)
    factory.__dict__["catalog"] = harness.catalog
    _enrich(harness, factory, "e2e-enrich")  # no list yet: nothing found
    headers = {}
    for name in ("alice", "bob"):
        factory.accounts.add_user(name)
        headers[name] = {"Authorization": f"Bearer {factory.accounts.issue_token(name)[0].text}"}
    with TestClient(create_app(factory)) as client:
        made: dict[str, dict[str, int]] = {}
        for user, cone, area in (("alice", ALICE_CONE, ALICE_MAP), ("bob", BOB_CONE, BOB_MAP)):
            listed = client.post(f"/api/v1/watchlists?name={user}-list",
                                 content=f"name,ra,dec,radius\ntarget,{cone[0]},{cone[1]},2\n",
                                 headers={**headers[user], "Content-Type": "text/csv"}).json()
            mapped = client.post(f"/api/v1/watchmaps?name={user}-map", content=area,
                                 headers={**headers[user], "Content-Type": "text/plain"}).json()
            _done(client, listed["retro_job_id"], headers[user])
            _done(client, mapped["retro_job_id"], headers[user])
            made[user] = {"list": listed["watchlist_id"], "map": mapped["watchmap_id"]}
        _produce(harness, after, seed=32)
        harness.ingest_once()
        _enrich(harness, factory, "e2e-enrich")

        for user, other in (("alice", "bob"), ("bob", "alice")):
            mine = headers[user]
            list_hits = client.get(f"/api/v1/watchlists/{made[user]['list']}/hits",
                                   headers=mine).json()["hits"]
            map_hits = client.get(f"/api/v1/watchmaps/{made[user]['map']}/hits",
                                  headers=mine).json()["hits"]
            expected_list = {(str(o), live) for live, alerts in ((False, before), (True, after))
                             for o, (_, _, area) in alerts.items() if area == f"{user}-list"}
            expected_map = {(str(o), live) for live, alerts in ((False, before), (True, after))
                            for o, (_, _, area) in alerts.items() if area == f"{user}-map"}
            assert {(h["object_id"], h["live"]) for h in list_hits} == expected_list
            assert {(h["object_id"], h["live"]) for h in map_hits} == expected_map
            # Nothing of the other's: their private list, map and hits do not exist.
            for path in (f"watchlists/{made[other]['list']}", f"watchmaps/{made[other]['map']}"):
                assert client.get(f"/api/v1/{path}", headers=mine).status_code == 404
                assert client.get(f"/api/v1/{path}/hits", headers=mine).status_code == 404
            assert {w["name"] for w in client.get("/api/v1/watchlists", headers=mine).json()
                    } == {f"{user}-list"}
            # The object API shows each user only their own memberships.
            seen = client.get(f"/api/v1/objects/{next(iter(after))}", headers=mine).json()
            assert [w["name"] for w in seen["watchlists"]] == (
                ["alice-list"] if user == "alice" else [])
