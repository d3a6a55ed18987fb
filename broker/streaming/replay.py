"""Replay a folder of alert files as Kafka messages (the engine of ``lanner replay``).

A folder may mix three kinds of ``*.avro`` files, told apart by their content, not their name:

- **Rubin wire-format files** (the `broker.streaming.files` layout, or any file that does not start
  with the Avro container magic): passed through byte for byte, since they already are message
  values. The key is the alert's ``diaObjectId`` when the message decodes; a message that does
  not decode is still passed through, with no key, so that replaying a folder of malformed
  samples exercises the ingest stage's dead-letter path instead of stopping the replay.
- **ZTF Avro container files** (writer schema ``ztf.alert``): passed through unchanged, since the
  ZTF stream carries one container file per message. Key: the ``objectId``.
- **Rubin Avro container files** (writer schema ``lsst.vMAJOR_MINOR.alert``, like Rubin's
  ``fakeAlert.avro`` samples): each record is re-encoded in the Confluent wire format
  (`broker.streaming.wire.encode`) with schema id ``MAJOR * 100 + MINOR``, the id Rubin's registry
  uses. Key: the ``diaObjectId``.

A container that cannot be read, or whose writer schema is neither of those (or a Rubin version
``lsst-alert-packet`` does not ship), cannot be converted and is passed through unchanged with no
key, for the same reason as an undecodable wire-format file.

Keys are ASCII bytes (``b"ZTF20aabaesm"``, ``b"281323062375219201"``), so one object's alerts land
on one partition as they do from `broker.simulator.AlertSimulator.encoded`. Files are read
folder by folder, sub-folders recursively after a folder's own files, everything in sorted order
(numeric names numerically, as `broker.streaming.files.read_alerts` does); hidden files (such as
the ``.partial`` files of a writer at work) are skipped. A folder is a path or any
``importlib.resources`` traversable, so alert files shipped inside a package replay as they are.
This module imports no Kafka client: the caller passes a ``produce`` function.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

from broker.exceptions import LannerError
from broker.streaming import wire
from broker.streaming.files import SUFFIX
from broker.streaming.ztf import is_container, read_container

__all__ = ["iter_alert_files", "object_key", "replay_folder", "rubin_schema_id"]

_RUBIN_SCHEMA_NAME = re.compile(r"^lsst\.v(\d+)_(\d+)\.alert$")


def rubin_schema_id(schema_name: str) -> int | None:
    """The registry id of a Rubin alert schema full name (``"lsst.v11_1.alert"`` -> 1101)."""
    match = _RUBIN_SCHEMA_NAME.match(schema_name)
    if match is None:
        return None
    return int(match.group(1)) * 100 + int(match.group(2))


def object_key(record: Mapping[str, Any]) -> bytes | None:
    """The Kafka key of a decoded Rubin or ZTF alert record: its object id as ASCII bytes.

    Rubin: ``diaObject.diaObjectId``, else ``diaSource.diaObjectId``, else (a solar-system alert)
    ``diaSource.ssObjectId``; ZTF: ``objectId``. None when the record names no object.
    """
    ztf_id = record.get("objectId")
    if isinstance(ztf_id, str) and ztf_id:
        return ztf_id.encode("ascii", errors="replace")
    dia_object = record.get("diaObject")
    if isinstance(dia_object, Mapping) and dia_object.get("diaObjectId") is not None:
        return str(dia_object["diaObjectId"]).encode("ascii")
    source = record.get("diaSource")
    if isinstance(source, Mapping):
        for name in ("diaObjectId", "ssObjectId"):
            if source.get(name) is not None:
                return str(source[name]).encode("ascii")
    return None


def _order(path: Traversable) -> tuple[bool, int, str]:
    # Same order as files.read_alerts: numeric stems (diaSourceId, candid) numerically first.
    stem = PurePosixPath(path.name).stem
    return (not stem.isdigit(), int(stem) if stem.isdigit() else 0, path.name)


def _walk(folder: Traversable) -> Iterator[Traversable]:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file() and p.name.endswith(SUFFIX)]
    yield from sorted(files, key=_order)
    for sub in sorted((p for p in entries if p.is_dir()), key=lambda p: p.name):
        yield from _walk(sub)


def _messages(data: bytes) -> Iterator[tuple[bytes, bytes | None]]:
    """The ``(value, key)`` messages one file's bytes become."""
    if not is_container(data):
        try:
            _, record = wire.decode(data)
        except LannerError:
            yield data, None
            return
        yield data, object_key(record)
        return
    try:
        writer_schema, records = read_container(data)
    except LannerError:
        yield data, None
        return
    schema_id = rubin_schema_id(str(writer_schema.get("name", "")))
    if schema_id is None:
        # ZTF (or any other survey shipping containers): one container is one message.
        yield data, object_key(records[0]) if len(records) == 1 else None
        return
    try:
        converted = [(wire.encode(record, schema_id), object_key(record)) for record in records]
    except (LannerError, ValueError, TypeError, KeyError, AttributeError):
        # An unshipped version, or a record the shipped schema of that id does not accept.
        yield data, None
        return
    yield from converted


def iter_alert_files(
    folder: Path | str | Traversable,
) -> Iterator[tuple[Traversable, bytes, bytes | None]]:
    """Yield ``(path, value, key)`` for every message the alert files under a folder hold.

    See the module docstring for the kinds of file and their conversion. A Rubin container
    with several records yields several messages with the same path. The paths are of the
    folder's kind: `pathlib.Path` for a path.

    Raises
    ------
    NotADirectoryError
        If ``folder`` is not a directory.
    """
    root = Path(folder) if isinstance(folder, str) else folder
    if not root.is_dir():
        msg = f"{root} is not a directory"
        raise NotADirectoryError(msg)
    for path in _walk(root):
        for value, key in _messages(path.read_bytes()):
            yield path, value, key


def replay_folder(
    folder: Path | str | Traversable, produce: Callable[[bytes | None, bytes], None]
) -> int:
    """Call ``produce(key, value)`` for every message under a folder; return how many.

    Raises
    ------
    NotADirectoryError
        If ``folder`` is not a directory.
    """
    count = 0
    for _, value, key in iter_alert_files(folder):
        produce(key, value)
        count += 1
    return count
