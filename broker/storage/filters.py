"""Users' filters and their versions, on shard 0 of the catalog's shard set.

A filter's row holds its current text, version and state; every version's text is kept in
``filter_versions`` (written in the same transaction as the row), so an alert a filter passed
can be traced to the text that passed it. Ownership is checked by `OwnedRows`: another user's
private filter does not exist (404). The text is stored as the API checked it
(`broker.domain.filters.compile_filter`); the store itself never interprets it.

States: ``disabled`` (made, not run), ``enabled`` (run on every enriched alert by the filters
stage) and ``suspended`` (stopped by the broker: an overrun, a failure, or a watchlist it names
that went; ``reason`` says which, and its owner enables it again when it is fixed).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.exceptions import ConflictError
from broker.storage import schema
from broker.storage.dialect import column_list, q
from broker.storage.shard0 import OwnedRows, utc

TABLES = ("filters", "filter_versions", "filter_days", "filter_progress")
STATES = ("disabled", "enabled", "suspended")
VISIBILITIES = ("private", "public")
#: What a filter may ask its published records to carry besides its columns: the object's
#: light curve (detections and forced photometry) and the alert's three cutouts.
ATTACHMENTS = ("lightcurve", "cutouts")
_COLUMNS = schema.columns("filters")
_VERSION_COLUMNS = schema.columns("filter_versions")
_DAY_COLUMNS = schema.columns("filter_days")
_PROGRESS_COLUMNS = schema.columns("filter_progress")
#: A filter's name: part of its Kafka topic's name (``filter.<owner>.<name>``), so only what
#: Kafka allows there and no dot (the separator).
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_DESCRIPTION = 1024


@dataclass(frozen=True, slots=True)
class Filter:
    """A filter's row."""

    filter_id: int
    owner: str
    name: str
    description: str
    visibility: str
    text: str
    version: int
    state: str
    reason: str | None
    daily_cap: int
    created_at: datetime
    updated_at: datetime
    webhook_url: str | None = None
    webhook_secret: str | None = None
    email: str | None = None
    #: What its records carry besides its columns (`ATTACHMENTS`).
    attach: frozenset[str] = frozenset()

    @property
    def topic(self) -> str:
        """The Kafka topic its passing alerts are published on."""
        return topic_name(self.owner, self.name)


def topic_name(owner: str, name: str) -> str:
    return f"filter.{owner}.{name}"


def _filter(row: Sequence[Any]) -> Filter:
    v = dict(zip(_COLUMNS, row, strict=True))
    return Filter(int(v["filter_id"]), v["owner"], v["name"], v["description"],
                  v["visibility"], v["text"], int(v["version"]), v["state"], v["reason"],
                  int(v["daily_cap"]), utc(v["created_at"]), utc(v["updated_at"]),
                  v["webhook_url"], v["webhook_secret"], v["email"],
                  frozenset(a for a in (v["attach"] or "").split(",") if a))


def check_attach(attach: Iterable[str]) -> str | None:
    """The stored form of what a filter attaches (None for nothing); `ValueError` for
    anything but `ATTACHMENTS`."""
    chosen = set(attach)
    unknown = chosen - set(ATTACHMENTS)
    if unknown:
        msg = (f"a filter attaches {' or '.join(ATTACHMENTS)}, not "
               f"{', '.join(sorted(map(repr, unknown)))}")
        raise ValueError(msg)
    return ",".join(a for a in ATTACHMENTS if a in chosen) or None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        msg = (f"a filter's name is 1 to 64 lower-case letters, digits, '_' or '-', starting "
               f"with a letter or digit (it names a Kafka topic), not {name!r}")
        raise ValueError(msg)
    return name


def _check(visibility: str | None, description: str | None) -> None:
    if visibility is not None and visibility not in VISIBILITIES:
        msg = f"visibility {visibility!r} is not private or public"
        raise ValueError(msg)
    if description is not None and (len(description) > MAX_DESCRIPTION
                                    or not description.isprintable()):
        msg = f"a description is at most {MAX_DESCRIPTION} printable characters"
        raise ValueError(msg)


