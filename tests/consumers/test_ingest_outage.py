"""A real outage: a MariaDB shard stops mid-stream; ingest waits, commits nothing, and resumes."""

from __future__ import annotations

import threading
import time

from broker import metrics
from broker.services import manager
from broker.services.mariadb import MariaDBService
from broker.simulator import AlertSimulator
from consumers.stage import Backoff
from tests.support.backends import ServicesHarness


def test_ingest_resumes_by_itself_after_a_shard_comes_back(stack, kafka_topics) -> None:
    harness = ServicesHarness(stack, kafka_topics)
    shard = next(s for s in manager.build(stack.settings) if isinstance(s, MariaDBService)
                 and s.index == 1)
    try:
        messages = list(AlertSimulator(schema="11.1", seed=44, cutouts=False).encoded(400))
        for key, value in messages:
            harness.produce(harness.topics.lsst, value, key=key)
        harness.flush()

        retries_before = metrics.RETRIES.labels("ingest", "catalog")._value.get()
        assert shard.stop()
        stage = harness.stage(backoff=Backoff(first=0.1, most=0.5))
        reports = []
        runner = threading.Thread(target=lambda: reports.append(stage.run(once=True)))
        runner.start()
        time.sleep(4)
        # The shard is down: the stage is still retrying its first batch, nothing committed.
        assert runner.is_alive()
        assert metrics.RETRIES.labels("ingest", "catalog")._value.get() > retries_before + 3
        committed = stage.source._consumer.committed(stage.source._consumer.assignment(),
                                                     timeout=10)
        assert all(tp.offset < 0 for tp in committed)

        manager.up(stack.settings)  # brings the stopped shard back, the rest is untouched
        runner.join(timeout=300)
        assert not runner.is_alive()
        assert reports[0].archived == 400
        assert harness.catalog.counts()["objects"] == len({key for key, _ in messages})
        stage.source.close()
    finally:
        if shard.pid() is None:
            manager.up(stack.settings)
        harness.close()
