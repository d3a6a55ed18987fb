"""Filters over the API on each backend: checked, saved, versioned, tested on the archive,
enabled only when narrow enough, owned (another user's private filter is 404 on every route),
and the hostile corpus refused with nothing written anywhere."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from broker.domain.alerts import flux_to_mag
from broker.storage.watchlists import Hit
from tests.api.conftest import users_with_tokens
from tests.domain.test_filters import HOSTILE_CASES
from tests.support.alerts import produce_placed, scattered

OBJECTS = 30


@pytest.fixture
def api(harness, tmp_path) -> Any:
    """Alerts of 30 objects archived, and an app on the harness's catalog with two users."""
    produce_placed(harness, scattered(OBJECTS, 6), first_id=900_000_000_100, seed=31)
    assert harness.ingest_once().archived == OBJECTS
    factory = harness.factory(tmp_path)
    factory.__dict__["catalog"] = harness.catalog
    tokens = users_with_tokens(factory, "alice", "bob")
    with TestClient(create_app(factory)) as client:
        yield client, factory, tokens, harness


def _archive_rows(harness: Any) -> list[dict[str, Any]]:
    """Every archived alert row, read object by object (not through the window query)."""
    rows = []
    for i in range(OBJECTS):
        rows += harness.catalog.alert_rows(str(900_000_000_100 + i))
    return rows


def test_make_check_test_enable_change_delete(api) -> None:
    client, factory, tokens, harness = api
    alice = tokens["alice"]
    rows = _archive_rows(harness)
    newest = max(r["mjd"] for r in rows)
    checked = client.post("/api/v1/filters/validate", headers=alice,
                          json={"text": "SELECT mag, mag - 1 AS brighter WHERE mag < 21"})
    assert checked.status_code == 200, checked.text
    assert checked.json()["output"] == [{"name": "mag", "type": "float"},
                                        {"name": "brighter", "type": "float"}]
    bad = client.post("/api/v1/filters/validate", headers=alice,
                      json={"text": "SELECT mag\nWHERE nosuch > 1"})
    assert bad.status_code == 422
    assert (bad.json()["line"], bad.json()["column"]) == (2, 7)
    assert "unknown column 'nosuch'" in bad.json()["detail"]

    made = client.post("/api/v1/filters", headers=alice, json={
        "name": "bright", "text": "SELECT mag, band WHERE mag < 21", "description": "test"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["state"], body["version"], body["topic"]) == ("disabled", 1,
                                                                "filter.alice.bright")
    filter_id = body["filter_id"]
    assert client.post("/api/v1/filters", headers=alice, json={
        "name": "bright", "text": "SELECT * WHERE TRUE"}).status_code == 409
    assert client.post("/api/v1/filters", headers=alice, json={
        "name": "Bad.Name", "text": "SELECT * WHERE TRUE"}).status_code == 422

    # A test run over the whole archive: what a brute-force read of the rows passes.
    tested = client.post(f"/api/v1/filters/{filter_id}/test", headers=alice,
                         json={"since_mjd": newest - 1000, "until_mjd": newest + 1})
    assert tested.status_code == 200, tested.text
    result = tested.json()
    bright = [r for r in rows if (flux_to_mag(r["psf_flux"]) or 99) < 21]
    assert (result["read"], result["passed"]) == (len(rows), len(bright))
    assert 0 < len(bright) < len(rows)
    assert {a["alert_id"] for a in result["alerts"]} <= {r["source_id"] for r in bright}
    assert all(a["mag"] < 21 and set(a) >= {"object_id", "mjd", "ra", "dec", "band"}
               for a in result["alerts"])
    # The last 30 days up to the newest alert.
    recent = client.post(f"/api/v1/filters/{filter_id}/test", headers=alice, json={"days": 30})
    assert recent.json()["read"] == sum(r["mjd"] > newest - 30 for r in rows), recent.text
    assert client.post(f"/api/v1/filters/{filter_id}/test", headers=alice, json={
        "since_mjd": 5, "until_mjd": 1}).status_code == 422

    # Too broad to enable: the share is in the message, and nothing changes.
    broad = client.post("/api/v1/filters", headers=alice, json={
        "name": "everything", "text": "SELECT * WHERE mag IS NULL OR mag IS NOT NULL"}).json()
    refused = client.post(f"/api/v1/filters/{broad['filter_id']}/enable", headers=alice)
    assert refused.status_code == 422
    assert "would pass 100.0% of alerts" in refused.json()["detail"]
    assert client.get(f"/api/v1/filters/{broad['filter_id']}",
                      headers=alice).json()["state"] == "disabled"
    narrow_text = f"SELECT * WHERE alert_id = {rows[0]['source_id']}"
    narrow = client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                          json={"text": narrow_text})
    assert narrow.json()["version"] == 2
    enabled = client.post(f"/api/v1/filters/{filter_id}/enable", headers=alice)
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["state"] == "enabled"
    # An enabled filter's new text is checked the same way before it is saved.
    again = client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                         json={"text": "SELECT * WHERE mag IS NULL OR mag IS NOT NULL"})
    assert again.status_code == 422
    assert client.get(f"/api/v1/filters/{filter_id}", headers=alice).json()["version"] == 2
    described = client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                             json={"description": "one alert", "visibility": "public"})
    assert (described.json()["version"], described.json()["visibility"]) == (2, "public")
    assert described.json()["attach"] == []
    # What the published records carry: set, changed, refused when unknown (not a version).
    attached = client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                            json={"attach": ["cutouts", "lightcurve"]})
    assert (attached.json()["attach"], attached.json()["version"]) == (
        ["lightcurve", "cutouts"], 2)
    assert client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                        json={"attach": ["packet"]}).status_code == 422
    assert client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                        json={"description": "x"}).json()["attach"] == ["lightcurve", "cutouts"]
    assert client.patch(f"/api/v1/filters/{filter_id}", headers=alice,
                        json={"attach": []}).json()["attach"] == []
    versions = client.get(f"/api/v1/filters/{filter_id}/versions", headers=alice).json()
    assert [(v["version"], v["text"]) for v in versions] == [
        (1, "SELECT mag, band WHERE mag < 21"), (2, narrow_text)]
    disabled = client.post(f"/api/v1/filters/{filter_id}/disable", headers=alice)
    assert disabled.json()["state"] == "disabled"
    assert client.delete(f"/api/v1/filters/{filter_id}", headers=alice).status_code == 204
    assert client.get(f"/api/v1/filters/{filter_id}", headers=alice).status_code == 404
    assert {k: v[:2] for k, v in factory.filters.versions().items()} == {
        broad["filter_id"]: (1, "disabled")}


