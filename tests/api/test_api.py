"""The HTTP API over an archive filled by the real ingest stage, on each backend.

The archive holds simulated Rubin alerts (schema 11.1) and the 53 real ZTF alerts of
``tests/data/ztf``, ingested exactly as ``lanner ingest`` does: through the in-process queue
into SQLite, and through Kafka into Cassandra and two MariaDB shards (`loaded`).
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from astropy.io import fits
from fastapi.testclient import TestClient

from api.app import create_app
from api.models import ConeRow, DetectionOut, ObjectFields, ObjectOut
from broker.config import Backend, Settings
from broker.domain.alerts import CUTOUT_KINDS
from broker.domain.archive import BANDS
from broker.domain.sky import angular_separation_deg
from broker.exceptions import ServiceUnavailableError
from broker.factory import Factory
from broker.queries import CutoutKind
from broker.storage.archive import DETECTION_COLUMNS, FORCED_COLUMNS, OBJECT_COLUMNS
from broker.streaming.replay import iter_alert_files
from tests.api.conftest import ZTF_SAMPLES, Loaded, make_factory

ZTF_OBJECT = "ZTF18abmmoot"
ZTF_ALERT = 1628364324215010017


def _assert_error(response: Any, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert "Traceback" not in response.text
    for word in words:
        assert word in detail, detail
    return detail


# ---- objects -------------------------------------------------------------------------------


def test_object_is_its_stored_row_with_magnitudes_and_links(
        client: TestClient, loaded: Loaded) -> None:
    for object_id in [*loaded.rubin_ids[:10], *loaded.ztf_ids[:5]]:
        stored = loaded.harness.catalog.get_object(object_id)
        response = client.get(f"/api/v1/objects/{object_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert {name: body[name] for name in OBJECT_COLUMNS} == stored
        for band in BANDS:
            flux = stored[f"{band}_last_flux"]
            if flux is None:
                assert body[f"{band}_last_mag"] is None
            else:
                assert body[f"{band}_last_mag"] == pytest.approx(
                    -2.5 * math.log10(abs(flux)) + 31.4, abs=1e-9)
        links = body["links"]
        assert links["self"].endswith(f"/api/v1/objects/{object_id}")
        assert client.get(links["lightcurve"]).status_code == 200
        assert set(links["cutouts"]) == set(CUTOUT_KINDS)
        assert client.get(links["cutouts"]["science"]).status_code == 200


def test_unknown_object_is_404(client: TestClient) -> None:
    response = client.get("/api/v1/objects/ZTF99nothere")
    assert response.json() == {"detail": "object ZTF99nothere not found"}
    _assert_error(response, 404)
    _assert_error(client.get("/api/v1/objects/12345/lightcurve"), 404, "object 12345 not found")
    _assert_error(client.get("/api/v1/objects/12345/cutouts/science"), 404, "12345")


def test_ztf_magnitude_matches_magpsf(client: TestClient) -> None:
    packet = next(value for path, value, _ in iter_alert_files(ZTF_SAMPLES)
                  if path.name == f"{ZTF_ALERT}.avro")
    record: Any = next(fastavro.reader(io.BytesIO(packet)))
    candidate = record["candidate"]
    assert candidate["fid"] == 2  # r band, the object's latest detection
    assert candidate["magpsf"] == pytest.approx(18.976, abs=1e-3)

    body = client.get(f"/api/v1/objects/{ZTF_OBJECT}").json()
    assert body["survey"] == "ztf"
    assert body["r_last_mag"] == pytest.approx(candidate["magpsf"], abs=1e-3)
    assert body["r_last_mag"] == pytest.approx(18.976, abs=1e-3)
    assert body["r_last_flux"] < 0  # isdiffpos 'f': the magnitude is that of |flux|
    # sigmapsf is the magnitude error ZTF measured; the flux error is derived from it.
    assert body["r_last_mag_err"] == pytest.approx(candidate["sigmapsf"], rel=1e-3)

    curve = client.get(f"/api/v1/objects/{ZTF_OBJECT}/lightcurve").json()
    latest = curve["detections"][-1]
    assert latest["source_id"] == ZTF_ALERT
    assert latest["mag"] == pytest.approx(candidate["magpsf"], abs=1e-3)


# ---- light curves --------------------------------------------------------------------------


def test_lightcurve_is_the_stored_rows_oldest_first(client: TestClient, loaded: Loaded) -> None:
    objects = loaded.objects()
    richest = max((o for o in objects if o["survey"] == "lsst"),
                  key=lambda o: o["n_detections"])
    for object_id in (richest["object_id"], ZTF_OBJECT, loaded.rubin_ids[0]):
        response = client.get(f"/api/v1/objects/{object_id}/lightcurve")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object_id"] == object_id
        stored = loaded.harness.lightcurves.lightcurve(object_id)
        assert stored
        assert [{k: d[k] for k in DETECTION_COLUMNS} for d in body["detections"]] == stored
        mjds = [d["mjd"] for d in body["detections"]]
        assert mjds == sorted(mjds)
        for detection in body["detections"]:
            flux, err = detection["psf_flux"], detection["psf_flux_err"]
            assert detection["mag"] == pytest.approx(-2.5 * math.log10(abs(flux)) + 31.4)
            assert detection["mag_err"] == pytest.approx(1.0857362 * err / abs(flux), rel=1e-6)
        forced = loaded.harness.lightcurves.forced_photometry(object_id)
        assert [{k: f[k] for k in FORCED_COLUMNS} for f in body["forced_photometry"]] == forced
        forced_mjds = [f["mjd"] for f in body["forced_photometry"]]
        assert forced_mjds == sorted(forced_mjds)
    # The simulator gives Rubin objects forced photometry; ZTF packets carry none here.
    assert client.get(f"/api/v1/objects/{richest['object_id']}/lightcurve").json()[
        "forced_photometry"]


# ---- cutouts -------------------------------------------------------------------------------


def test_rubin_cutouts_are_the_stored_fits(client: TestClient, loaded: Loaded) -> None:
    object_id = loaded.rubin_ids[3]
    curve = loaded.harness.lightcurves.lightcurve(object_id)
    latest = max(curve, key=lambda r: (r["mjd"], r["source_id"]))["source_id"]
    for kind in CUTOUT_KINDS:
        response = client.get(f"/api/v1/objects/{object_id}/cutouts/{kind}")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fits"
        assert "content-encoding" not in response.headers
        assert response.headers["x-lanner-source-id"] == str(latest)
        assert f'filename="{object_id}_{latest}_{kind}.fits"' in \
            response.headers["content-disposition"]
        assert response.content == loaded.harness.lightcurves.cutout(latest, kind)
        with fits.open(io.BytesIO(response.content)) as hdus:
            assert hdus[0].data.shape == (30, 30)


def test_cutout_of_a_chosen_alert(client: TestClient, loaded: Loaded) -> None:
    # An older alert of an object: a detection that has its own cutouts.
    for object_id in loaded.rubin_ids:
        curve = loaded.harness.lightcurves.lightcurve(object_id)
        alerts = [r["source_id"] for r in curve
                  if loaded.harness.lightcurves.cutout(r["source_id"], "difference")]
        if len(alerts) >= 2:
            break
    else:
        pytest.fail("no object with two alerts")
    chosen = alerts[0]
    response = client.get(f"/api/v1/objects/{object_id}/cutouts/difference",
                          params={"source_id": chosen})
    assert response.status_code == 200, response.text
    assert response.content == loaded.harness.lightcurves.cutout(chosen, "difference")
    assert response.headers["x-lanner-source-id"] == str(chosen)

    other = loaded.harness.lightcurves.lightcurve(loaded.ztf_ids[0])[-1]["source_id"]
    _assert_error(client.get(f"/api/v1/objects/{object_id}/cutouts/science",
                             params={"source_id": other}),
                  404, f"source {other} is not a detection of object {object_id}")
    # A history detection of the object repeats in later packets without cutouts.
    history = [r["source_id"] for r in curve if r["source_id"] not in alerts]
    if history:
        _assert_error(client.get(f"/api/v1/objects/{object_id}/cutouts/science",
                                 params={"source_id": history[0]}), 404, "no science cutout")


def test_ztf_cutouts_are_gzip_fits(client: TestClient, loaded: Loaded) -> None:
    response = client.get(f"/api/v1/objects/{ZTF_OBJECT}/cutouts/science")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert "content-encoding" not in response.headers
    assert response.headers["content-disposition"] == \
        f'inline; filename="{ZTF_OBJECT}_{ZTF_ALERT}_science.fits.gz"'
    assert response.content == loaded.harness.lightcurves.cutout(ZTF_ALERT, "science")
    with fits.open(io.BytesIO(gzip.decompress(response.content))) as hdus:
        assert hdus[0].data.ndim == 2


def test_cutout_kind_is_checked(client: TestClient) -> None:
    _assert_error(client.get(f"/api/v1/objects/{ZTF_OBJECT}/cutouts/thumbnail"), 422, "kind")
    _assert_error(client.get(f"/api/v1/objects/{ZTF_OBJECT}/cutouts/science",
                             params={"source_id": "x"}), 422, "source_id")
    assert {k.value for k in CutoutKind} == set(CUTOUT_KINDS)


# ---- cone search ---------------------------------------------------------------------------


def _brute_force(objects: list[dict[str, Any]], ra: float, dec: float,
                 radius_arcsec: float) -> list[tuple[str, float]]:
    distances = angular_separation_deg(
        np.full(len(objects), ra), np.full(len(objects), dec),
        np.array([o["ra"] for o in objects]), np.array([o["dec"] for o in objects])) * 3600.0
    inside = [(o["object_id"], float(d)) for o, d in zip(objects, distances, strict=True)
              if d <= radius_arcsec]
    return sorted(inside, key=lambda pair: (pair[1], pair[0]))


def test_cone_equals_a_brute_force_search(client: TestClient, loaded: Loaded) -> None:
    objects = loaded.objects()
    rubin = next(o for o in objects if o["survey"] == "lsst")
    cases = [
        (197.6, 7.3, 1800.0),  # the ZTF exposure
        (196.5, 7.4, 3600.0),
        (rubin["ra"], rubin["dec"], 3600.0),
        (rubin["ra"], rubin["dec"], 0.5),
        (10.0, -80.0, 3600.0),
    ]
    nonempty = 0
    for ra, dec, radius in cases:
        response = client.get("/api/v1/cone", params={"ra": ra, "dec": dec, "radius": radius,
                                                      "limit": 10_000})
        assert response.status_code == 200, response.text
        rows = response.json()["rows"]
        expected = _brute_force(objects, ra, dec, radius)
        assert [r["id"] for r in rows] == [object_id for object_id, _ in expected]
        assert [r["distance_arcsec"] for r in rows] == pytest.approx(
            [d for _, d in expected], abs=1e-6)
        for row in rows:
            assert row["object_id"] == row["id"]
            stored = loaded.harness.catalog.get_object(row["id"])
            assert {name: row[name] for name in OBJECT_COLUMNS} == stored
        nonempty += bool(rows)
    assert nonempty >= 3


def test_cone_limit_keeps_the_nearest(client: TestClient, loaded: Loaded) -> None:
    expected = _brute_force(loaded.objects(), 197.6, 7.3, 3600.0)
    assert len(expected) > 5
    body = client.get("/api/v1/cone",
                      params={"ra": 197.6, "dec": 7.3, "radius": 3600, "limit": 5}).json()
    assert [r["id"] for r in body["rows"]] == [object_id for object_id, _ in expected[:5]]
    assert body["truncated"] is True
    default = client.get("/api/v1/cone", params={"ra": 197.6, "dec": 7.3, "radius": 3600})
    assert len(default.json()["rows"]) == min(100, len(expected))
    # A limit of exactly the number of rows in the cone is a whole answer, one less is not.
    for limit, truncated in ((len(expected), False), (len(expected) - 1, True)):
        body = client.get("/api/v1/cone", params={"ra": 197.6, "dec": 7.3, "radius": 3600,
                                                   "limit": limit}).json()
        assert (len(body["rows"]), body["truncated"]) == (limit, truncated)


@pytest.mark.parametrize(("params", "status", "word"), [
    ({"ra": "nan", "dec": 7, "radius": 10}, 422, "ra"),
    ({"ra": 10, "dec": "NaN", "radius": 10}, 422, "dec"),
    ({"ra": "inf", "dec": 7, "radius": 10}, 422, "ra"),
    ({"ra": 10, "dec": 7, "radius": "-inf"}, 422, "radius"),
    ({"ra": 10, "dec": 91, "radius": 10}, 422, "dec"),
    ({"ra": 10, "dec": -90.5, "radius": 10}, 422, "dec"),
    ({"ra": 360, "dec": 7, "radius": 10}, 422, "ra"),
    ({"ra": -1, "dec": 7, "radius": 10}, 422, "ra"),
    ({"ra": 10, "dec": 7, "radius": -1}, 422, "radius"),
    ({"ra": 10, "dec": 7, "radius": 0}, 422, "radius"),
    ({"ra": 10, "dec": 7, "radius": 1e6}, 422, "radius"),
    ({"ra": 10, "dec": 7, "radius": "wide"}, 422, "radius"),
    ({"dec": 7, "radius": 10}, 422, "ra"),
    ({"ra": 10, "dec": 7}, 422, "radius"),
    ({"ra": 10, "dec": 7, "radius": 10, "limit": 0}, 422, "limit"),
    ({"ra": 10, "dec": 7, "radius": 10, "limit": 10_001}, 422, "limit"),
    ({"ra": 10, "dec": 7, "radius": 10, "catalog": "nope"}, 404, "unknown catalog nope"),
    ({"ra": 10, "dec": 7, "radius": 10, "catalog": "x'; DROP TABLE objects"}, 404,
     "unknown catalog x'; DROP TABLE objects"),
])
def test_cone_rejects_bad_parameters(client: TestClient, params: dict[str, Any], status: int,
                                     word: str) -> None:
    response = client.get("/api/v1/cone", params=params)
    detail = _assert_error(response, status, word)
    if status == 422:
        assert detail.startswith(f"{word}: "), detail
        assert response.json()["errors"][0]["loc"][-1] == word


def test_cone_edges_are_accepted(client: TestClient) -> None:
    for params in ({"ra": 0, "dec": -90, "radius": 3600}, {"ra": 359.999, "dec": 90,
                                                          "radius": 1e-3}):
        assert client.get("/api/v1/cone", params=params).status_code == 200


# ---- failures ------------------------------------------------------------------------------


class _Down:
    """A store whose server is down: every call raises like the real drivers' wrappers."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __getattr__(self, name: str) -> Any:
        if name == "close":
            return lambda: None

        def fail(*_: Any, **__: Any) -> Any:
            raise ServiceUnavailableError(self.message)

        return fail


