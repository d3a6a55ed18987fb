"""Benchmark: where to compute an object's features, at ingest or in the enrich stage.

Simulates ``--count`` packets (profile ``--profile``, default ``realistic``), archives them in
the real light-curve archive (Cassandra; needs ``lanner services up``; a keyspace of its own,
dropped at the end), then times the two places the features could be computed, one core:

- ``ingest``: from the packet the ingest stage holds decoded: normalising its whole history
  (ingest otherwise skips what the archive holds), its rows
  (`broker.domain.features.history_rows`), then `compute_features`.
- ``enrich``: from the archive: one `LightCurveArchive.histories` read for the batch's objects
  (two queries per object, concurrent), then `compute_features`.

The two agree for an object whose whole history is in its newest packet; where the archive
holds more (detections older than the packet's 12-month window, forced measurements older than
its 30 days), the packet alone is incomplete: ``packet_incomplete_objects`` counts those
objects. The last line of output is one JSON object::

    {"profile": ..., "alerts": ..., "ingest_alerts_per_s": ..., "enrich_alerts_per_s": ...,
     "enrich_read_alerts_per_s": ..., "rows_per_alert": ..., "batch": ...,
     "packet_incomplete_objects": ...}

``enrich_read_alerts_per_s`` is the archive read alone. Run: ``python bench/features.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

from broker.config import Settings
from broker.domain.archive import Seen, plan
from broker.domain.features import compute_features, history_rows
from broker.domain.sky import Chunker
from broker.exceptions import ServiceUnavailableError
from broker.simulator import AlertSimulator, PacketProfile
from broker.storage.cassandra import CassandraConnection, CassandraLightCurves
from broker.storage.stores import Origin
from broker.streaming import wire
from broker.streaming.queue import Message
from broker.streaming.schemas import latest_version
from consumers.ingest import DecodedPacket


def _archive(archive: CassandraLightCurves, records: list[tuple[int, dict, bytes]],
             chunker: Chunker) -> None:
    """Write every packet's rows, as ingest would on first sight, 25 packets per batch."""
    for first in range(0, len(records), 25):
        part = records[first:first + 25]
        alerts = [DecodedPacket(Message("alerts.lsst", 0, 0, value), "lsst", record,
                                schema_id=schema_id).normalise(None)
                  for schema_id, record, value in part]
        batch = plan(alerts, dict.fromkeys((a.object_id for a in alerts), Seen()), chunker)
        for attempt in range(10):  # as the ingest stage does: a busy node is retried
            try:
                archive.write(batch, {a.alert_id: Origin("alerts.lsst", 0, 0) for a in alerts})
                break
            except ServiceUnavailableError:
                if attempt == 9:
                    raise
                time.sleep(1.0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="packets to simulate")
    parser.add_argument("--batch", type=int, default=500, help="alerts per enrich batch")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed")
    parser.add_argument("--profile", default=PacketProfile.realistic.value,
                        choices=[p.value for p in PacketProfile], help="packet profile")
    args = parser.parse_args(argv)
    settings = Settings()
    simulator = AlertSimulator(schema=latest_version(), seed=args.seed, profile=args.profile)
    records = []
    for _, value in simulator.encoded(args.count):
        schema_id, record = wire.decode(value)
        if record.get("diaObject") is not None:  # solar-system alerts have no features
            records.append((schema_id, record, value))
    # The newest packet of each object, as the features of an object are its newest packet's.
    newest: dict[str, tuple[int, dict, bytes]] = {}
    for item in records:
        newest[str(item[1]["diaObject"]["diaObjectId"])] = item

    keyspace = f"bench_features_{uuid.uuid4().hex[:8]}"
    connection = CassandraConnection(hosts=settings.cassandra_hosts,
                                     port=settings.cassandra_port, keyspace=keyspace)
    archive = CassandraLightCurves(connection=connection)
    try:
        archive.setup()
        _archive(archive, records, Chunker(settings.chunk_stripes, settings.chunk_sub_stripes))

        items = list(newest.items())
        started = time.perf_counter()
        from_packet = {}
        rows = 0
        for object_id, (schema_id, record, value) in items:
            alert = DecodedPacket(Message("alerts.lsst", 0, 0, value), "lsst", record,
                                  schema_id=schema_id).normalise(None)
            detections, forced = history_rows(alert)
            rows += len(detections) + len(forced)
            from_packet[object_id] = compute_features(
                detections, forced, now_mjd=alert.detection.mjd, dia_object=record["diaObject"])
        ingest_s = time.perf_counter() - started

        read_s = enrich_s = 0.0
        incomplete = 0
        for first in range(0, len(items), args.batch):
            part = items[first:first + args.batch]
            started = time.perf_counter()
            histories = archive.histories([object_id for object_id, _ in part])
            read_s += time.perf_counter() - started
            for object_id, (_, record, _) in part:
                history = histories[object_id]
                features = compute_features(
                    history.detections, history.forced,
                    now_mjd=float(record["diaSource"]["midpointMjdTai"]),
                    dia_object=record["diaObject"])
                if features != from_packet[object_id]:
                    incomplete += 1
            enrich_s += time.perf_counter() - started
    finally:
        connection.session().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        connection.close()

    n = len(items)
    result = {
        "profile": args.profile,
        "alerts": n,
        "ingest_alerts_per_s": round(n / ingest_s, 1),
        "enrich_alerts_per_s": round(n / enrich_s, 1),
        "enrich_read_alerts_per_s": round(n / read_s, 1),
        "rows_per_alert": round(rows / n, 1),
        "batch": args.batch,
        "packet_incomplete_objects": incomplete,
    }
    print(f"{n} objects (newest packet of each), profile {args.profile}, "
          f"median rows {statistics.median(len(r[1].get('prvDiaSources') or ()) for r in records)}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
