"""Fixtures of the API tests: an archive filled by the real ingest stage, once per module and
backend.

`loaded` is parametrised over the backends: every API test that uses it runs with the same
assertions over the embedded archive (in-process queue, SQLite) and over the real services
(Kafka, Cassandra, two MariaDB shards). The alerts are ingested once per module per backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from broker.factory import Factory
from broker.simulator import AlertSimulator
from broker.streaming.replay import iter_alert_files
from tests.support.backends import BACKENDS, EmbeddedHarness, Harness, ServicesHarness
from tests.support.data import ZTF_SAMPLES


@dataclass
class Loaded:
    harness: Harness
    rubin_ids: list[str]
    ztf_ids: list[str]

    @property
    def object_ids(self) -> list[str]:
        return self.rubin_ids + self.ztf_ids

    def objects(self) -> list[dict[str, Any]]:
        rows = [self.harness.catalog.get_object(o) for o in self.object_ids]
        assert all(row is not None for row in rows)
        return rows  # type: ignore[return-value]


def make_factory(loaded: Loaded, tmp_path: Path, **stores: Any) -> Factory:
    """A real `Factory` of the module's backend over the loaded archive, with reference
    catalogs of its own (empty at first); ``stores`` replace some of its stores (one that is
    down, one that breaks)."""
    factory = loaded.harness.factory(tmp_path)
    factory.__dict__.update(stores)
    return factory


@pytest.fixture(scope="module", params=BACKENDS)
def loaded(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    harness: Harness
    topics = None
    if request.param == "embedded":
        harness = EmbeddedHarness(tmp_path_factory.mktemp("api-archive"))
    else:
        stack = request.getfixturevalue("stack")
        topics = stack.topic_factory()  # the kafka_topics fixture is per test; this is per module
        harness = ServicesHarness(stack, topics)
    try:
        simulated = list(AlertSimulator(schema="11.1", seed=4242).encoded(400))
        for key, value in simulated:
            harness.produce(harness.topics.lsst, value, key=key)
        ztf = list(iter_alert_files(ZTF_SAMPLES))
        for _, packet, ztf_key in ztf:
            harness.produce(harness.topics.ztf, packet, key=ztf_key)
        report = harness.ingest_once()
        assert report.archived == len(simulated) + len(ztf)
        assert report.dead_lettered == 0
        yield Loaded(
            harness=harness,
            rubin_ids=sorted({key.decode() for key, _ in simulated}),
            ztf_ids=sorted({key.decode() for _, _, key in ztf if key is not None}),
        )
    finally:
        harness.close()
        if topics is not None:
            topics.cleanup()


@pytest.fixture(scope="module")
def client(loaded: Loaded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    factory = make_factory(loaded, tmp_path_factory.mktemp("api-factory"))
    with TestClient(create_app(factory)) as test_client:
        yield test_client


@pytest.fixture
def owners_api(harness, tmp_path) -> Iterator[tuple[TestClient, Factory,
                                                     dict[str, dict[str, str]]]]:
    """A fresh app on the harness's backend with two users, alice and bob: the client, its
    factory, and each user's ``Authorization`` header."""
    factory = harness.factory(tmp_path)
    tokens = users_with_tokens(factory, "alice", "bob")
    with TestClient(create_app(factory)) as client:
        yield client, factory, tokens


def users_with_tokens(factory: Factory, *names: str) -> dict[str, dict[str, str]]:
    """Make these users, each with a token: their ``Authorization`` headers, by name."""
    tokens = {}
    for name in names:
        factory.accounts.add_user(name)
        token, _ = factory.accounts.issue_token(name)
        tokens[name] = {"Authorization": f"Bearer {token.text}"}
    return tokens