def test_watchlists_in_filters_are_the_owners_or_public(api) -> None:
    client, factory, tokens, harness = api
    from broker.domain.watchlists import Cones

    rows = _archive_rows(harness)
    mine = factory.watchlists.create("alice", "mine", Cones(["a"], np.array([1.0]),
                                                             np.array([1.0]), np.array([2.0])))
    shared = factory.watchlists.create("bob", "shared", Cones(
        ["b"], np.array([2.0]), np.array([2.0]), np.array([2.0])), visibility="public")
    hit = rows[3]
    factory.watchlists.add_hits([Hit(mine.watchlist_id, 1, hit["source_id"], hit["object_id"],
                                     0.5, hit["mjd"], live=True)])
    text = f"SELECT watchlist_cone({mine.watchlist_id}) AS cone WHERE " \
           f"in_watchlist({mine.watchlist_id})"
    made = client.post("/api/v1/filters", headers=tokens["alice"],
                       json={"name": "mine", "text": text})
    assert made.status_code == 201, made.text
    tested = client.post(f"/api/v1/filters/{made.json()['filter_id']}/test",
                         headers=tokens["alice"],
                         json={"since_mjd": 0, "until_mjd": 100_000}).json()
    assert [(a["alert_id"], a["cone"]) for a in tested["alerts"]] == [(hit["source_id"], "a")]
    # Bob cannot name alice's private list (the same words as for no list at all), but can
    # name his own and public ones.
    refused = client.post("/api/v1/filters/validate", headers=tokens["bob"], json={"text": text})
    assert refused.status_code == 422
    assert refused.json()["message"] == f"no watchlist {mine.watchlist_id}"
    assert client.post("/api/v1/filters/validate", headers=tokens["alice"], json={
        "text": f"SELECT * WHERE in_watchlist({shared.watchlist_id})"}).status_code == 200


