"""Who is calling, and whether they may: bearer tokens and the tiers' hourly limits.

`get_caller` runs for every route (it is an app-wide dependency; FastAPI gives a route that asks
for it the same result, so a request is counted once):

- No ``Authorization`` header: an anonymous caller, counted by address, with `ANONYMOUS`
  limits. Public reads (cone search, objects, SCS) stay open to it.
- ``Authorization: Bearer lnr_...``: the token's user, with its tier's limits. A malformed,
  unknown or revoked token, a disabled user or any other scheme is answered 401 with the same
  message and a ``WWW-Authenticate: Bearer`` header: the answer never tells which it was. Tokens
  are read from the header only (never from the query string, which access logs record), and no
  log line of the API holds one.
- Every request counts against the caller's limit for the current clock hour; past it, 429 with
  ``Retry-After`` (seconds to the next hour). When shard 0 (which holds the accounts) does not
  answer, a token cannot be checked (503), but an anonymous read goes on, uncounted: the other
  shards may well answer it.

Routes that need a user take `Authenticated`; those for admins only, `Admin`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException, Request

from api.dependencies import LazyStores, get_stores
from broker.domain.accounts import ANONYMOUS, LIMITS, Tier, TierLimits
from broker.exceptions import TransientError
from broker.storage.accounts import User

log = structlog.get_logger("api")

#: The one answer to every token that is not accepted.
INVALID_TOKEN = "invalid or expired token"  # noqa: S105 (a message, not a secret)


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one request: a user, or an anonymous address."""

    user: User | None
    address: str
    limits: TierLimits

    @property
    def subject(self) -> str:
        """What the request counts are kept under."""
        return f"user:{self.user.name}" if self.user else f"anon:{self.address}"

    @property
    def name(self) -> str | None:
        return self.user.name if self.user else None

    @property
    def is_admin(self) -> bool:
        return self.user is not None and self.user.tier is Tier.admin


def _unauthorized() -> HTTPException:
    return HTTPException(status_code=401, detail=INVALID_TOKEN,
                         headers={"WWW-Authenticate": "Bearer"})


def get_caller(request: Request,
               stores: Annotated[LazyStores, Depends(get_stores)]) -> Caller:
    """The caller, authenticated and counted (401 or 429 as the module says).

    A plain ``def``: it reads and writes shard 0, so FastAPI runs it in the thread pool rather
    than on the event loop."""
    cached: Caller | None = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    address = request.client.host if request.client else "unknown"
    header = request.headers.get("authorization")
    user: User | None = None
    if header is not None:
        scheme, _, text = header.partition(" ")
        if scheme.lower() != "bearer" or not text.strip():
            raise _unauthorized()
        user = stores.accounts.authenticate(text.strip())
        if user is None:
            raise _unauthorized()
    caller = Caller(user, address, LIMITS[user.tier] if user else ANONYMOUS)
    now = time.time()
    hour = int(now // 3600)
    try:
        count = stores.accounts.count_request(caller.subject, hour)
    except TransientError as exc:
        # Shard 0 does not answer: a public read of the other shards goes on uncounted rather
        # than fail too (a token could not have been checked: that answered 503 above).
        log.warning("request not counted: the accounts shard does not answer",
                    error=str(exc), subject_kind="user" if user else "anonymous")
        count = 0
    if count > caller.limits.requests_per_hour:
        retry = max(1, math.ceil((hour + 1) * 3600 - now))
        who = f"user {caller.name}" if caller.user else f"address {address}"
        raise HTTPException(
            status_code=429, headers={"Retry-After": str(retry)},
            detail=f"{who} has made {caller.limits.requests_per_hour} requests this hour, "
                   f"its tier's limit; try again in {retry} s")
    request.state.caller = caller
    return caller


async def get_user(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    """The caller, who must have given a token (401 otherwise)."""
    if caller.user is None:
        raise HTTPException(status_code=401, detail="this needs a token: send "
                            "'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return caller


async def get_admin(caller: Annotated[Caller, Depends(get_user)]) -> Caller:
    """The caller, who must be an admin (403 otherwise)."""
    if not caller.is_admin:
        raise HTTPException(status_code=403, detail="this needs an admin's token")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]
Authenticated = Annotated[Caller, Depends(get_user)]
Admin = Annotated[Caller, Depends(get_admin)]