class _Broken:
    def __getattr__(self, name: str) -> Any:
        def fail(*_: Any, **__: Any) -> Any:
            raise RuntimeError("secret internals /etc/passwd")

        return fail


def test_store_down_is_503_naming_the_store(loaded: Loaded, tmp_path: Path) -> None:
    message = "MariaDB shard 127.0.0.1:13306 does not answer: connection refused"
    factory = make_factory(loaded, tmp_path, catalog=_Down(message))
    with TestClient(create_app(factory)) as test_client:
        for path in (f"/api/v1/objects/{ZTF_OBJECT}",
                     "/api/v1/cone?ra=197.6&dec=7.3&radius=60",
                     f"/api/v1/objects/{ZTF_OBJECT}/cutouts/science",
                     "/api/v1/status"):
            response = test_client.get(path)
            assert response.json() == {"detail": message}
            _assert_error(response, 503, "MariaDB")
            assert response.headers["retry-after"].isdigit()
        # The light curve needs only the light-curve archive, which still answers.
        assert test_client.get(f"/api/v1/objects/{ZTF_OBJECT}/lightcurve").status_code == 200


class _CassandraDownFactory(Factory):
    """Connecting to the light-curve store fails (and is retried on every request)."""

    attempts = 0

    @property
    def lightcurves(self) -> Any:
        type(self).attempts += 1
        raise ServiceUnavailableError("Cassandra at 127.0.0.1:19042 does not answer")