def test_another_users_private_filter_is_404_on_every_route(api) -> None:
    client, _, tokens, _ = api
    private = client.post("/api/v1/filters", headers=tokens["alice"], json={
        "name": "secret", "text": "SELECT * WHERE mag < 10"}).json()
    public = client.post("/api/v1/filters", headers=tokens["alice"], json={
        "name": "open", "text": "SELECT * WHERE mag < 10", "visibility": "public"}).json()
    reads = [("get", ""), ("get", "/versions"), ("post", "/test")]
    writes = [("patch", ""), ("delete", ""), ("post", "/enable"), ("post", "/disable")]

    def call(method: str, url: str, headers: dict[str, str]) -> int:
        kwargs: dict[str, Any] = {"headers": headers}
        if method in ("patch", "post"):
            kwargs["json"] = {"description": "x"} if method == "patch" else {}
        return client.request(method.upper(), url, **kwargs).status_code

    for method, tail in reads + writes:
        url = f"/api/v1/filters/{private['filter_id']}{tail}"
        assert call(method, url, tokens["bob"]) == 404, (method, tail)
        assert call(method, url, {}) in (401, 404), (method, tail)
    for method, tail in reads:
        url = f"/api/v1/filters/{public['filter_id']}{tail}"
        assert call(method, url, tokens["bob"]) == 200, (method, tail)
    for method, tail in writes:
        url = f"/api/v1/filters/{public['filter_id']}{tail}"
        assert call(method, url, tokens["bob"]) == 404, (method, tail)
        assert call(method, url, {}) == 401, (method, tail)
    assert [f["name"] for f in client.get("/api/v1/filters", headers=tokens["bob"]).json()] \
        == ["open"]
    assert call("post", "/api/v1/filters/validate", {}) == 401
    assert call("get", f"/api/v1/filters/{private['filter_id']}", tokens["alice"]) == 200


def _snapshot(*shard_sets: Any) -> dict[tuple[int, int, str], int]:
    """Rows of every table of every shard of these shard sets, but ``request_counts``: every
    request is counted there, by design."""
    counts = {}
    for n, shards in enumerate(shard_sets):
        def work(cursor: Any, dialect: Any = shards.dialect) -> dict[str, int]:
            found = {}
            for table in dialect.list_tables(cursor, ""):
                if table != "request_counts":
                    cursor.execute(f"SELECT COUNT(*) FROM {table}")
                    found[table] = int(cursor.fetchone()[0])
            return found

        for shard, tables in shards.all_shards(work, write=False).items():
            counts |= {(n, shard, t): c for t, c in tables.items()}
    return counts


def test_hostile_filters_are_refused_over_the_api_and_nothing_is_written(api) -> None:
    client, factory, tokens, harness = api
    made = client.post("/api/v1/filters", headers=tokens["alice"], json={
        "name": "kept", "text": "SELECT * WHERE mag < 10"}).json()
    before = _snapshot(factory.shards, harness.catalog.shards)
    assert before[(0, 0, "filters")] == 1
    for text in HOSTILE_CASES:
        if len(text) > 8_192:  # refused by the request model, before the compiler
            assert client.post("/api/v1/filters/validate", headers=tokens["alice"],
                               json={"text": text}).status_code == 422
            continue
        for url, body in (("/api/v1/filters/validate", {"text": text}),
                          ("/api/v1/filters", {"name": "h", "text": text}),
                          (f"/api/v1/filters/{made['filter_id']}", {"text": text})):
            method = "PATCH" if url.endswith(str(made["filter_id"])) else "POST"
            answer = client.request(method, url, headers=tokens["alice"], json=body)
            assert answer.status_code == 422, (text, answer.text)
            assert answer.json()["detail"]
    assert _snapshot(factory.shards, harness.catalog.shards) == before
    assert client.get(f"/api/v1/filters/{made['filter_id']}",
                      headers=tokens["alice"]).json()["version"] == 1


def _wait(client: TestClient, job_id: int, headers: dict[str, str]) -> dict[str, Any]:
    import time

    for _ in range(300):
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end: {job}")


