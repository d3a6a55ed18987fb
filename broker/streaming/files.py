"""Alert packets as a folder of files, one Confluent wire-format message per file.

Layout: ``<folder>/<diaSourceId>.avro``. Each file holds exactly the bytes a Kafka message value
carries: the magic byte 0x00, the 4-byte big-endian schema id, then the schemaless Avro body (see
`broker.streaming.wire`). Despite the extension these are *not* Avro container files: read them
with `broker.streaming.wire.decode`, not ``fastavro.reader``. Naming a file after its alert's
``diaSourceId`` makes writing idempotent: a replayed alert overwrites its own file.

Files are written to a temporary name and renamed into place, so a reader watching the folder
never sees half a message. `read_alerts` yields files in ``diaSourceId`` order (numeric stems first,
then any other ``*.avro`` names in lexical order).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["SUFFIX", "alert_path", "read_alerts", "write_alert", "write_alerts"]

#: File name suffix of an alert file.
SUFFIX = ".avro"


def alert_path(folder: Path | str, dia_source_id: int) -> Path:
    """Where the alert of a diaSource lives in a folder."""
    return Path(folder) / f"{dia_source_id}{SUFFIX}"


def write_alert(folder: Path | str, dia_source_id: int, message: bytes) -> Path:
    """Write one wire-format message as ``<diaSourceId>.avro``; create the folder if needed."""
    path = alert_path(folder, dia_source_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(message)
    os.replace(partial, path)
    return path


def write_alerts(folder: Path | str, alerts: Iterable[tuple[int, bytes]]) -> int:
    """Write ``(diaSourceId, message)`` pairs; return how many files were written."""
    written = 0
    for dia_source_id, message in alerts:
        write_alert(folder, dia_source_id, message)
        written += 1
    return written


def _order(path: Path) -> tuple[bool, int, str]:
    stem = path.stem
    return (not stem.isdigit(), int(stem) if stem.isdigit() else 0, path.name)


def read_alerts(folder: Path | str) -> Iterator[tuple[Path, bytes]]:
    """Yield ``(path, message bytes)`` for every alert file of a folder, in diaSourceId order.

    Raises
    ------
    NotADirectoryError
        If ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        msg = f"{root} is not a directory"
        raise NotADirectoryError(msg)
    paths = [p for p in root.glob(f"*{SUFFIX}") if p.is_file() and not p.name.startswith(".")]
    for path in sorted(paths, key=_order):
        yield path, path.read_bytes()