def test_store_that_cannot_connect_is_503_and_other_routes_still_work(
        loaded: Loaded, tmp_path: Path) -> None:
    factory = _CassandraDownFactory(Settings(backend=Backend.embedded,
                                             embedded_dir=tmp_path / "unused"))
    factory.__dict__["catalog"] = loaded.harness.catalog
    with TestClient(create_app(factory)) as test_client:
        for _ in range(2):
            _assert_error(test_client.get(f"/api/v1/objects/{ZTF_OBJECT}/lightcurve"), 503,
                          "Cassandra at 127.0.0.1:19042")
        assert _CassandraDownFactory.attempts >= 2
        cone = test_client.get("/api/v1/cone", params={"ra": 197.6, "dec": 7.3, "radius": 600})
        assert cone.status_code == 200
        assert test_client.get(f"/api/v1/objects/{ZTF_OBJECT}").status_code == 200


def test_unexpected_error_is_a_generic_500(loaded: Loaded, tmp_path: Path) -> None:
    factory = make_factory(loaded, tmp_path, catalog=_Broken())
    with TestClient(create_app(factory)) as test_client:
        response = test_client.get(f"/api/v1/objects/{ZTF_OBJECT}")
        detail = _assert_error(response, 500, "internal server error")
        assert "passwd" not in response.text
        assert "RuntimeError" not in detail


