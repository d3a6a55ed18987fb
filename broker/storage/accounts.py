"""Users, tokens and request counts, on shard 0 of the catalog's shard set.

The tables (``users``, ``tokens``, ``request_counts``) are small and read on every request, so
they live on shard 0 (`broker.storage.shard0`). The rules (names, tiers, token format,
hashing) are in `broker.domain.accounts`; this module only stores and finds.

Counting requests: one upsert and one read of ``(subject, hour)`` per request, in one
transaction, so that every API worker process counts into the same row; rows of hours before
the previous one are deleted when a new hour's first row is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from broker.domain.accounts import (
    NewToken,
    Tier,
    check_tier,
    check_user_name,
    new_token,
    parse_token,
    secret_matches,
)
from broker.exceptions import ConflictError, NotFoundError
from broker.storage import schema
from broker.storage.dialect import column_list, q
from broker.storage.shard0 import Shard0Tables, utc
from broker.storage.shards import ShardSet

T = TypeVar("T")

TABLES = ("users", "tokens", "request_counts")
_USER_COLUMNS = schema.columns("users")
_TOKEN_COLUMNS = schema.columns("tokens")
#: What a token may be given, beyond acting for its user: ``annotator`` posts classifications
#: of objects (`broker.storage.annotations`).
ROLES = ("annotator",)


@dataclass(frozen=True, slots=True)
class User:
    """An account."""

    name: str
    tier: Tier
    created_at: datetime
    disabled: bool = False
    #: The role of the token it authenticated with (`AccountStore.authenticate` only).
    role: str | None = None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is kept of a token, never its secret."""

    token_id: str
    user_name: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    role: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class AccountStore(Shard0Tables):
    """The accounts of the API over a shard set (tables on shard 0)."""

    TABLES = TABLES

    def __init__(self, shards: ShardSet, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(shards, clock=clock)
        self._last_purged_hour = -1

    # -- users

    def add_user(self, name: str, tier: str = Tier.user.value) -> User:
        """Make a user; `ConflictError` if the name is taken, ValueError for a bad name or
        tier."""
        check_user_name(name)
        level = check_tier(tier)
        now = self.clock()

        def work(cursor: Any) -> int:
            cursor.execute(self.dialect.insert_ignore("users", _USER_COLUMNS),
                           [name, level.value, self.dialect.time_value(now), False])
            return int(cursor.rowcount)

        if self._run(work) == 0:
            msg = f"user {name} exists already"
            raise ConflictError(msg)
        return User(name, level, now)

    def get_user(self, name: str) -> User:
        """A user by name; `NotFoundError` if there is none."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute(f"SELECT {column_list(_USER_COLUMNS)} FROM users WHERE name = %s",
                           [name])
            return cursor.fetchone()

        row = self._run(work, write=False)
        if row is None:
            msg = f"no user {name}"
            raise NotFoundError(msg)
        return User(row[0], Tier(row[1]), utc(row[2]), bool(row[3]))

    def list_users(self) -> list[User]:
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(f"SELECT {column_list(_USER_COLUMNS)} FROM users ORDER BY name")
            return list(cursor.fetchall())

        return [User(r[0], Tier(r[1]), utc(r[2]), bool(r[3]))
                for r in self._run(work, write=False)]

    def set_tier(self, name: str, tier: str) -> User:
        level = check_tier(tier)

        def work(cursor: Any) -> int:
            cursor.execute("UPDATE users SET tier = %s WHERE name = %s", [level.value, name])
            return int(cursor.rowcount)

        self.get_user(name)
        self._run(work)
        return self.get_user(name)

    def set_disabled(self, name: str, disabled: bool) -> User:
        self.get_user(name)
        self._run(lambda cursor: cursor.execute(
            "UPDATE users SET disabled = %s WHERE name = %s", [disabled, name]))
        return self.get_user(name)

    # -- tokens

    def issue_token(self, user_name: str, label: str | None = None, *,
                    role: str | None = None) -> tuple[NewToken, TokenInfo]:
        """A new token for an existing user: its text (to show once) and what is kept. A
        ``role`` (`ROLES`) lets the token do more; who may give one is the caller's to check."""
        self.get_user(user_name)
        if label is not None and len(label) > 64:
            msg = f"a token label is at most 64 characters, not {len(label)}"
            raise ValueError(msg)
        if role is not None and role not in ROLES:
            msg = f"a token's role is one of {', '.join(ROLES)}, not {role!r}"
            raise ValueError(msg)
        token = new_token()
        now = self.clock()
        self._run(lambda cursor: cursor.execute(
            f"INSERT INTO tokens ({column_list(_TOKEN_COLUMNS)}) VALUES "
            f"({', '.join(['%s'] * len(_TOKEN_COLUMNS))})",
            [token.token_id, user_name, token.secret_sha256, label,
             self.dialect.time_value(now), None, role]))
        return token, TokenInfo(token.token_id, user_name, label, now, None, role)

    def tokens(self, user_name: str) -> list[TokenInfo]:
        """A user's tokens, revoked ones included, oldest first."""
        def work(cursor: Any) -> list[tuple]:
            cursor.execute("SELECT token_id, user_name, label, created_at, revoked_at, role "
                           "FROM tokens WHERE user_name = %s ORDER BY created_at, token_id",
                           [user_name])
            return list(cursor.fetchall())

        return [_token_info(r) for r in self._run(work, write=False)]

    def token(self, token_id: str) -> TokenInfo:
        """One token by id; `NotFoundError` if there is none."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute("SELECT token_id, user_name, label, created_at, revoked_at, role "
                           "FROM tokens WHERE token_id = %s", [token_id])
            return cursor.fetchone()

        row = self._run(work, write=False)
        if row is None:
            msg = f"no token {token_id}"
            raise NotFoundError(msg)
        return _token_info(row)

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token (again is a no-op); `NotFoundError` if there is none."""
        self.token(token_id)
        self._run(lambda cursor: cursor.execute(
            "UPDATE tokens SET revoked_at = %s WHERE token_id = %s AND revoked_at IS NULL",
            [self._now(), token_id]))
        return self.token(token_id)

    def authenticate(self, text: str) -> User | None:
        """The user a token's text acts for, or None for a malformed, unknown or revoked token
        or a disabled user (the caller answers each the same way)."""
        try:
            token_id, secret = parse_token(text)
        except ValueError:
            return None

        def work(cursor: Any) -> tuple | None:
            cursor.execute(
                "SELECT t.secret_sha256, t.revoked_at, u.name, u.tier, u.created_at, "
                "u.disabled, t.role FROM tokens t JOIN users u ON u.name = t.user_name "
                "WHERE t.token_id = %s", [token_id])
            return cursor.fetchone()

        row = self._run(work, write=False)
        if row is None or row[1] is not None or bool(row[5]):
            return None
        if not secret_matches(secret, row[0]):
            return None
        return User(row[2], Tier(row[3]), utc(row[4]), False, row[6])

    # -- request counting

    def count_request(self, subject: str, hour: int) -> int:
        """Count one request of ``subject`` in clock hour ``hour``; the count so far."""
        upsert = self.dialect.upsert("request_counts", ("subject", "hour", "requests"),
                                     ("subject", "hour"),
                                     [("requests", f"{q('requests')} + 1")])
        purge = hour != self._last_purged_hour

        def work(cursor: Any) -> int:
            cursor.execute(upsert, [subject, hour, 1])
            cursor.execute("SELECT requests FROM request_counts WHERE subject = %s AND "
                           "hour = %s", [subject, hour])
            count = int(cursor.fetchone()[0])
            if purge:
                cursor.execute("DELETE FROM request_counts WHERE hour < %s", [hour - 1])
            return count

        count = self._run(work)
        self._last_purged_hour = hour
        return count


def _token_info(row: tuple) -> TokenInfo:
    return TokenInfo(row[0], row[1], row[2], utc(row[3]),
                     None if row[4] is None else utc(row[4]), row[5])
