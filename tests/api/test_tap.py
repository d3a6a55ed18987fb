"""``/tap`` over each backend: synchronous ADQL as BINARY2, TABLEDATA, CSV and TSV; MAXREC
and overflow; DALI's case-insensitive parameters by GET and POST; error documents; the VOSI
resources; and pyvo's TAPService reading it all through HTTP."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from typing import Any

import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse, parse_single_table
from fastapi.testclient import TestClient

from api.app import create_app
from tests.support.alerts import produce_placed, scattered
from tests.support.server import served

OBJECTS = 25


@pytest.fixture
def tap(harness, tmp_path) -> Any:
    produce_placed(harness, scattered(OBJECTS, 8), first_id=920_000_000_000, seed=47)
    assert harness.ingest_once().archived == OBJECTS
    factory = harness.factory(tmp_path)
    app = create_app(factory)
    with TestClient(app) as client:
        yield client, app, harness


def _object_ids(harness: Any) -> list[str]:
    def work(cursor: Any) -> list[str]:
        cursor.execute("SELECT object_id FROM objects")
        return [row[0] for row in cursor.fetchall()]

    return sorted(o for ids in harness.catalog.shards.all_shards(work, write=False).values()
                  for o in ids)


def _status(document: bytes) -> list[str]:
    votable = parse(io.BytesIO(document))
    return [i.value for r in votable.resources for i in r.infos if i.name == "QUERY_STATUS"]


def test_sync_answers_in_every_format(tap) -> None:
    client, _, harness = tap
    want = _object_ids(harness)
    query = "SELECT object_id, ra, dec FROM lanner.objects ORDER BY object_id"
    binary = client.get("/tap/sync", params={"LANG": "ADQL", "QUERY": query})
    assert binary.status_code == 200, binary.text
    assert binary.headers["content-type"].startswith("application/x-votable+xml")
    table = parse_single_table(io.BytesIO(binary.content)).to_table()
    assert list(table["object_id"]) == want
    assert table["ra"].unit == "deg"
    assert _status(binary.content) == ["OK"]
    # Names are case-insensitive, by GET or by POST.
    posted = client.post("/tap/sync", data={"lang": "ADQL", "Query": query,
                                            "RESPONSEFORMAT": "votable/td"})
    assert list(parse_single_table(io.BytesIO(posted.content)).to_table()["object_id"]) == want
    assert b"<TABLEDATA>" in posted.content
    rows = list(csv.DictReader(io.StringIO(client.get("/tap/sync", params={
        "lang": "adql", "query": query, "format": "csv"}).text)))
    assert [r["object_id"] for r in rows] == want
    tsv = client.get("/tap/sync", params={"lang": "adql", "query": query, "format": "tsv"})
    assert tsv.text.splitlines()[0].split("\t") == ['"object_id"', '"ra"', '"dec"']
    parquet = client.get("/tap/sync", params={"LANG": "ADQL", "QUERY": query,
                                              "RESPONSEFORMAT": "parquet"})
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    read = pq.read_table(io.BytesIO(parquet.content))
    assert read.column("object_id").to_pylist() == want
    footer = pq.ParquetFile(io.BytesIO(parquet.content)).metadata.metadata
    assert b"QUERY_STATUS" in footer[b"IVOA.VOTable-Parquet.content"]
    assert read.column("ra").to_pylist() == pytest.approx(list(table["ra"]))


def test_maxrec_and_errors(tap) -> None:
    client, _, _ = tap
    capped = client.get("/tap/sync", params={"LANG": "ADQL", "MAXREC": "3",
                                             "QUERY": "SELECT object_id FROM lanner.objects"})
    assert len(parse_single_table(io.BytesIO(capped.content)).to_table()) == 3
    assert _status(capped.content) == ["OK", "OVERFLOW"]
    for params, said in [
        ({"QUERY": "SELECT 1 FROM lanner.objects"}, "LANG is required"),
        ({"LANG": "SQL", "QUERY": "SELECT 1"}, "LANG=SQL is not supported"),
        ({"LANG": "ADQL"}, "QUERY is required"),
        ({"LANG": "ADQL", "QUERY": "SELECT nosuch FROM lanner.objects"}, "unknown column"),
        ({"LANG": "ADQL", "QUERY": "SELECT * FROM lanner.tokens"}, "unknown table"),
        ({"LANG": "ADQL", "QUERY": "DROP TABLE lanner.objects"}, "only reads"),
        ({"LANG": "ADQL", "MAXREC": "many", "QUERY": "SELECT 1 FROM lanner.objects"},
         "MAXREC must be a whole number"),
        ({"LANG": "ADQL", "FORMAT": "fits", "QUERY": "SELECT ra FROM lanner.objects"},
         "RESPONSEFORMAT 'fits'"),
    ]:
        answer = client.get("/tap/sync", params=params)
        assert answer.status_code == 400, params
        votable = parse(io.BytesIO(answer.content))
        infos = [i for r in votable.resources for i in r.infos]
        assert [i.value for i in infos] == ["ERROR"], params
        assert said in (infos[0].content or ""), (params, infos[0].content)


def test_vosi_resources(tap) -> None:
    client, _, _ = tap
    assert "true" in client.get("/tap/availability").text
    capabilities = ET.fromstring(client.get("/tap/capabilities").content)
    standards = {c.get("standardID") for c in capabilities}
    assert "ivo://ivoa.net/std/TAP" in standards
    tables = ET.fromstring(client.get("/tap/tables").content)
    names = {t.findtext("name") for t in tables.iter("table")}
    assert {"lanner.objects", "lanner.alert_rows", "TAP_SCHEMA.columns"} <= names
    assert "lanner.tokens" not in names


def test_pyvo_reads_the_service(tap) -> None:
    import pyvo

    _, app, harness = tap
    with served(app) as url:
        service = pyvo.dal.TAPService(f"{url}/tap")
        result = service.run_sync("SELECT TOP 5 object_id, ra FROM lanner.objects "
                                  "ORDER BY object_id")
        assert [str(o) for o in result.to_table()["object_id"]] == _object_ids(harness)[:5]
        schema = service.run_sync("SELECT table_name FROM TAP_SCHEMA.tables").to_table()
        assert "lanner.objects" in {str(n) for n in schema["table_name"]}
        with pytest.raises(pyvo.dal.DALQueryError, match="unknown column"):
            service.run_sync("SELECT nosuch FROM lanner.objects")
