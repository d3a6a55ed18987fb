"""Accounts of the API: users, their tiers and limits, and bearer tokens.

No storage here (that is `broker.storage.accounts`), only the rules:

- A user name is a lower-case letter then up to 31 lower-case letters, digits or underscores:
  it names the user's Kafka topics later (``filter.<owner>.<name>``), so it must be a plain
  identifier.
- A tier (`Tier`) carries the limits (`TierLimits`) the API enforces on every request: requests
  per clock hour (answered 429 with ``Retry-After`` beyond it), the most rows one answer may
  hold, the largest upload body and the most rows of one watchlist. Anonymous callers, counted
  by address, get `ANONYMOUS` and may only read public things.
- A token is ``lnr_<id>_<secret>``: a 12-hex-digit public id, by which it is found, and a
  256-bit secret (43 URL-safe base64 characters). Only the SHA-256 of the secret is stored. A
  plain hash, not a password hash: the secret is random and as long as a key, so no dictionary
  or brute-force search applies, and a slow hash would only slow every request. Secrets are
  compared in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

#: What every token starts with (so that a leaked one is easy to recognise and to scan for).
TOKEN_PREFIX = "lnr_"  # noqa: S105 (a prefix, not a secret)
_TOKEN = re.compile(r"^lnr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_USER = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Tier(enum.StrEnum):
    """What an account may do; the limits of each are in `LIMITS`."""

    user = "user"
    power = "power"
    admin = "admin"


@dataclass(frozen=True, slots=True)
class TierLimits:
    """The limits of one tier."""

    requests_per_hour: int
    max_rows: int
    max_upload_bytes: int
    max_watchlist_rows: int


#: The limits of each tier. ``user`` is what Lasair gives a registered user (a watchlist of up to
#: 100,000 cones); ``power`` is for a survey team's heavy use; ``admin`` runs the service.
LIMITS: dict[Tier, TierLimits] = {
    Tier.user: TierLimits(requests_per_hour=3_600, max_rows=10_000,
                          max_upload_bytes=16 * 2**20, max_watchlist_rows=100_000),
    Tier.power: TierLimits(requests_per_hour=36_000, max_rows=100_000,
                           max_upload_bytes=128 * 2**20, max_watchlist_rows=1_000_000),
    Tier.admin: TierLimits(requests_per_hour=360_000, max_rows=1_000_000,
                           max_upload_bytes=128 * 2**20, max_watchlist_rows=1_000_000),
}

#: The limits of a caller without a token, per address: public reads only, no uploads.
ANONYMOUS = TierLimits(requests_per_hour=1_800, max_rows=10_000, max_upload_bytes=0,
                       max_watchlist_rows=0)


class InvalidTokenError(ValueError):
    """A string that is not a Lanner token (the message never repeats it)."""


def check_user_name(name: str) -> str:
    """The name if it is a valid user name; ValueError saying what a name must be otherwise."""
    if not isinstance(name, str) or not _USER.fullmatch(name):
        msg = (f"user name {name!r} is not valid: use a lower-case letter followed by up to 31 "
               "lower-case letters, digits or underscores")
        raise ValueError(msg)
    return name


def check_tier(tier: str) -> Tier:
    """The tier of that name; ValueError naming the tiers otherwise."""
    try:
        return Tier(tier)
    except ValueError:
        msg = f"tier {tier!r} is not one of {', '.join(t.value for t in Tier)}"
        raise ValueError(msg) from None


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token as issued: ``text`` is shown to its owner once and never stored."""

    token_id: str
    secret_sha256: str
    text: str


def new_token() -> NewToken:
    """A fresh token from the operating system's random source."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(token_id, hash_secret(secret), f"{TOKEN_PREFIX}{token_id}_{secret}")


def parse_token(text: str) -> tuple[str, str]:
    """``(token id, secret)`` of a token's text; `InvalidTokenError` if it is not one."""
    match = _TOKEN.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        msg = "not a Lanner token"
        raise InvalidTokenError(msg)
    return match.group(1), match.group(2)


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret: SHA-256, hexadecimal."""
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def secret_matches(secret: str, stored_sha256: str) -> bool:
    """Whether a presented secret is the one whose hash is stored (constant time)."""
    return hmac.compare_digest(hash_secret(secret), stored_sha256)
