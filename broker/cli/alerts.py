"""``lanner simulate`` and ``lanner replay``: alerts onto a topic (or, simulated, into a folder)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import typer

from broker.cli.common import clean_errors, console, out
from broker.config import get_settings
from broker.exceptions import LannerError

SchemaOption = Annotated[
    str, typer.Option("--schema", help="Rubin alert schema version (MAJOR.MINOR).")
]


@clean_errors
def simulate(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Alerts to produce.")] = 1000,
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0.001, help="Alerts per second (default: as fast as possible).")] = None,
    schema: SchemaOption = "",
    to: Annotated[str, typer.Option(
        "--to", help="'kafka' (the Rubin alert topic) or a folder for one file per alert."
    )] = "kafka",
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed for a repeatable stream.")] = None,
    topic: Annotated[str | None, typer.Option(
        "--topic", help="Topic to write to (default: the Rubin alert topic).")] = None,
    profile: Annotated[str, typer.Option(
        "--profile", help="Packet profile: 'realistic' (sized on Rubin's April-2026 packets, "
        "about 176 kB with history, solar-system alerts included) or 'small' (the simulator's "
        "original 37 kB packets).")] = "realistic",
) -> None:
    """Produce realistic synthetic Rubin alert packets (histories and FITS cutouts included)."""
    from broker.simulator.profiles import profile_named  # noqa: PLC0415
    from broker.streaming.schemas import SchemaVersion, latest_version  # noqa: PLC0415

    settings = get_settings()
    version = SchemaVersion.parse(schema) if schema else latest_version()
    try:
        chosen = profile_named(profile).name
    except ValueError as exc:
        raise LannerError(str(exc)) from None
    stream = _simulated(count, version, seed, rate, chosen)
    if to == "kafka":
        from broker.storage.kafka import KafkaClients, produce_all  # noqa: PLC0415

        target = topic or settings.topic_alerts_lsst
        clients = KafkaClients.from_settings(settings)
        clients.ensure_topics([target])
        sent = produce_all(clients.producer(), target, stream)
        out.print(f"{sent} alerts (schema {version}, {chosen} profile) on topic {target} at "
                  f"{clients.bootstrap}", highlight=False)
    else:
        from broker.streaming import files, wire  # noqa: PLC0415

        # Files are named by diaSourceId; reading it back costs a decode, which is cheap next to
        # writing the file and keeps the simulator's output the exact bytes Kafka would carry.
        written = files.write_alerts(
            to, ((wire.decode(value)[1]["diaSource"]["diaSourceId"], value)
                 for _, value in stream)
        )
        out.print(f"{written} alerts (schema {version}, {chosen} profile) written to {to}",
                  highlight=False)


@clean_errors
def replay(
    folder: Annotated[str, typer.Argument(help="Folder of Rubin or ZTF alert files.")],
    topic: Annotated[str, typer.Option("--topic", help="Topic to put them on.")],
) -> None:
    """Put a folder of alert files (Rubin wire format or Avro containers, ZTF) on a topic."""
    from pathlib import Path  # noqa: PLC0415

    from broker.storage.kafka import KafkaClients, produce_all  # noqa: PLC0415
    from broker.streaming.replay import iter_alert_files  # noqa: PLC0415

    if not Path(folder).is_dir():
        raise LannerError(f"{folder} is not a folder")
    clients = KafkaClients.from_settings(get_settings())
    clients.ensure_topics([topic])
    sent = produce_all(clients.producer(), topic,
                       ((key, value) for _, value, key in iter_alert_files(folder)))
    out.print(f"{sent} alerts from {folder} on topic {topic}", highlight=False)


def _simulated(count: int, version: Any, seed: int | None, rate: float | None,
               profile: str) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, wire-format value) with a progress bar, paced to ``rate``."""
    import time  # noqa: PLC0415

    from rich.progress import Progress  # noqa: PLC0415

    from broker.simulator import AlertSimulator  # noqa: PLC0415

    simulator = AlertSimulator(schema=version, seed=seed, profile=profile)
    started = time.monotonic()
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(f"simulating schema {version} ({profile})", total=count)
        for done, (key, value) in enumerate(simulator.encoded(count), start=1):
            if rate is not None:
                delay = started + done / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield key, value
            progress.advance(task)
