"""Benchmark: encode and decode rates of full-size Rubin alert packets in the wire format.

Simulates ``--count`` packets (schema ``--schema``, default the package's latest; with history,
forced photometry and three FITS cutouts), then times `broker.streaming.wire.encode` and
`broker.streaming.wire.decode` over them in one process, ``--repeats`` times each, and reports the
median rates. The last line of output is one JSON object::

    {"packet_bytes": ..., "decode_alerts_per_s": ..., "encode_alerts_per_s": ...,
     "alerts": ..., "schema": "11.1"}

``packet_bytes`` is the median size of one wire-format message. Run: ``python bench/decode.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from broker.simulator import AlertSimulator
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion, latest_version


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its report and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="packets to simulate")
    parser.add_argument("--schema", default=str(latest_version()), help="alert schema version")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the packets")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeats < 1:
        parser.error("--count and --repeats must be at least 1")
    version = SchemaVersion.parse(args.schema)
    schema_id = version.schema_id

    simulator = AlertSimulator(schema=version, seed=args.seed)
    started = time.perf_counter()
    records = list(simulator.packets(args.count))
    simulate_s = time.perf_counter() - started

    encode_rates = []
    messages: list[bytes] = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        messages = [wire.encode(record, schema_id) for record in records]
        encode_rates.append(_rate(len(records), time.perf_counter() - started))

    decode_rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for message in messages:
            wire.decode(message)
        decode_rates.append(_rate(len(messages), time.perf_counter() - started))

    sizes = sorted(len(m) for m in messages)
    history = [len(r["prvDiaSources"] or []) for r in records]
    forced = [len(r["prvDiaForcedSources"] or []) for r in records]
    packet_bytes = sizes[len(sizes) // 2]
    decode_rate = round(statistics.median(decode_rates), 1)
    encode_rate = round(statistics.median(encode_rates), 1)
    result = {
        "packet_bytes": packet_bytes,
        "decode_alerts_per_s": decode_rate,
        "encode_alerts_per_s": encode_rate,
        "alerts": len(records),
        "schema": str(version),
    }
    print(f"schema {version} (id {schema_id}), {len(records)} packets, seed {args.seed}")
    print(
        f"simulated in {simulate_s:.2f} s ({_rate(len(records), simulate_s):.0f} packets/s, "
        f"{simulator.n_objects} objects)"
    )
    print(
        f"packet size: median {packet_bytes} B, min {sizes[0]} B, max {sizes[-1]} B; "
        f"prvDiaSources median {statistics.median(history):.0f}, "
        f"prvDiaForcedSources median {statistics.median(forced):.0f}"
    )
    print(
        "encode: "
        + ", ".join(f"{r:.0f}" for r in encode_rates)
        + f" alerts/s (median {encode_rate:.0f})"
    )
    print(
        "decode: "
        + ", ".join(f"{r:.0f}" for r in decode_rates)
        + f" alerts/s (median {decode_rate:.0f}, {decode_rate * packet_bytes / 1e6:.1f} MB/s)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
