"""Tables uploaded with a TAP query (``UPLOAD=name,param:part``) on each backend: a cross-match
of an uploaded list against the archive's objects finds exactly the pairs a brute force finds,
across chunk and shard edges; joins on an id, uploads read alone, async jobs and pyvo; and
what is refused (URLs, outer joins, sizes, broken tables)."""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
from astropy.io.votable import from_table, parse_single_table
from astropy.table import Table
from fastapi.testclient import TestClient

from api.app import create_app
from broker.storage.dialect import q
from tests.support.alerts import produce_placed
from tests.support.backends import plain_rows, separation_deg
from tests.support.server import served

RADIUS_ARCSEC = 2.0
NS = {"uws": "http://www.ivoa.net/xml/UWS/v1.0"}


@pytest.fixture
def service(harness, tmp_path) -> Any:
    """Objects around RA 0 (chunk and shard edges) and anywhere; the API over them."""
    rng = np.random.default_rng(71)
    places = [(float(rng.uniform(-1, 1) % 360.0), float(rng.uniform(-1, 1))) for _ in range(30)]
    places += [(float(rng.uniform(0, 360)), float(rng.uniform(-60, 60))) for _ in range(20)]
    produce_placed(harness, places, first_id=970_000_000_000, seed=73)
    assert harness.ingest_once().archived == len(places)
    factory: Any = harness.factory(tmp_path)
    factory.settings = factory.settings.model_copy(update={"state_dir": tmp_path / "state"})
    app = create_app(factory)
    with TestClient(app) as client:
        yield client, app, harness


def _objects_of(harness: Any) -> list[dict[str, Any]]:
    return [{"object_id": r["object_id"], "ra": float(r["ra"]), "dec": float(r["dec"])}
            for r in plain_rows(harness, f"SELECT object_id, ra, {q('dec')} FROM objects")]


def _list(objects: list[dict[str, Any]]) -> Table:
    """A scientist's list: positions within an arcsecond or so of most objects (some near
    two), and others matching nothing."""
    rng = np.random.default_rng(79)
    names, ra, dec = [], [], []
    for i, o in enumerate(objects[:40]):
        offset = rng.uniform(0, 1.8) / 3600.0
        angle = rng.uniform(0, 2 * math.pi)
        names.append(f"src{i}")
        dec.append(o["dec"] + offset * math.sin(angle))
        ra.append((o["ra"] + offset * math.cos(angle) / math.cos(math.radians(o["dec"])))
                  % 360.0)
    for i in range(10):
        names.append(f"none{i}")
        ra.append(float(rng.uniform(0, 360)))
        dec.append(float(rng.uniform(-80, 80)))
    table = Table({"name": names, "ra": ra, "dec": dec})
    table["ra"].unit = table["dec"].unit = "deg"
    return table


def _votable(table: Table) -> bytes:
    out = io.BytesIO()
    from_table(table).to_xml(out)
    return out.getvalue()


def _query(client: TestClient, query: str, files: dict[str, bytes], upload: str,
           **extra: str) -> Any:
    return client.post("/tap/sync", data={"LANG": "ADQL", "QUERY": query, "UPLOAD": upload,
                                          **extra},
                       files={k: (f"{k}.xml", v, "application/x-votable+xml")
                              for k, v in files.items()})


CROSSMATCH = ("SELECT u.name, o.object_id, DISTANCE(POINT('ICRS', u.ra, u.dec), "
              "POINT('ICRS', o.ra, o.dec)) AS d FROM TAP_UPLOAD.mine AS u "
              "JOIN lanner.objects AS o ON 1 = CONTAINS(POINT('ICRS', o.ra, o.dec), "
              f"CIRCLE('ICRS', u.ra, u.dec, {RADIUS_ARCSEC / 3600.0!r}))")


def test_a_crossmatch_finds_the_pairs_a_brute_force_finds(service) -> None:
    client, _, harness = service
    objects = _objects_of(harness)
    mine = _list(objects)
    want = sorted((str(n), o["object_id"]) for n, a, d in zip(mine["name"], mine["ra"],
                                                              mine["dec"], strict=True)
                  for o in objects
                  if separation_deg(a, d, o["ra"], o["dec"]) <= RADIUS_ARCSEC / 3600.0)
    assert len(want) >= 40
    for query in (CROSSMATCH, CROSSMATCH.replace(
            "JOIN lanner.objects AS o ON 1 = CONTAINS(POINT('ICRS', o.ra, o.dec), "
            f"CIRCLE('ICRS', u.ra, u.dec, {RADIUS_ARCSEC / 3600.0!r}))",
            ", lanner.objects AS o WHERE DISTANCE(POINT('ICRS', u.ra, u.dec), "
            f"POINT('ICRS', o.ra, o.dec)) <= {RADIUS_ARCSEC / 3600.0!r}")):
        answer = _query(client, query, {"list": _votable(mine)}, "mine,param:list")
        assert answer.status_code == 200, answer.text
        table = parse_single_table(io.BytesIO(answer.content)).to_table()
        assert sorted(zip(map(str, table["name"]), map(str, table["object_id"]),
                          strict=True)) == want
        assert float(np.max(table["d"])) <= RADIUS_ARCSEC / 3600.0
    counted = _query(client, "SELECT COUNT(*) AS n FROM TAP_UPLOAD.mine AS u JOIN "
                     "lanner.objects AS o ON 1 = CONTAINS(POINT('ICRS', o.ra, o.dec), "
                     f"CIRCLE('ICRS', u.ra, u.dec, {RADIUS_ARCSEC / 3600.0!r}))",
                     {"list": _votable(mine)}, "mine,param:list")
    assert parse_single_table(io.BytesIO(counted.content)).to_table()["n"][0] == len(want)