def test_factory_is_closed_on_shutdown(tmp_path: Path) -> None:
    closed = []

    class Recording(Factory):
        def close(self) -> None:
            closed.append(True)
            super().close()

    factory = Recording(Settings(backend=Backend.embedded, embedded_dir=tmp_path / "embedded"))
    with TestClient(create_app(factory)) as test_client:
        # Nothing ingested in this factory's own archive: it is created empty on first use.
        body = test_client.get("/api/v1/status").json()
        assert body["catalog"]["objects"] == 0
        assert not closed
    assert closed == [True]


# ---- operations ----------------------------------------------------------------------------


def test_status_reports_backend_and_counts(client: TestClient, loaded: Loaded) -> None:
    body = client.get("/api/v1/status").json()
    assert body["backend"] == loaded.harness.name
    assert body["catalog"] == dict(loaded.harness.catalog.counts())
    assert body["lightcurves"] == dict(loaded.harness.lightcurves.counts())
    assert body["catalog"]["objects"] == len(loaded.object_ids)


def test_metrics_expose_lanner_metrics(client: TestClient) -> None:
    client.get(f"/api/v1/objects/{ZTF_OBJECT}")
    client.get("/api/v1/objects/nobody")
    client.get("/no/such/route")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "lanner_alerts_in_total" in text  # the stages' metrics, same registry
    assert ('lanner_http_request_duration_seconds_count{method="GET",'
            'route="/api/v1/objects/{object_id}",status="200"}') in text
    assert ('lanner_http_request_duration_seconds_count{method="GET",'
            'route="/api/v1/objects/{object_id}",status="404"}') in text
    assert 'route="unmatched",status="404"' in text
    assert "/no/such/route" not in text  # raw paths never become label values


def test_docs_and_openapi(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) >= {
        "/api/v1/objects/{object_id}", "/api/v1/objects/{object_id}/lightcurve",
        "/api/v1/objects/{object_id}/cutouts/{kind}", "/api/v1/cone", "/api/v1/status",
        "/metrics",
    }
    cone = schema["paths"]["/api/v1/cone"]["get"]
    assert cone["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorOut")
    radius = next(p for p in cone["parameters"] if p["name"] == "radius")
    assert "ARCSECONDS" in radius["description"]


def test_landing_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in response.text
    assert "/api/v1/cone" in response.text
    assert "<script" not in response.text


def test_wire_models_cover_the_stored_columns() -> None:
    for model in (ObjectFields, ObjectOut, ConeRow):
        assert set(OBJECT_COLUMNS) <= set(model.model_fields)
        assert {f"{band}_last_mag" for band in BANDS} <= set(model.model_fields)
    assert set(DETECTION_COLUMNS) | {"mag", "mag_err"} == set(DetectionOut.model_fields)
