"""Benchmark: encode and decode rates of full-size Rubin alert packets in the wire format.

Simulates ``--count`` packets (schema ``--schema``, default the package's latest; packet profile
``--profile``, default ``realistic``: sized on Rubin's April-2026 packets, a year of history and
Rubin-sized stamps; ``small`` is the simulator's original 37 kB packets), then times
`broker.streaming.wire.encode` and `broker.streaming.wire.decode` over them in one process,
``--repeats`` times each, and reports the median rates. The encode passes run over the decoded
records a hundred packets at a time: a few thousand realistic records held at once would take
several GB. The last line of output is one JSON object::

    {"packet_bytes": ..., "decode_alerts_per_s": ..., "encode_alerts_per_s": ...,
     "alerts": ..., "schema": "11.1", "profile": "realistic", "decode_mb_per_s": ...,
     "packet_bytes_with_history": ..., "cutout_bytes": ..., "prv_dia_sources": ...,
     "solar_system_alerts": ...}

``packet_bytes`` is the median size of one wire-format message; ``packet_bytes_with_history``
and ``cutout_bytes`` (the three stamps) are medians over the alerts that carry a history,
``prv_dia_sources`` their median number of previous sources. Run: ``python bench/decode.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from broker.simulator import AlertSimulator, PacketProfile
from broker.streaming import wire
from broker.streaming.schemas import SchemaVersion, latest_version

_CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
_CHUNK = 100


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _median(values: list[int]) -> float | None:
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its report and return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="packets to simulate")
    parser.add_argument("--schema", default=str(latest_version()), help="alert schema version")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the packets")
    parser.add_argument("--profile", default=PacketProfile.realistic.value,
                        choices=[p.value for p in PacketProfile], help="packet profile")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeats < 1:
        parser.error("--count and --repeats must be at least 1")
    version = SchemaVersion.parse(args.schema)
    schema_id = version.schema_id

    simulator = AlertSimulator(schema=version, seed=args.seed, profile=args.profile)
    started = time.perf_counter()
    messages = [value for _, value in simulator.encoded(args.count)]
    simulate_s = time.perf_counter() - started

    # Encode: each chunk of records decoded once (not timed), then encoded `repeats` times.
    encode_seconds = [0.0] * args.repeats
    history: list[int] = []
    with_history: list[tuple[int, int]] = []  # (packet bytes, cutout bytes)
    solar = 0
    for first in range(0, len(messages), _CHUNK):
        chunk = messages[first : first + _CHUNK]
        records = [wire.decode(message)[1] for message in chunk]
        for message, record in zip(chunk, records, strict=True):
            if record.get("diaObject") is None:
                solar += 1
            elif record.get("prvDiaSources"):
                history.append(len(record["prvDiaSources"]))
                cutouts = sum(len(record.get(name) or b"") for name in _CUTOUTS)
                with_history.append((len(message), cutouts))
        for repeat in range(args.repeats):
            started = time.perf_counter()
            for record in records:
                wire.encode(record, schema_id)
            encode_seconds[repeat] += time.perf_counter() - started
    encode_rates = [_rate(len(messages), seconds) for seconds in encode_seconds]

    decode_rates = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for message in messages:
            wire.decode(message)
        decode_rates.append(_rate(len(messages), time.perf_counter() - started))

    sizes = sorted(len(m) for m in messages)
    packet_bytes = sizes[len(sizes) // 2]
    decode_rate = round(statistics.median(decode_rates), 1)
    encode_rate = round(statistics.median(encode_rates), 1)
    result = {
        "packet_bytes": packet_bytes,
        "decode_alerts_per_s": decode_rate,
        "encode_alerts_per_s": encode_rate,
        "alerts": len(messages),
        "schema": str(version),
        "profile": args.profile,
        "decode_mb_per_s": round(decode_rate * statistics.mean(sizes) / 1e6, 1),
        "packet_bytes_with_history": _median([p for p, _ in with_history]),
        "cutout_bytes": _median([c for _, c in with_history]),
        "prv_dia_sources": _median(history),
        "solar_system_alerts": solar,
    }
    print(f"schema {version} (id {schema_id}), profile {args.profile}, {len(messages)} packets, "
          f"seed {args.seed}")
    print(
        f"simulated in {simulate_s:.2f} s ({_rate(len(messages), simulate_s):.0f} packets/s, "
        f"{simulator.n_objects} objects)"
    )
    print(
        f"packet size: median {packet_bytes} B, min {sizes[0]} B, max {sizes[-1]} B; "
        f"with history: median {result['packet_bytes_with_history']} B, cutouts "
        f"{result['cutout_bytes']} B, prvDiaSources median {result['prv_dia_sources']}; "
        f"{solar} solar-system alerts"
    )
    print(
        "encode: "
        + ", ".join(f"{r:.0f}" for r in encode_rates)
        + f" alerts/s (median {encode_rate:.0f})"
    )
    print(
        "decode: "
        + ", ".join(f"{r:.0f}" for r in decode_rates)
        + f" alerts/s (median {decode_rate:.0f}, {result['decode_mb_per_s']} MB/s)"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