def test_backfills_deliver_to_a_file_and_to_the_topic(api) -> None:
    import csv
    import io

    from astropy.io.votable import parse_single_table

    from broker.streaming import lanner_schemas

    client, factory, tokens, harness = api
    alice = tokens["alice"]
    rows = _archive_rows(harness)
    name = f"faint-{uuid.uuid4().hex[:8]}"  # Kafka's topics outlive a test
    made = client.post("/api/v1/filters", headers=alice, json={
        "name": name, "text": "SELECT mag, band WHERE mag > 21"}).json()
    want = sorted(r["source_id"] for r in rows if (flux_to_mag(r["psf_flux"]) or 0) > 21)
    assert 0 < len(want) < len(rows)
    window = {"since_mjd": min(r["mjd"] for r in rows), "until_mjd": max(r["mjd"] for r in rows)}
    # until is exclusive: the newest row stays out unless the window passes it.
    newest = max(rows, key=lambda r: r["mjd"])
    expected = [s for s in want if s != newest["source_id"]]
    queued = client.post(f"/api/v1/filters/{made['filter_id']}/backfill", headers=alice,
                         json={**window, "deliver": "file"})
    assert queued.status_code == 202, queued.text
    job = _wait(client, queued.json()["job_id"], alice)
    assert (job["state"], job["kind"], job["hits"]) == ("done", "filter_backfill",
                                                        len(expected)), job
    assert job["done"] == job["total"] == len(rows) - 1
    got = client.get(f"/api/v1/jobs/{job['job_id']}/result", headers=alice)
    table = list(csv.DictReader(io.StringIO(got.text)))
    assert sorted(int(r["alert_id"]) for r in table) == expected
    assert list(table[0]) == ["alert_id", "object_id", "survey", "mjd", "ra", "dec", "mag",
                              "band"]
    votable = client.get(f"/api/v1/jobs/{job['job_id']}/result?format=votable", headers=alice)
    read = parse_single_table(io.BytesIO(votable.content)).to_table()
    assert sorted(int(a) for a in read["alert_id"]) == expected
    # Another user sees neither the job nor its result, and cannot backfill alice's filter.
    assert client.get(f"/api/v1/jobs/{job['job_id']}/result",
                      headers=tokens["bob"]).status_code == 404
    assert client.post(f"/api/v1/filters/{made['filter_id']}/backfill", headers=tokens["bob"],
                       json=window).status_code == 404
    assert client.post(f"/api/v1/filters/{made['filter_id']}/backfill", headers=alice,
                       json={"since_mjd": 2, "until_mjd": 1}).status_code == 422
    # To the topic: flagged backfill, the filter's version, and the light curves it attaches.
    assert client.patch(f"/api/v1/filters/{made['filter_id']}", headers=alice,
                        json={"attach": ["lightcurve"]}).status_code == 200
    window["until_mjd"] += 1
    queued = client.post(f"/api/v1/filters/{made['filter_id']}/backfill", headers=alice,
                         json=window)
    job = _wait(client, queued.json()["job_id"], alice)
    assert (job["state"], job["hits"]) == ("done", len(want)), job
    topic = f"filter.alice.{name}"
    messages = (factory.memory_broker.messages(topic) if harness.name == "embedded"
                else harness.outputs(topic))  # the app publishes through its factory
    published = [lanner_schemas.decode("filtered", m.value) for m in messages]
    assert sorted(p["alert_id"] for p in published) == want
    assert {(p["backfill"], p["filter_version"]) for p in published} == {(True, 1)}
    for p in published:
        stored = harness.lightcurves.lightcurve(p["object_id"])
        assert [d["source_id"] for d in p["lightcurve"]] == [
            r["source_id"] for r in sorted(stored, key=lambda r: (r["mjd"], r["source_id"]))]
        assert p["cutouts"] is None
    assert sum(len(p["lightcurve"]) for p in published) > len(published)
    assert client.get(f"/api/v1/jobs/{job['job_id']}/result", headers=alice).status_code == 404


