"""``lanner services``: the real services on loopback (Kafka, Cassandra, MariaDB shards)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.cli.common import clean_errors, console, out
from broker.config import get_settings

app = typer.Typer(help="Run the real services locally (Kafka, Cassandra, MariaDB shards).",
                  no_args_is_help=True)

ShardsOption = Annotated[
    int | None, typer.Option("--shards", min=1, max=16, help="Number of MariaDB shard servers.")
]


@app.command("up")
@clean_errors
def services_up(shards: ShardsOption = None) -> None:
    """Fetch (first time) and start Kafka, Cassandra and the MariaDB shards; wait until ready."""
    from broker.services import manager  # noqa: PLC0415 - keeps `lanner --help` fast

    def report(name: str, message: str) -> None:
        console.print(f"  {name:<12} {message}", highlight=False)

    with console.status("starting services (the first run downloads the jars)"):
        statuses = manager.up(get_settings(), shards, report)
    _print_status(statuses)


@app.command("fetch")
@clean_errors
def services_fetch() -> None:
    """Resolve the Kafka and Cassandra jars from Maven Central into the cache (once)."""
    from broker.services import manager  # noqa: PLC0415

    with console.status("resolving jars with Maven (first time only)"):
        for service in manager.build(get_settings()):
            service.fetch()
    out.print("jars are in " + str(get_settings().cache_dir / "jars"), highlight=False)


@app.command("down")
@clean_errors
def services_down() -> None:
    """Stop every service process that `services up` started, by pid."""
    from broker.services import manager  # noqa: PLC0415

    stopped = manager.down(get_settings())
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command("status")
@clean_errors
def services_status() -> None:
    """One line per service: name, state, address."""
    from broker.services import manager  # noqa: PLC0415

    statuses = manager.status(get_settings())
    _print_status(statuses)
    if any(s.state != "running" for s in statuses):
        raise typer.Exit(3)


def _print_status(statuses: list[Any]) -> None:
    if not sys.stdout.isatty():
        for s in statuses:
            out.print(f"{s.name} {s.state} {s.address}", highlight=False)
        return
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("service", "state", "address", "pid", "log"):
        table.add_column(column)
    for s in statuses:
        colour = "green" if s.state == "running" else "red"
        table.add_row(s.name, f"[{colour}]{s.state}[/{colour}]", s.address,
                      str(s.pid or "-"), s.log)
    out.print(table)
