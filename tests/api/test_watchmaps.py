"""Watchmaps over the API on each backend: MOC and skymap uploads, their errors, ownership."""

from __future__ import annotations

from typing import Any

import pytest

from broker.domain.watchmaps import area_sq_deg, moc_from_skymap
from tests.support.data import REPO_ROOT

SKYMAPS = REPO_ROOT / "tests" / "data" / "skymaps"


@pytest.fixture
def api(owners_api: Any) -> Any:
    return owners_api


def test_skymap_and_moc_uploads(api) -> None:
    client, _, tokens = api
    skymap = (SKYMAPS / "bayestar.multiorder.fits").read_bytes()
    made = client.post("/api/v1/watchmaps?name=S200129m&kind=skymap&credible_level=0.9",
                       content=skymap,
                       headers={**tokens["alice"], "Content-Type": "application/fits"})
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["source"], body["credible_level"]) == ("skymap", 0.9)
    assert body["area_sq_deg"] == pytest.approx(area_sq_deg(moc_from_skymap(skymap, 0.9)))
    moc = client.post("/api/v1/watchmaps?name=coverage&visibility=public",
                      content=(SKYMAPS / "CDS-I-125A-catalog_MOC.fits").read_bytes(),
                      headers={**tokens["bob"], "Content-Type": "application/fits"})
    assert moc.status_code == 201, moc.text
    assert moc.json()["area_sq_deg"] == pytest.approx(669.7, abs=0.1)
    ascii_moc = client.post("/api/v1/watchmaps?name=patch", content="3/1-4 5/100",
                            headers={**tokens["alice"], "Content-Type": "text/plain"})
    assert ascii_moc.status_code == 201
    shown = client.get(f"/api/v1/watchmaps/{ascii_moc.json()['watchmap_id']}?moc=true",
                       headers=tokens["alice"]).json()
    assert shown["moc"].split() == ["3/1-4", "5/100"]
    listed = client.get("/api/v1/watchmaps", headers=tokens["alice"]).json()
    assert sorted((m["owner"], m["name"]) for m in listed) == [
        ("alice", "S200129m"), ("alice", "patch"), ("bob", "coverage")]
    # Another user's private watchmap does not exist for anyone else.
    url = f"/api/v1/watchmaps/{body['watchmap_id']}"
    for who in (tokens["bob"], {}):
        assert client.get(url, headers=who).status_code == 404
        assert client.get(f"{url}/hits", headers=who).status_code == 404
    assert client.delete(url, headers=tokens["bob"]).status_code == 404
    assert client.put(url, content="3/1", headers={**tokens["bob"],
                                                   "Content-Type": "text/plain"}
                      ).status_code == 404
    replaced = client.put(f"{url}?kind=skymap&credible_level=0.5", content=skymap,
                          headers={**tokens["alice"], "Content-Type": "application/fits"})
    assert replaced.status_code == 200
    assert (replaced.json()["version"], replaced.json()["credible_level"]) == (2, 0.5)
    assert client.delete(url, headers=tokens["alice"]).status_code == 204


@pytest.mark.parametrize(("query", "content", "kind", "status", "words"), [
    ("kind=skymap&credible_level=0", b"x", "application/fits", 422, "credible_level"),
    ("kind=skymap&credible_level=1.5", b"x", "application/fits", 422, "credible_level"),
    ("kind=skymap", b"garbage", "application/fits", 422, "not a FITS file"),
    ("kind=skymap", b"3/1", "text/plain", 415, "a skymap is sent as application/fits"),
    ("kind=moc", b"3/x", "text/plain", 422, "not a ASCII MOC"),
    ("kind=moc", b"<moc/>", "application/xml", 415, "not application/xml"),
    ("kind=galaxy", b"3/1", "text/plain", 422, "kind"),
])
def test_bad_watchmaps_are_clear_4xx(api, query: str, content: bytes, kind: str, status: int,
                                     words: str) -> None:
    client, _, tokens = api
    answer = client.post(f"/api/v1/watchmaps?name=bad&{query}", content=content,
                         headers={**tokens["alice"], "Content-Type": kind})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    assert client.get("/api/v1/watchmaps", headers=tokens["alice"]).json() == []