def test_uploads_joined_on_ids_read_alone_and_refused(service) -> None:
    client, _, harness = service
    objects = _objects_of(harness)
    ids = Table({"oid": [o["object_id"] for o in objects[:7]] + ["nosuch"],
                 "weight": np.arange(8, dtype=np.int32)})
    body = _votable(ids)
    joined = _query(client, "SELECT i.oid, i.weight, o.ra FROM TAP_UPLOAD.ids AS i JOIN "
                    "lanner.objects AS o ON o.object_id = i.oid ORDER BY i.weight",
                    {"t": body}, "ids,param:t")
    table = parse_single_table(io.BytesIO(joined.content)).to_table()
    assert list(table["oid"]) == [o["object_id"] for o in objects[:7]]
    assert list(table["weight"]) == list(range(7))
    alone = _query(client, "SELECT COUNT(*) AS n, SUM(weight) AS w FROM TAP_UPLOAD.ids",
                   {"t": body}, "ids,param:t")
    row = parse_single_table(io.BytesIO(alone.content)).to_table()[0]
    assert (row["n"], row["w"]) == (8, sum(range(8)))
    for files, upload, query, said in [
        ({"t": body}, "ids,file:///etc/passwd", "SELECT * FROM TAP_UPLOAD.ids",
         "not from file:"),
        ({"t": body}, "ids,http://127.0.0.1:1/t.xml", "SELECT * FROM TAP_UPLOAD.ids",
         "not a public address"),
        ({"t": body}, "ids,https://localhost/t.xml", "SELECT * FROM TAP_UPLOAD.ids",
         "not a public address"),
        ({"t": body}, "ids,param:other", "SELECT * FROM TAP_UPLOAD.ids", "no part 'other'"),
        ({"t": b"<VOTABLE>not really"}, "ids,param:t", "SELECT * FROM TAP_UPLOAD.ids",
         "not a VOTable"),
        ({"t": body}, "1ids,param:t", "SELECT * FROM TAP_UPLOAD.ids", "a letter then"),
        ({"t": body}, "ids,param:t", "SELECT * FROM TAP_UPLOAD.other", "unknown table"),
        ({"t": body}, "ids,param:t", "SELECT i.oid FROM TAP_UPLOAD.ids AS i LEFT JOIN "
         "lanner.objects AS o ON o.object_id = i.oid", "inner join only"),
        ({"t": body}, "ids,param:t", "SELECT i.oid FROM TAP_UPLOAD.ids AS i, "
         "TAP_SCHEMA.tables AS t", "not with TAP_SCHEMA"),
        ({"t": b"x" * (2 * 2**20)}, "ids,param:t", "SELECT * FROM TAP_UPLOAD.ids",
         "larger than"),
    ]:
        answer = _query(client, query, files, upload)
        assert answer.status_code == 400, said
        assert said in answer.text, (said, answer.text)


def test_async_jobs_and_pyvo_upload(service) -> None:
    client, app, harness = service
    objects = _objects_of(harness)
    mine = _list(objects)
    made = client.post("/tap/async", data={"LANG": "ADQL", "QUERY": CROSSMATCH,
                                           "UPLOAD": "mine,param:list", "PHASE": "RUN"},
                       files={"list": ("list.xml", _votable(mine), "text/xml")},
                       follow_redirects=False)
    assert made.status_code == 303, made.text
    job = ET.fromstring(client.get(made.headers["location"], params={"WAIT": "-1"}).content)
    assert job.findtext("uws:phase", namespaces=NS) == "COMPLETED"
    result = client.get(made.headers["location"] + "/results/result")
    async_pairs = parse_single_table(io.BytesIO(result.content)).to_table()
    sync = _query(client, CROSSMATCH, {"list": _votable(mine)}, "mine,param:list")
    sync_pairs = parse_single_table(io.BytesIO(sync.content)).to_table()
    assert sorted(map(str, async_pairs["object_id"])) == sorted(map(str,
                                                                    sync_pairs["object_id"]))
    import pyvo

    with served(app) as url:
        service_ = pyvo.dal.TAPService(f"{url}/tap")
        got = service_.run_sync(CROSSMATCH, uploads={"mine": mine}).to_table()
        assert sorted(map(str, got["object_id"])) == sorted(map(str, sync_pairs["object_id"]))
