"""`lanner simulate --to kafka`: an independent consumer decodes every message.

The reader here shares no code with Lanner's wire module: a plain confluent-kafka consumer, the
header parsed with struct, and the schema loaded by lsst-alert-packet and read by fastavro. The
command runs with its default packet profile, the realistic one (solar-system alerts included).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer
from lsst.alert.packet import schema as lsst_schema

from tests.support.stack import ServiceStack

REPO = Path(__file__).resolve().parents[2]


def _rubin_schema(schema_id: int) -> dict:
    major, minor = divmod(schema_id, 100)
    path = Path(lsst_schema.get_schema_path(major, minor)) / f"lsst.v{major}_{minor}.alert.avsc"
    return fastavro.parse_schema(lsst_schema.Schema.from_file(str(path)).definition)


def test_simulated_alerts_on_kafka_decode_independently(stack: ServiceStack, kafka_topics) -> None:
    topic = kafka_topics("alerts", partitions=3)
    count = 300
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "simulate", "--count", str(count), "--seed", "11",
         "--schema", "11.1", "--to", "kafka", "--topic", topic],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=300,
        env={**os.environ, "LANNER_KAFKA_BOOTSTRAP": stack.kafka.bootstrap},
    )
    assert result.returncode == 0, result.stderr
    assert f"{count} alerts" in result.stdout

    consumer = Consumer({
        "bootstrap.servers": stack.kafka.bootstrap,
        "group.id": f"independent-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    schema = _rubin_schema(1101)
    source_ids = set()
    solar = 0
    objects: dict[bytes, set[int]] = {}
    try:
        consumer.subscribe([topic])
        for _ in range(120):
            for message in consumer.consume(num_messages=500, timeout=1.0):
                assert message.error() is None
                value = message.value()
                magic, schema_id = struct.unpack(">bI", value[:5])
                assert (magic, schema_id) == (0, 1101)
                body = io.BytesIO(value[5:])
                record = fastavro.schemaless_reader(body, schema, None)
                assert body.tell() == len(value) - 5
                assert record["diaSourceId"] == record["diaSource"]["diaSourceId"]
                if record["diaObject"] is None:  # a solar-system alert, keyed by its object
                    solar += 1
                    assert message.key() == str(record["diaSource"]["ssObjectId"]).encode()
                else:
                    assert message.key() == str(record["diaObject"]["diaObjectId"]).encode()
                for cutout in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
                    assert record[cutout][:6] == b"SIMPLE"
                source_ids.add(record["diaSourceId"])
                objects.setdefault(message.key(), set()).add(message.partition())
            if len(source_ids) >= count:
                break
    finally:
        consumer.close()
    assert len(source_ids) == count
    assert 0 < solar < count // 4
    # Keyed by object: every alert of one object lands on one partition, in order.
    assert all(len(partitions) == 1 for partitions in objects.values())
    assert len(objects) < count  # objects are revisited, histories grow