class FilterStore(OwnedRows[Filter]):
    """Filters over a shard set (tables on shard 0); `get`, `owned` and `visible` come from
    `OwnedRows`."""

    TABLES = TABLES
    WHAT = "filter"
    TABLE = "filters"
    KEY = "filter_id"
    LISTED = _COLUMNS

    def _make(self, row: Sequence[Any]) -> Filter:
        return _filter(row)

    def enabled(self) -> list[Filter]:
        """Every enabled filter, by id: what the filters stage runs."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_COLUMNS)} FROM filters "
                           "WHERE state = 'enabled' ORDER BY filter_id")
            return list(cursor.fetchall())

        return [_filter(r) for r in self._run(work, write=False)]

    def versions(self) -> dict[int, tuple[int, str, str]]:
        """Every filter's (version, state, time of its last change): what the filters stage
        polls (any change reloads)."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT filter_id, version, state, updated_at FROM filters")
            return list(cursor.fetchall())

        return {int(a): (int(b), c, utc(d).isoformat())
                for a, b, c, d in self._run(work, write=False)}

    def history(self, filter_id: int, caller: str | None) -> list[dict[str, Any]]:
        """Every version of a readable filter's text, oldest first."""
        self.get(filter_id, caller)

        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_VERSION_COLUMNS)} FROM filter_versions "
                           "WHERE filter_id = %s ORDER BY version", [filter_id])
            return list(cursor.fetchall())

        return [{"version": int(r[1]), "text": r[2], "created_at": utc(r[3])}
                for r in self._run(work, write=False)]

    def day_counts(self, day: str, filter_ids: Sequence[int] | None = None
                   ) -> dict[int, tuple[int, int]]:
        """(published, dropped) of filters on a UTC day (YYYY-MM-DD): all, or those named."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT filter_id, published, dropped FROM filter_days WHERE day = %s",
                           [day])
            return list(cursor.fetchall())

        wanted = None if filter_ids is None else set(filter_ids)
        return {int(f): (int(p), int(d)) for f, p, d in self._run(work, write=False)
                if wanted is None or int(f) in wanted}

    def progress(self, parts: Sequence[str]) -> dict[tuple[int, str], int]:
        """The last offset each filter was run on, of these input partitions."""
        if not parts:
            return {}

        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT filter_id, part, last_offset FROM filter_progress WHERE part "
                           f"IN ({', '.join(['%s'] * len(parts))})", list(parts))
            return list(cursor.fetchall())

        return {(int(f), p): int(o) for f, p, o in self._run(work, write=False)}

    def record_batch(self, day: str, counts: dict[int, tuple[int, int]],
                     progress: dict[tuple[int, str], int]) -> None:
        """In one transaction: add (published, dropped) to filters' counts of a UTC day, and
        move their progress on (never back)."""
        rows = [(f, day, p, d, False) for f, (p, d) in sorted(counts.items()) if p or d]
        moved = [(f, part, offset) for (f, part), offset in sorted(progress.items())]
        if not rows and not moved:
            return
        add = self.dialect.upsert("filter_days", _DAY_COLUMNS, ("filter_id", "day"), [
            ("published", f"published + {self.dialect.new('published')}"),
            ("dropped", f"dropped + {self.dialect.new('dropped')}")])
        new = self.dialect.new("last_offset")
        move = self.dialect.upsert(
            "filter_progress", _PROGRESS_COLUMNS, ("filter_id", "part"),
            [("last_offset", f"CASE WHEN {new} > last_offset THEN {new} ELSE last_offset END")])

        def work(cursor: Any) -> None:
            if rows:
                cursor.executemany(add, rows)
            if moved:
                cursor.executemany(move, moved)

        self._run(work)

    # -- writes

    def create(self, owner: str, name: str, text: str, *, description: str = "",
               visibility: str = "private", daily_cap: int,
               attach: Iterable[str] = ()) -> Filter:
        """A new filter, disabled, at version 1; `ConflictError` if the owner has one of that
        name."""
        check_name(name)
        _check(visibility, description)
        attached = check_attach(attach)
        filter_id = secrets.randbits(53) or 1
        now = self._now()

        def work(cursor: Any) -> int:
            cursor.execute("SELECT filter_id FROM filters WHERE owner = %s AND name = %s",
                           [owner, name])
            if cursor.fetchone() is not None:
                msg = f"you have a filter named {name!r} already"
                raise ConflictError(msg)
            cursor.execute(self.dialect.insert_ignore("filters", _COLUMNS),
                           [filter_id, owner, name, description, visibility, text, 1,
                            "disabled", None, daily_cap, now, now, None, None, None, attached])
            if cursor.rowcount != 1:  # the same name, made by a concurrent request
                msg = f"you have a filter named {name!r} already"
                raise ConflictError(msg)
            cursor.execute(self.dialect.insert_ignore("filter_versions", _VERSION_COLUMNS),
                           [filter_id, 1, text, now])
            return filter_id

        return self.get(self._run(work), owner)

    def change(self, filter_id: int, caller: str | None, *, text: str | None = None,
               description: str | None = None, visibility: str | None = None,
               daily_cap: int | None = None, attach: Iterable[str] | None = None) -> Filter:
        """Change a filter of the caller's; a new text is a new version."""
        _check(visibility, description)
        current = self.owned(filter_id, caller)
        attached = check_attach(current.attach if attach is None else attach)
        now = self._now()
        new_text = text is not None and text != current.text
        version = current.version + 1 if new_text else current.version

        def work(cursor: Any) -> None:
            cursor.execute(
                "UPDATE filters SET text = %s, version = %s, description = %s, visibility = %s, "
                "daily_cap = %s, attach = %s, updated_at = %s "
                "WHERE filter_id = %s AND version = %s",
                [text if new_text else current.text, version,
                 current.description if description is None else description,
                 current.visibility if visibility is None else visibility,
                 current.daily_cap if daily_cap is None else daily_cap, attached, now,
                 filter_id, current.version])
            if cursor.rowcount != 1:
                msg = f"filter {filter_id} changed meanwhile: read it again and retry"
                raise ConflictError(msg)
            if new_text:
                cursor.execute(self.dialect.insert_ignore("filter_versions", _VERSION_COLUMNS),
                               [filter_id, version, text, now])

        self._run(work)
        return self.get(filter_id, caller)

    def set_notifications(self, filter_id: int, caller: str, *, webhook_url: str | None,
                          email: str | None) -> Filter:
        """Set (or clear, with None) where a filter of the caller's notifies. A new webhook
        address gets a new signing secret; the answer holds it, for its owner to keep."""
        current = self.owned(filter_id, caller)
        secret = current.webhook_secret
        if webhook_url is None:
            secret = None
        elif webhook_url != current.webhook_url or secret is None:
            secret = secrets.token_hex(32)
        now = self._now()
        self._run(lambda cursor: cursor.execute(
            "UPDATE filters SET webhook_url = %s, webhook_secret = %s, email = %s, "
            "updated_at = %s WHERE filter_id = %s",
            [webhook_url, secret, email, now, filter_id]))
        return self.get(filter_id, caller)

    def digests_due(self, day: str) -> list[tuple[Filter, int, int]]:
        """Filters with an email whose digest of ``day`` is not sent: each with the day's
        (published, dropped)."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(
                f"SELECT {', '.join('f.' + q(c) for c in _COLUMNS)}, d.published, d.dropped FROM "
                "filters f JOIN filter_days d ON d.filter_id = f.filter_id WHERE d.day = %s "
                "AND f.email IS NOT NULL AND (d.digest_sent IS NULL OR NOT d.digest_sent)",
                [day])
            return list(cursor.fetchall())

        n = len(_COLUMNS)
        return [(_filter(r[:n]), int(r[n]), int(r[n + 1]))
                for r in self._run(work, write=False)]

    def claim_digest(self, filter_id: int, day: str) -> bool:
        """Mark a filter's digest of ``day`` sent; True for the one caller that did (several
        filters processes may try)."""
        def work(cursor: Any) -> int:
            cursor.execute("UPDATE filter_days SET digest_sent = %s WHERE filter_id = %s AND "
                           "day = %s AND (digest_sent IS NULL OR NOT digest_sent)",
                           [True, filter_id, day])
            return int(cursor.rowcount)

        return self._run(work) == 1

    def set_state(self, filter_id: int, state: str, reason: str | None = None, *,
                  caller: str | None = None, version: int | None = None) -> bool:
        """Set a filter's state; with ``caller``, only a filter of theirs (`NotFoundError`
        otherwise); with ``version``, only if the filter is still at that version (the stage
        suspends the version it ran, not a newer one its owner just saved). Whether it
        changed."""
        if state not in STATES:
            msg = f"state {state!r} is not one of {', '.join(STATES)}"
            raise ValueError(msg)
        if caller is not None:
            self.owned(filter_id, caller)
        where = "filter_id = %s" + ("" if version is None else " AND version = %s")
        params: list[Any] = [state, None if reason is None else reason[:512], self._now(),
                             filter_id, *([] if version is None else [version])]

        def work(cursor: Any) -> int:
            cursor.execute(f"UPDATE filters SET state = %s, reason = %s, updated_at = %s "
                           f"WHERE {where}", params)
            return int(cursor.rowcount)

        return self._run(work) == 1

    def delete(self, filter_id: int, caller: str | None) -> Filter:
        """Delete a filter of the caller's with its versions; the filter as it was."""
        current = self.owned(filter_id, caller)

        def work(cursor: Any) -> None:
            cursor.execute("DELETE FROM filter_progress WHERE filter_id = %s", [filter_id])
            cursor.execute("DELETE FROM filter_days WHERE filter_id = %s", [filter_id])
            cursor.execute("DELETE FROM filter_versions WHERE filter_id = %s", [filter_id])
            cursor.execute("DELETE FROM filters WHERE filter_id = %s", [filter_id])

        self._run(work)
        return current
