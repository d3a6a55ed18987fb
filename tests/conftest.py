"""Shared fixtures.

The real services are started once per test session through the same code as
``lanner services up`` (so a developer who already ran it pays nothing) and state is reset per
test: fresh Kafka topics, truncated Cassandra tables, recreated MariaDB databases. A service that
cannot be started fails every test that needs it; nothing is skipped.

Every test that needs the services is marked ``services`` here, at collection, so that
``pytest -m "not services"`` (``make test-fast``) runs with no server: a test needs them if the
`stack` fixture is in its fixture closure, or if it takes a fixture parametrised over `BACKENDS`
(such as `harness`) in its ``services`` case, which asks for the stack only at set-up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.config import Settings
from tests.support.backends import BACKENDS, EmbeddedHarness, Harness, ServicesHarness
from tests.support.stack import ServiceStack


def _needs_services(item: pytest.Item) -> bool:
    if "stack" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    definitions = item._fixtureinfo.name2fixturedefs  # type: ignore[attr-defined]
    for name, value in callspec.params.items():
        defined = definitions.get(name)
        if value == "services" and defined and tuple(defined[-1].params or ()) == BACKENDS:
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``services`` every test that uses the real services (see the module docstring)."""
    for item in items:
        if _needs_services(item):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings as a ``lanner`` command would read them."""
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[ServiceStack]:
    """The real services, up for the whole session."""
    stack = ServiceStack.start(settings)
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def kafka_topics(stack: ServiceStack) -> Iterator[object]:
    """A factory of fresh, uniquely named topics, deleted after the test."""
    factory = stack.topic_factory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def cassandra_session(stack: ServiceStack) -> object:
    """A session on the test keyspace, with every table in it truncated."""
    return stack.fresh_cassandra()


@pytest.fixture
def shards(stack: ServiceStack) -> object:
    """The MariaDB shard set on a freshly recreated test database."""
    return stack.fresh_shards()


@pytest.fixture(params=BACKENDS)
def harness(request: pytest.FixtureRequest, tmp_path) -> Iterator[Harness]:
    """The same scenario over the embedded backend and over the real services."""
    built: Harness
    if request.param == "embedded":
        built = EmbeddedHarness(tmp_path)
    else:
        stack = request.getfixturevalue("stack")
        built = ServicesHarness(stack, request.getfixturevalue("kafka_topics"))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture(params=BACKENDS)
def shard_set(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """Two fresh shards: SQLite files, or the test database on the two MariaDB servers."""
    if request.param == "embedded":
        from broker.storage.shards import SQLiteShards

        shards = SQLiteShards(tmp_path / "shards", 2)
        try:
            yield shards
        finally:
            shards.close()
        return
    yield request.getfixturevalue("shards")
