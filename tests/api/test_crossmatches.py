"""``/api/v1/objects/{id}/crossmatches``: an object's neighbours in the reference catalogs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import Loaded, make_factory

#: Offsets (arcsec) of the planted neighbours of each chosen object, in two catalogs.
OFFSETS = {"stars": [0.4, 2.5, 4.9, 7.0, 30.0], "galaxies": [1.2, 6.0]}


@pytest.fixture(scope="module")
def planted(loaded: Loaded, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[TestClient, dict[str, list[dict[str, Any]]], list[dict]]]:
    """Two reference catalogs with rows planted at known distances from six archived objects
    (ZTF ones and simulated Rubin ones), plus random rows all over the sky."""
    objects = loaded.objects()
    chosen = [o for o in objects if o["survey"] == "ztf"][:3] + [
        o for o in objects if o["survey"] == "lsst"][:3]
    factory = make_factory(loaded, tmp_path_factory.mktemp("xm-factory"))
    rng = np.random.default_rng(8)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, offsets in OFFSETS.items():
        planted_rows = []
        for o in chosen:
            centre = SkyCoord(o["ra"], o["dec"], unit="deg")
            angles = rng.uniform(0, 360, len(offsets)) * u.deg
            points = centre.directional_offset_by(angles, np.array(offsets) * u.arcsec)
            planted_rows += [{"ra": float(p.ra.deg), "dec": float(p.dec.deg)} for p in points]
        ra = rng.uniform(0, 360, 2000)
        dec = np.degrees(np.arcsin(rng.uniform(-1, 1, 2000)))
        every = planted_rows + [{"ra": float(a), "dec": float(d)} for a, d in zip(ra, dec,
                                                                                    strict=True)]
        for i, row in enumerate(every):
            row.update(id=f"{name[0]}{i}", mag=float(10 + i % 7))
        rows[name] = every
        table = pa.Table.from_pylist(every)
        factory.refcats.load(name, table.to_batches(max_chunksize=500), "id", "ra", "dec")
    with TestClient(create_app(factory)) as client:  # the app closes the factory on shutdown
        yield client, rows, chosen


def _brute(rows: list[dict[str, Any]], ra: float, dec: float, radius: float) -> list[str]:
    coords = SkyCoord([r["ra"] for r in rows], [r["dec"] for r in rows], unit="deg")
    distance = coords.separation(SkyCoord(ra, dec, unit="deg")).arcsec
    inside = np.nonzero(distance <= radius)[0]
    return [rows[i]["id"] for i in inside[np.argsort(distance[inside], kind="stable")]]


@pytest.mark.parametrize("radius", [1.0, 5.0, 45.0])
def test_matches_equal_a_brute_force_search_of_each_catalog(planted: Any, radius: float) -> None:
    client, rows, chosen = planted
    for obj in chosen:
        response = client.get(f"/api/v1/objects/{obj['object_id']}/crossmatches",
                              params={"radius": radius, "limit": 1000})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["object_id"], body["ra"], body["dec"]) == (obj["object_id"], obj["ra"],
                                                                obj["dec"])
        assert [m["catalog"] for m in body["matches"]] == ["galaxies", "stars"]
        for match in body["matches"]:
            expected = _brute(rows[match["catalog"]], obj["ra"], obj["dec"], radius)
            assert [r["id"] for r in match["rows"]] == expected
            distances = [r["distance_arcsec"] for r in match["rows"]]
            assert distances == sorted(distances)
            assert all(d <= radius for d in distances)
            assert all("mag" in r for r in match["rows"])  # every column of the catalog


def test_catalogs_can_be_chosen_and_limited(planted: Any) -> None:
    client, rows, chosen = planted
    obj = chosen[0]
    response = client.get(f"/api/v1/objects/{obj['object_id']}/crossmatches",
                          params={"catalog": "stars", "radius": 10, "limit": 2})
    assert response.status_code == 200, response.text
    matches = response.json()["matches"]
    assert [m["catalog"] for m in matches] == ["stars"]
    # The two nearest of the four planted within 10 arcsec.
    assert [r["id"] for r in matches[0]["rows"]] == _brute(rows["stars"], obj["ra"], obj["dec"],
                                                          10.0)[:2]
    assert matches[0]["truncated"] is True
    whole = client.get(f"/api/v1/objects/{obj['object_id']}/crossmatches",
                       params={"catalog": "stars", "radius": 10, "limit": 4}).json()
    assert len(whole["matches"][0]["rows"]) == 4  # the four planted within 10 arcsec
    assert whole["matches"][0]["truncated"] is False
    both = client.get(f"/api/v1/objects/{obj['object_id']}/crossmatches",
                      params=[("catalog", "stars"), ("catalog", "galaxies")]).json()
    assert [m["catalog"] for m in both["matches"]] == ["stars", "galaxies"]


def test_the_object_page_links_to_its_crossmatches(planted: Any) -> None:
    client, _, chosen = planted
    body = client.get(f"/api/v1/objects/{chosen[0]['object_id']}").json()
    assert body["links"]["crossmatches"].endswith(
        f"/api/v1/objects/{chosen[0]['object_id']}/crossmatches")


@pytest.mark.parametrize(("path", "params", "status", "word"), [
    ("/api/v1/objects/nobody/crossmatches", {}, 404, "object nobody not found"),
    (None, {"catalog": "gaia"}, 404, "unknown reference catalog gaia"),
    (None, {"radius": 0}, 422, "radius"),
    (None, {"radius": 601}, 422, "radius"),
    (None, {"radius": "nan"}, 422, "radius"),
    (None, {"limit": 0}, 422, "limit"),
])
def test_bad_requests_get_a_clear_4xx(planted: Any, path: str | None, params: dict[str, Any],
                                      status: int, word: str) -> None:
    client, _, chosen = planted
    response = client.get(path or f"/api/v1/objects/{chosen[0]['object_id']}/crossmatches",
                          params=params)
    assert response.status_code == status, response.text
    assert word in response.json()["detail"]


def test_no_reference_catalog_gives_no_matches(loaded: Loaded, tmp_path: Path) -> None:
    factory = make_factory(loaded, tmp_path)
    with TestClient(create_app(factory)) as client:
        body = client.get(f"/api/v1/objects/{loaded.object_ids[0]}/crossmatches").json()
    assert body["matches"] == []
    assert body["radius_arcsec"] == 5.0
