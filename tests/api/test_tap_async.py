"""``/tap/async`` over each backend: UWS 1.1 jobs made, run, waited for, read, listed,
aborted and deleted; owned by their caller; kept across a restart of the API; refused with 503
when the queue is full; and pyvo's asynchronous queries through HTTP."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from astropy.io.votable import parse, parse_single_table
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import users_with_tokens
from tests.support.alerts import produce_placed, scattered
from tests.support.backends import object_ids
from tests.support.server import served

OBJECTS = 20
NS = {"uws": "http://www.ivoa.net/xml/UWS/v1.0", "xlink": "http://www.w3.org/1999/xlink"}
QUERY = "SELECT object_id, ra, dec FROM lanner.objects ORDER BY object_id"


@pytest.fixture
def archive(harness) -> Any:
    produce_placed(harness, scattered(OBJECTS, 6), first_id=930_000_000_000, seed=53)
    assert harness.ingest_once().archived == OBJECTS
    return harness


def _factory(harness: Any, tmp_path: Any, **settings: Any) -> Any:
    factory = harness.factory(tmp_path)
    factory.settings = factory.settings.model_copy(
        update={"state_dir": tmp_path / "state", **settings})
    return factory


def _job(client: TestClient, url: str, headers: dict[str, str] | None = None,
         **params: Any) -> ET.Element:
    answer = client.get(url, params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return ET.fromstring(answer.content)


def _make(client: TestClient, headers: dict[str, str] | None = None, **params: str) -> str:
    made = client.post("/tap/async", data={"LANG": "ADQL", **params}, headers=headers,
                       follow_redirects=False)
    assert made.status_code == 303, made.text
    return made.headers["location"]


def test_a_job_runs_and_its_result_equals_the_answer(archive, tmp_path) -> None:
    with TestClient(create_app(_factory(archive, tmp_path))) as client:
        url = _make(client, QUERY=QUERY, PHASE="RUN", RUNID="mine")
        job = _job(client, url, WAIT="-1")
        assert job.findtext("uws:phase", namespaces=NS) == "COMPLETED"
        assert job.get("version") == "1.1"
        assert job.findtext("uws:runId", namespaces=NS) == "mine"
        assert job.find("uws:ownerId", NS).get(
            "{http://www.w3.org/2001/XMLSchema-instance}nil") == "true"
        result = job.find("uws:results/uws:result", NS)
        assert result.get("id") == "result"
        href = result.get("{http://www.w3.org/1999/xlink}href")
        assert href.endswith("/results/result")
        body = client.get(href)
        assert body.headers["content-type"].startswith("application/x-votable+xml")
        table = parse_single_table(io.BytesIO(body.content)).to_table()
        assert list(table["object_id"]) == object_ids(archive)
        parameters = {p.get("id"): p.text for p in job.iterfind("uws:parameters/uws:parameter",
                                                                  NS)}
        assert parameters["QUERY"] == QUERY
        assert parameters["LANG"] == "ADQL"
        assert client.get(f"{url}/phase").text == "COMPLETED"
        assert int(client.get(f"{url}/executionduration").text) == 600
        # The job list, with its filters.
        other = _make(client, QUERY="SELECT TOP 1 ra FROM lanner.objects")
        listed = ET.fromstring(client.get("/tap/async").content)
        assert {r.get("id") for r in listed} == {url.rsplit("/", 1)[1], other.rsplit("/", 1)[1]}
        done = ET.fromstring(client.get("/tap/async", params={"PHASE": "COMPLETED"}).content)
        assert [r.get("id") for r in done] == [url.rsplit("/", 1)[1]]
        newest = ET.fromstring(client.get("/tap/async", params={"LAST": "1"}).content)
        assert [r.get("id") for r in newest] == [other.rsplit("/", 1)[1]]
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert len(ET.fromstring(client.get("/tap/async", params={"AFTER": future}).content)) == 0
        # DELETE answers 303 to the caller's own (short) list; the job and its result are gone.
        gone = client.delete(url, follow_redirects=False)
        assert gone.status_code == 303
        assert "/tap/async" in gone.headers["location"]
        assert client.get(url).status_code == 404
        assert client.get(href).status_code == 404
        deleted = client.post(other, data={"ACTION": "DELETE"}, follow_redirects=False)
        assert deleted.status_code == 303
        assert len(ET.fromstring(client.get("/tap/async").content)) == 0


def test_pending_jobs_take_parameters_then_run(archive, tmp_path) -> None:
    with TestClient(create_app(_factory(archive, tmp_path))) as client:
        url = _make(client, QUERY="SELECT TOP 1 object_id FROM lanner.objects")
        assert client.get(f"{url}/phase").text == "PENDING"
        changed = client.post(f"{url}/parameters", data={"QUERY": QUERY, "FORMAT": "csv",
                                                         "MAXREC": "5"},
                              follow_redirects=False)
        assert changed.status_code == 303
        shorter = client.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "30"},
                              follow_redirects=False)
        assert shorter.status_code == 303
        assert client.get(f"{url}/executionduration").text == "30"
        longer = client.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "99999"})
        assert longer.status_code == 200  # followed to the job; capped at the service's 600
        assert client.get(f"{url}/executionduration").text == "600"
        soon = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
        client.post(f"{url}/destruction", data={"DESTRUCTION": soon.isoformat()})
        assert datetime.fromisoformat(client.get(f"{url}/destruction").text.replace(
            "Z", "+00:00")) == soon
        ran = client.post(f"{url}/phase", data={"PHASE": "RUN"}, follow_redirects=False)
        assert ran.status_code == 303
        assert ran.headers["location"].endswith(url)
        job = _job(client, url, WAIT="30", PHASE="QUEUED")
        job = _job(client, url, WAIT="30")
        assert job.findtext("uws:phase", namespaces=NS) == "COMPLETED"
        result = client.get(f"{url}/results/result")
        assert result.headers["content-type"].startswith("text/csv")
        lines = result.text.splitlines()
        assert len(lines) == 6
        assert lines[0] == '"object_id","ra","dec"'
        assert [line.split(",")[0].strip('"') for line in lines[1:]] == object_ids(archive)[:5]
        # A job that has left PENDING takes no more parameters.
        late = client.post(f"{url}/parameters", data={"QUERY": "SELECT 1"})
        assert late.status_code == 400
        assert "only a PENDING job" in late.text


def test_a_bad_query_ends_in_error_with_its_document(archive, tmp_path) -> None:
    with TestClient(create_app(_factory(archive, tmp_path))) as client:
        url = _make(client, QUERY="SELECT nosuch FROM lanner.objects", PHASE="RUN")
        job = _job(client, url, WAIT="-1")
        assert job.findtext("uws:phase", namespaces=NS) == "ERROR"
        assert "nosuch" in job.findtext("uws:errorSummary/uws:message", namespaces=NS)
        error = client.get(f"{url}/error")
        assert error.status_code == 200
        infos = [i for r in parse(io.BytesIO(error.content)).resources for i in r.infos]
        assert [i.value for i in infos] == ["ERROR"]
        assert "nosuch" in infos[0].content
        assert client.get(f"{url}/results/result").status_code == 404
        # Malformed parameters are refused when the job is made.
        refused = client.post("/tap/async", data={"LANG": "ADQL", "QUERY": QUERY,
                                                  "MAXREC": "lots"})
        assert refused.status_code == 400
        assert "MAXREC" in refused.text
        assert client.post(f"{url}/phase", data={"PHASE": "HOLD"}).status_code == 400
        assert client.get("/tap/async/nosuchjob").status_code == 404


def test_jobs_belong_to_their_caller(archive, tmp_path) -> None:
    factory = _factory(archive, tmp_path)
    tokens = users_with_tokens(factory, "alice", "bob")
    with TestClient(create_app(factory)) as client:
        url = _make(client, tokens["alice"], QUERY=QUERY, PHASE="RUN")
        job = _job(client, url, tokens["alice"], WAIT="-1")
        assert job.findtext("uws:ownerId", namespaces=NS) == "alice"
        for headers in (tokens["bob"], {}):
            for path in ("", "/phase", "/parameters", "/results/result", "/error"):
                assert client.get(f"{url}{path}", headers=headers).status_code == 404, path
            assert client.delete(url, headers=headers).status_code == 404
            assert client.post(f"{url}/phase", data={"PHASE": "ABORT"},
                               headers=headers).status_code == 404
            assert len(ET.fromstring(client.get("/tap/async", headers=headers).content)) == 0
        assert client.get(f"{url}/phase", headers=tokens["alice"]).text == "COMPLETED"


def test_queue_limits_abort_and_restart(archive, tmp_path) -> None:
    # No workers: jobs stay queued; the queue holds two.
    factory = _factory(archive, tmp_path, tap_workers=0, tap_queue=2)
    with TestClient(create_app(factory)) as client:
        first = _make(client, QUERY=QUERY, PHASE="RUN")
        second = _make(client, QUERY=QUERY)
        assert client.post(f"{second}/phase", data={"PHASE": "RUN"}).status_code == 200
        refused = client.post("/tap/async", data={"LANG": "ADQL", "QUERY": QUERY,
                                                  "PHASE": "RUN"})
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) > 0
        pending = _make(client, QUERY=QUERY)  # PENDING jobs do not count against the queue
        busy = client.post(f"{pending}/phase", data={"PHASE": "RUN"})
        assert busy.status_code == 503
        aborted = client.post(f"{second}/phase", data={"PHASE": "ABORT"},
                              follow_redirects=False)
        assert aborted.status_code == 303
        assert client.get(f"{second}/phase").text == "ABORTED"
        assert client.get(first + "/phase").text == "QUEUED"
        # WAIT returns at its bound when nothing changes.
        assert _job(client, first, WAIT="0.3").findtext("uws:phase", namespaces=NS) == "QUEUED"
    # A new API process with workers runs the job the first left queued, and one whose process
    # died while running it (its heartbeat stale) is queued again and run.
    stale = factory.tap_jobs.create("anon:testclient", lang="ADQL", query=QUERY,
                                    response_format="csv", maxrec=100, execution_duration=60,
                                    retention=timedelta(days=1), queue=10)
    claimed = factory.tap_jobs.claim(per_owner=10)
    assert claimed is not None
    assert claimed.job_id in (stale.job_id, first.rsplit("/", 1)[1])
    factory.tap_jobs.clock = lambda: datetime.now(UTC) - timedelta(minutes=5)
    factory.tap_jobs.heartbeat([claimed.job_id])
    factory.tap_jobs.clock = lambda: datetime.now(UTC)
    # The same factory (closed with the first app; its stores start afresh), now with workers.
    factory.settings = factory.settings.model_copy(update={"tap_workers": 2})
    with TestClient(create_app(factory)) as client:
        for url in (first, f"/tap/async/{stale.job_id}"):
            job = _job(client, url, WAIT="-1")
            assert job.findtext("uws:phase", namespaces=NS) == "COMPLETED", url
        assert client.get(f"{second}/phase").text == "ABORTED"
        assert client.get(f"{first}/results/result").status_code == 200


def test_pyvo_runs_asynchronous_queries(archive, tmp_path) -> None:
    import pyvo

    app = create_app(_factory(archive, tmp_path))
    with TestClient(app), served(app) as url:
        service = pyvo.dal.TAPService(f"{url}/tap")
        table = service.run_async(QUERY, maxrec=8).to_table()
        assert [str(o) for o in table["object_id"]] == object_ids(archive)[:8]
        job = service.submit_job("SELECT TOP 3 object_id FROM lanner.objects ORDER BY object_id")
        job.run()
        job.wait(timeout=60)
        assert job.phase == "COMPLETED"
        assert [str(o) for o in job.fetch_result().to_table()["object_id"]] == \
            object_ids(archive)[:3]
        job.delete()
        with pytest.raises(pyvo.dal.DALQueryError, match="nosuch"):
            service.run_async("SELECT nosuch FROM lanner.objects")
