"""Lanner's shared layers: domain, storage, streaming, queries, configuration and the CLI."""

from importlib import metadata


def lanner_version() -> str:
    """The installed version of Lanner ("unknown" when run from a source tree)."""
    try:
        return metadata.version("lanner")
    except metadata.PackageNotFoundError:
        return "unknown"
