"""`broker.queries` without HTTP: what a stage sees when it reads the archive through a factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import Backend, Settings
from broker.exceptions import NotFoundError
from broker.factory import Factory
from broker.queries import OBJECTS, ArchiveQueries, CutoutKind


def test_queries_over_a_factory_raise_not_found(tmp_path: Path) -> None:
    factory = Factory(Settings(backend=Backend.embedded, state_dir=tmp_path))
    try:
        queries = ArchiveQueries(stores=factory)
        with pytest.raises(NotFoundError, match="object nobody not found"):
            queries.get_object("nobody")
        with pytest.raises(NotFoundError, match="object nobody not found"):
            queries.lightcurve("nobody")
        with pytest.raises(NotFoundError, match="object nobody not found"):
            queries.cutout("nobody", CutoutKind.science)
        with pytest.raises(NotFoundError, match=r"unknown catalog gaia \(known: objects\)"):
            queries.cone(ra=1.0, dec=2.0, radius_arcsec=3.0, catalog="gaia", limit=10)
        assert queries.cone(ra=1.0, dec=2.0, radius_arcsec=3.0, catalog=OBJECTS, limit=10) == []
        assert [c["name"] for c in queries.catalogs()] == [OBJECTS]
    finally:
        factory.close()
