"""What every command group of ``lanner`` shares: the consoles, clean errors, signals, ports.

Errors end in one clear line on stderr and a non-zero exit code, never a traceback: 1 for
Lanner's own errors (`broker.exceptions.LannerError`), 2 for an unexpected one (its traceback
goes to the debug log), 130 for Ctrl-C.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
import typer
from rich.console import Console

from broker.exceptions import LannerError

__all__ = ["check_port", "clean_errors", "console", "out", "stop_on_signals"]

#: Progress, status and errors: stderr, so that stdout carries only results.
console = Console(stderr=True)
#: Results.
out = Console(soft_wrap=True)

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


def stop_on_signals() -> Any:
    """An event set by SIGTERM or SIGINT, installed before anything slow starts.

    A stage takes it as its stop flag: it finishes (or abandons, uncommitted) the batch in hand
    and returns. Installed first, so a signal during start-up also ends the process cleanly.
    """
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    return stopping


def check_port(host: str, port: int) -> None:
    """Fail with one clear line if the port is taken."""
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise LannerError(f"cannot listen on {host}:{port}: {reason}") from None

