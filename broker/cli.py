"""The ``lanner`` command.

Errors end in one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import structlog
import typer
from rich.console import Console
from rich.table import Table

from broker.config import get_settings
from broker.exceptions import LannerError
from broker.logs import configure_logging

app = typer.Typer(help="Lanner: an alert-stream broker with a sharded catalog archive.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
services_app = typer.Typer(help="Run the real services locally (Kafka, Cassandra, MariaDB shards).",
                           no_args_is_help=True)
app.add_typer(services_app, name="services")

console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """Turn Lanner's own errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except LannerError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            # An unexpected failure still ends in one line; the traceback goes to the debug log.
            structlog.get_logger(__name__).debug("unexpected error", exc_info=True)
            console.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc}",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main() -> None:
    """Configure logging once for every command."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


ShardsOption = Annotated[
    int | None, typer.Option("--shards", min=1, max=16, help="Number of MariaDB shard servers.")
]


@services_app.command("up")
@clean_errors
def services_up(shards: ShardsOption = None) -> None:
    """Fetch (first time) and start Kafka, Cassandra and the MariaDB shards; wait until ready."""
    from broker.services import manager  # noqa: PLC0415 - keeps `lanner --help` fast

    def report(name: str, message: str) -> None:
        console.print(f"  {name:<12} {message}", highlight=False)

    with console.status("starting services (the first run downloads the jars)"):
        statuses = manager.up(get_settings(), shards, report)
    _print_status(statuses)


@services_app.command("fetch")
@clean_errors
def services_fetch() -> None:
    """Resolve the Kafka and Cassandra jars from Maven Central into the cache (once)."""
    from broker.services import manager  # noqa: PLC0415

    with console.status("resolving jars with Maven (first time only)"):
        for service in manager.build(get_settings()):
            service.fetch()
    out.print("jars are in " + str(get_settings().cache_dir / "jars"), highlight=False)


@services_app.command("down")
@clean_errors
def services_down() -> None:
    """Stop every service process that `services up` started, by pid."""
    from broker.services import manager  # noqa: PLC0415

    stopped = manager.down(get_settings())
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@services_app.command("status")
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
        table.add_row(s.name, f"[{colour}]{s.state}[/{colour}]", s.address, str(s.pid or "-"), s.log)
    out.print(table)


if __name__ == "__main__":
    app()
