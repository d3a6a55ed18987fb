"""The ``lanner`` command: one module per command group, each command a thin call into broker/.

- `broker.cli.services`: ``lanner services up|fetch|down|status`` (the local real services).
- `broker.cli.catalog`: ``lanner catalog load|list|drop|purge-tombstones``.
- `broker.cli.alerts`: ``lanner simulate`` and ``lanner replay`` (alerts onto a topic).
- `broker.cli.stages`: ``lanner ingest``, ``lanner dr-updates`` and ``lanner run``.
- `broker.cli.serve`: ``lanner serve`` (the HTTP API).
- `broker.cli.demo`: ``lanner demo`` (over `broker.demo`).
- `broker.cli.common`: the consoles, clean errors, signal handling, port checks.

Errors end in one clear line on stderr and a non-zero exit code, never a traceback
(`broker.cli.common.clean_errors`). Commands import what they run inside their bodies, so
``lanner --help`` stays fast.
"""

from __future__ import annotations

import typer

from broker.cli import accounts, alerts, catalog, demo, serve, services, stages
from broker.config import get_settings
from broker.logs import configure_logging

__all__ = ["app"]

app = typer.Typer(help="Lanner: an alert-stream broker with a sharded catalog archive.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def main() -> None:
    """Configure logging once for every command."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


app.add_typer(services.app, name="services")
app.add_typer(catalog.app, name="catalog")
app.add_typer(accounts.users, name="users")
app.add_typer(accounts.tokens, name="tokens")
app.add_typer(accounts.jobs, name="jobs")
app.command()(alerts.simulate)
app.command()(alerts.replay)
app.command()(stages.ingest)
app.command("dr-updates")(stages.dr_updates)
app.command()(stages.enrich)
app.command()(stages.filters)
app.command()(stages.run)
app.command()(serve.serve)
app.command()(demo.demo)
