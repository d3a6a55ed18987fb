"""One shard down: cone searches answer 503 naming the shard, never a partial result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from fastapi.testclient import TestClient

from api.app import create_app
from broker.factory import Factory
from broker.services import manager
from broker.services.mariadb import MariaDBService
from tests.support.stack import TEST_DATABASE


def _load_stars(factory: Factory, n: int = 20_000) -> None:
    """A uniform all-sky catalog "stars", so that a wide cone touches chunks on every shard."""
    rng = np.random.default_rng(5)
    factory.refcats.load("stars", [pa.record_batch({
        "sid": np.arange(n, dtype=np.int64), "ra": rng.uniform(0, 360, n),
        "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n)))})], "sid", "ra", "dec")


def test_cone_with_a_shard_down_is_a_503_naming_it(stack, shards) -> None:
    settings = stack.settings.model_copy(update={"mariadb_database": TEST_DATABASE})
    factory = Factory(settings)
    _load_stars(factory)
    shard = next(s for s in manager.build(stack.settings)
                 if isinstance(s, MariaDBService) and s.index == 1)
    # A cone wide enough to touch chunks on both shards.
    params = {"ra": 120.0, "dec": 10.0, "radius": 3600, "catalog": "stars", "limit": 10000}
    try:
        with TestClient(create_app(factory)) as http:
            healthy = http.get("/api/v1/cone", params=params)
            assert healthy.status_code == 200
            assert len(healthy.json()["rows"]) > 0
            assert shard.stop()
            for catalog in ("stars", "objects"):
                down = http.get("/api/v1/cone", params={**params, "catalog": catalog})
                assert down.status_code == 503, down.text
                detail = down.json()["detail"]
                assert "shard 1" in detail, detail
                assert str(shard.port) in detail, detail
    finally:
        if shard.pid() is None:
            manager.up(stack.settings)


def test_cone_with_an_embedded_shard_file_gone_is_a_503_naming_it(tmp_path) -> None:
    """The same over the embedded shard files: one that cannot be opened is named, and no
    cone answers from the other alone."""
    from broker.config import Backend, Settings

    settings = Settings(backend=Backend.embedded, embedded_dir=tmp_path / "embedded")
    factory = Factory(settings)
    _load_stars(factory)
    factory.catalog.counts()
    factory.close()
    gone = settings.embedded_path / "catalog-1.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{gone}{suffix}").unlink(missing_ok=True)
    gone.mkdir()  # a folder where shard 1's file was: SQLite cannot open it
    params = {"ra": 120.0, "dec": 10.0, "radius": 3600, "catalog": "stars", "limit": 10000}
    with TestClient(create_app(Factory(settings))) as http:
        for catalog in ("stars", "objects"):
            down = http.get("/api/v1/cone", params={**params, "catalog": catalog})
            assert down.status_code == 503, down.text
            detail = down.json()["detail"]
            assert "shard 1" in detail, detail
            assert "catalog-1.sqlite3" in detail, detail
