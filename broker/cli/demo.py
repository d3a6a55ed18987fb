"""``lanner demo``: the command over `broker.demo`, with progress bars and the API served after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from broker.cli.common import check_port, clean_errors, console, out
from broker.config import get_settings


@clean_errors
def demo(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Alerts to simulate.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated stream.")] = 2026,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535,
                                      help="Port of the API.")] = 8000,
    serve_api: Annotated[bool, typer.Option(
        "--serve/--no-serve", help="Serve the API when the archive is ready.")] = True,
) -> None:
    """A first look with no servers: simulated and real ZTF alerts, ingested and served.

    Runs the real ingest stage over the embedded backend (an in-process queue and one SQLite
    file under the state folder): simulated Rubin packets and the bundled real ZTF packets are
    queued, archived with a progress bar, and served on http://127.0.0.1:PORT.
    """
    from broker import demo as demo_run  # noqa: PLC0415 - keeps `lanner --help` fast
    from broker.factory import Factory  # noqa: PLC0415
    from consumers import enrich, filters, ingest  # noqa: PLC0415

    if serve_api:
        check_port("127.0.0.1", port)
    factory = Factory(demo_run.embedded_settings(get_settings()))
    try:
        report = demo_run.run(factory, build_ingest=ingest.build, count=count, seed=seed,
                              progress=_Bars(), build_enrich=enrich.build,
                              build_filters=filters.build)
        base = f"http://127.0.0.1:{port}"
        out.print("\n" + report.summary(), highlight=False)
        out.print("\nworth opening:", highlight=False)
        for line in report.urls(base):
            out.print(f"  {line}", highlight=False)
        if serve_api:
            import uvicorn  # noqa: PLC0415

            from api.app import create_app  # noqa: PLC0415

            out.print(f"\nserving on {base} (Ctrl-C stops)", highlight=False)
            uvicorn.run(create_app(factory), host="127.0.0.1", port=port, log_level="warning")
    finally:
        factory.close()


class _Bars:
    """`broker.demo.Progress` as rich progress bars (a spinner for an indivisible step)."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        from rich.progress import Progress  # noqa: PLC0415

        if total is None:
            with console.status(description):
                yield lambda _: None
            return
        with Progress(console=console) as progress:
            task = progress.add_task(description, total=total)
            yield lambda done: progress.advance(task, done)