def test_annotators_annotate_objects_and_filters_read_the_newest(api) -> None:
    client, factory, tokens, harness = api
    rows = _archive_rows(harness)
    object_id = rows[0]["object_id"]
    factory.accounts.add_user("root_admin", "admin")
    admin = {"Authorization": f"Bearer {factory.accounts.issue_token('root_admin')[0].text}"}
    factory.accounts.add_user("classifier")
    # Only an admin gives a token the annotator role.
    assert client.post("/api/v1/tokens", headers=tokens["alice"],
                       json={"role": "annotator"}).status_code == 403
    issued = client.post("/api/v1/tokens", headers=admin,
                         json={"user": "classifier", "role": "annotator", "label": "ml"})
    assert issued.status_code == 201, issued.text
    assert issued.json()["role"] == "annotator"
    annotator = {"Authorization": f"Bearer {issued.json()['token']}"}
    url = f"/api/v1/objects/{object_id}/annotations"
    first = client.post(url, headers=annotator, json={"class": "SN Ia", "score": 0.7,
                                                      "data": {"model": "v1"}})
    assert first.status_code == 201, first.text
    second = client.post(url, headers=annotator, json={"class": "SN II", "score": 0.9})
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    assert client.post(url, headers=tokens["alice"], json={"class": "x"}).status_code == 403
    assert client.post(url, json={"class": "x"}).status_code == 401
    assert client.post("/api/v1/objects/nosuchobject/annotations", headers=annotator,
                       json={"class": "x"}).status_code == 404
    assert client.post(url, headers=annotator, json={"class": ""}).status_code == 422
    assert client.post(url, headers=annotator, json={"class": "x",
                                                     "data": "y" * 20_000}).status_code == 422
    listed = client.get(url).json()
    assert [(a["version"], a["class"], a["data"]) for a in listed] == [
        (1, "SN Ia", {"model": "v1"}), (2, "SN II", None)]
    shown = client.get(f"/api/v1/objects/{object_id}").json()["annotations"]
    assert [(a["annotator"], a["class"], a["score"]) for a in shown] == [
        ("classifier", "SN II", 0.9)]
    # A filter names the annotator, and a test run sees the newest class.
    made = client.post("/api/v1/filters", headers=tokens["alice"], json={
        "name": "typed", "text": "SELECT annotation_class('classifier') AS cls, "
        "annotation_score('classifier') AS p WHERE annotated('classifier')"})
    assert made.status_code == 201, made.text
    tested = client.post(f"/api/v1/filters/{made.json()['filter_id']}/test",
                         headers=tokens["alice"],
                         json={"since_mjd": 0, "until_mjd": 100_000}).json()
    assert tested["passed"] == sum(r["object_id"] == object_id for r in rows)
    assert {(a["object_id"], a["cls"], a["p"]) for a in tested["alerts"]} == {
        (object_id, "SN II", 0.9)}
    assert client.post("/api/v1/filters/validate", headers=tokens["alice"], json={
        "text": "SELECT * WHERE annotated('nobody')"}).status_code == 422


def test_notifications_are_set_by_the_owner_and_shown_to_the_owner_only(api) -> None:
    client, factory, tokens, _ = api
    alice = tokens["alice"]
    made = client.post("/api/v1/filters", headers=alice, json={
        "name": "notified", "text": "SELECT * WHERE mag < 10", "visibility": "public"}).json()
    url = f"/api/v1/filters/{made['filter_id']}/notifications"
    refused = client.put(url, headers=alice, json={"webhook_url": "http://127.0.0.1:9/hook"})
    assert refused.status_code == 422
    assert "private network" in refused.json()["detail"]
    assert client.put(url, headers=alice, json={"email": "not an address"}).status_code == 422
    assert client.put(url, headers=tokens["bob"], json={"email": "b@example.org"}
                      ).status_code == 404
    factory.settings = factory.settings.model_copy(update={"webhook_allow_private": True})
    set_ = client.put(url, headers=alice, json={"webhook_url": "http://127.0.0.1:9/hook",
                                                "email": "alice@example.org"}).json()
    assert len(set_["webhook_secret"]) == 64
    again = client.put(url, headers=alice, json={"webhook_url": "http://127.0.0.1:9/hook",
                                                 "email": "alice@example.org"}).json()
    assert again["webhook_secret"] == set_["webhook_secret"]  # the same address keeps it
    mine = client.get(f"/api/v1/filters/{made['filter_id']}", headers=alice).json()
    theirs = client.get(f"/api/v1/filters/{made['filter_id']}", headers=tokens["bob"]).json()
    assert (mine["webhook_url"], mine["email"]) == ("http://127.0.0.1:9/hook",
                                                    "alice@example.org")
    assert (theirs["webhook_url"], theirs["email"]) == (None, None)
    off = client.put(url, headers=alice, json={}).json()
    assert off == {"webhook_url": None, "webhook_secret": None, "email": None}
