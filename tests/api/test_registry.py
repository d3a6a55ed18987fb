"""The read-only schema registry: Confluent's REST answers for Lanner's and Rubin's schemas
(a real subscriber reading topics through it: tests/consumers/test_filters_stage.py)."""

from __future__ import annotations

import json

import fastavro
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from broker.config import Settings
from broker.factory import Factory
from broker.streaming import lanner_schemas, schemas


@pytest.fixture
def client(tmp_path) -> TestClient:
    with TestClient(create_app(Factory(Settings(embedded_dir=tmp_path)))) as test_client:
        yield test_client


def test_schemas_by_id(client) -> None:
    for family, versions in lanner_schemas.families().items():
        for version, schema_id in versions.items():
            answer = client.get(f"/registry/schemas/ids/{schema_id}")
            assert answer.status_code == 200
            parsed = fastavro.parse_schema(json.loads(answer.json()["schema"]))
            assert parsed["name"].split(".")[-1] == family.split(".")[-1], version
    rubin = client.get("/registry/schemas/ids/1101").json()["schema"]
    assert json.loads(rubin)["name"] == "lsst.v11_1.alert"
    assert json.loads(rubin) == json.loads(schemas.schema_text(1101))
    missing = client.get("/registry/schemas/ids/4242")
    assert (missing.status_code, missing.json()["error_code"]) == (404, 40403)


def test_subjects_and_versions(client) -> None:
    subjects = client.get("/registry/subjects").json()
    assert {"internal.enriched-value", "alerts.lsst-value", "lanner.filtered"} <= set(subjects)
    assert client.get("/registry/subjects/internal.enriched-value/versions").json() == [1, 2]
    latest = client.get("/registry/subjects/internal.enriched-value/versions/latest").json()
    assert (latest["id"], latest["version"]) == (lanner_schemas.schema_id("enriched"), 2)
    # Any filter topic's subject is lanner.filtered.
    one = client.get("/registry/subjects/filter.alice.bright-value/versions/1").json()
    assert one["id"] == lanner_schemas.schema_id("filtered", "1.0")
    newest = client.get("/registry/subjects/filter.alice.bright-value/versions/latest").json()
    assert (newest["id"], newest["version"]) == (lanner_schemas.schema_id("filtered"), 2)
    rubin = client.get("/registry/subjects/alerts.lsst-value/versions").json()
    assert len(rubin) == len(schemas.available_versions())
    assert client.get("/registry/subjects/nope-value/versions").json()["error_code"] == 40401
    assert client.get("/registry/subjects/internal.enriched-value/versions/9"
                      ).json()["error_code"] == 40402
    used = client.get(f"/registry/schemas/ids/{lanner_schemas.schema_id('enriched')}/versions")
    assert {"subject": "internal.enriched-value", "version": 2} in used.json()
    # Lookup finds a version and registers nothing.
    found = client.post("/registry/subjects/lanner.filtered", json={
        "schema": lanner_schemas.schema_text("filtered", "1.0")})
    assert found.json()["version"] == 1
    assert client.post("/registry/subjects/lanner.filtered", json={
        "schema": '{"type": "string"}'}).json()["error_code"] == 40403
    assert client.get("/registry/config").json() == {"compatibilityLevel": "BACKWARD"}
