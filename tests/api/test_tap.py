"""``/tap`` over each backend: synchronous ADQL as BINARY2, TABLEDATA, CSV and TSV; MAXREC
and overflow; DALI's case-insensitive parameters by GET and POST; error documents; the VOSI
resources; and pyvo's TAPService reading it all through HTTP."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io.votable import parse, parse_single_table
from fastapi.testclient import TestClient

from api.app import create_app
from broker.data import CATALOGS
from broker.domain.context import offset_by
from broker.domain.sky import angular_separation_deg
from tests.support.alerts import produce_placed, scattered
from tests.support.backends import object_ids
from tests.support.catalogs import HIPPARCOS
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


def _status(document: bytes) -> list[str]:
    votable = parse(io.BytesIO(document))
    return [i.value for r in votable.resources for i in r.infos if i.name == "QUERY_STATUS"]


def test_sync_answers_in_every_format(tap) -> None:
    client, _, harness = tap
    want = object_ids(harness)
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
        assert [str(o) for o in result.to_table()["object_id"]] == object_ids(harness)[:5]
        schema = service.run_sync("SELECT table_name FROM TAP_SCHEMA.tables").to_table()
        assert "lanner.objects" in {str(n) for n in schema["table_name"]}
        with pytest.raises(pyvo.dal.DALQueryError, match="unknown column"):
            service.run_sync("SELECT nosuch FROM lanner.objects")


def test_reference_catalogs_in_tables_and_cross_matched_by_sync(tap) -> None:
    """A catalog loaded while the service runs is in /tap/tables at the next request, with its
    units and UCDs, and the objects near its stars are found by a near-neighbour join."""
    client, app, harness = tap
    app.state.stores.factory.__dict__["refcats"] = harness.refcats  # on the archive's shards
    before = ET.fromstring(client.get("/tap/tables").content)
    assert "refcat.hipparcos" not in {t.findtext("name") for t in before.iter("table")}
    stars = pq.read_table(HIPPARCOS).slice(0, 3000)
    harness.refcats.load("hipparcos", stars.to_batches(), "hip", "ra", "dec", kind="star",
                         description=CATALOGS[0].description)
    ra, dec = stars.column("ra").to_numpy(), stars.column("dec").to_numpy()
    near = offset_by(ra[:6], dec[:6], 90.0, 12.0 / 3600.0)
    produce_placed(harness, [(float(a) % 360.0, float(d)) for a, d in zip(*near, strict=True)],
                   first_id=921_000_000_000, seed=53)
    assert harness.ingest_once().archived == 6

    tables = ET.fromstring(client.get("/tap/tables").content)
    [table] = [t for t in tables.iter("table") if t.findtext("name") == "refcat.hipparcos"]
    columns = {c.findtext("name"): (c.findtext("unit"), c.findtext("ucd"))
               for c in table.iter("column")}
    assert columns["ra"] == ("deg", "pos.eq.ra;meta.main")
    assert columns["id"] == (None, "meta.id;meta.main")
    assert columns["pmra"] == ("mas/yr", "pos.pm;pos.eq.ra")

    def plain(cursor: Any) -> list[tuple]:
        cursor.execute("SELECT object_id, ra, `dec` FROM objects")
        return list(cursor.fetchall())

    objects = [r for rows in harness.catalog.shards.all_shards(plain, write=False).values()
               for r in rows]
    hip = stars.column("hip").to_pylist()
    want = sorted(
        (o, h) for o, a, d in objects
        for h, s in zip(hip, angular_separation_deg(np.full(len(ra), a), np.full(len(ra), d),
                                                   ra, dec), strict=True) if s <= 30 / 3600)
    assert len(want) >= 6
    query = ("SELECT o.object_id, s.id, s.hpmag, DISTANCE(POINT('ICRS', o.ra, o.dec), "
             "POINT('ICRS', s.ra, s.dec)) * 3600 AS sep_arcsec FROM lanner.objects AS o "
             "JOIN refcat.hipparcos AS s ON 1 = CONTAINS(POINT('ICRS', s.ra, s.dec), "
             "CIRCLE('ICRS', o.ra, o.dec, 30.0 / 3600)) ORDER BY sep_arcsec")
    answer = client.get("/tap/sync", params={"LANG": "ADQL", "QUERY": query})
    assert answer.status_code == 200, answer.text
    got = parse_single_table(io.BytesIO(answer.content))
    assert sorted((str(o), int(h)) for o, h in zip(
        got.array["object_id"], got.array["id"], strict=True)) == want
    assert got.get_field_by_id_or_name("hpmag").unit == "mag"
    assert got.get_field_by_id_or_name("id").ucd == "meta.id;meta.main"
