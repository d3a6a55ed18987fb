"""``/api/v1/me``, ``/api/v1/users`` and ``/api/v1/tokens``: accounts and their tokens.

A user manages their own tokens; an admin makes users and may issue, list and revoke anyone's
tokens. A token's text is in the answer that issues it and nowhere else, ever. Another user's
token answers 404, as an unknown one does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, Field

from api.auth import Admin, Authenticated
from api.dependencies import LazyStores, get_stores
from api.errors import UNAVAILABLE
from api.models import ErrorOut
from broker.domain.accounts import LIMITS, Tier, TierLimits
from broker.exceptions import NotFoundError
from broker.storage.accounts import TokenInfo, User

router = APIRouter(prefix="/api/v1", tags=["accounts"])
Stores = Annotated[LazyStores, Depends(get_stores)]

_Responses = dict[int | str, dict[str, Any]]
_AUTH: _Responses = {
    401: {"model": ErrorOut, "description": "No token, or a token that is not accepted."}}
_ADMIN: _Responses = {
    **_AUTH, 403: {"model": ErrorOut, "description": "The caller is not an admin."}}
_MISSING: _Responses = {
    404: {"model": ErrorOut, "description": "No such user or token (or not yours)."}}
_TAKEN: _Responses = {409: {"model": ErrorOut, "description": "The user name is taken."}}


class LimitsOut(BaseModel):
    """What a tier allows."""

    requests_per_hour: int = Field(description="Requests per clock hour (UTC); then 429.")
    max_rows: int = Field(description="Most rows one answer may hold.")
    max_upload_bytes: int = Field(description="Largest upload body, bytes; larger is 413.")
    max_watchlist_rows: int = Field(description="Most cones one watchlist may hold.")

    @classmethod
    def of(cls, limits: TierLimits) -> LimitsOut:
        return cls(requests_per_hour=limits.requests_per_hour, max_rows=limits.max_rows,
                   max_upload_bytes=limits.max_upload_bytes,
                   max_watchlist_rows=limits.max_watchlist_rows)


class UserOut(BaseModel):
    """An account."""

    name: str = Field(description="User name.")
    tier: Tier = Field(description="user, power or admin.")
    created_at: datetime = Field(description="When the user was made (UTC).")
    disabled: bool = Field(description="True when its tokens are refused.")
    limits: LimitsOut = Field(description="What its tier allows.")

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(name=user.name, tier=user.tier, created_at=user.created_at,
                   disabled=user.disabled, limits=LimitsOut.of(LIMITS[user.tier]))


class UserIn(BaseModel):
    """A user to make."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$",
                      description="A lower-case letter then up to 31 lower-case letters, digits "
                                  "or underscores.")
    tier: Tier = Field(Tier.user, description="user (default), power or admin.")


class TokenOut(BaseModel):
    """A token as listed: never its text."""

    token_id: str = Field(description="The token's public id (its text is lnr_<id>_<secret>).")
    user: str = Field(description="The user it acts for.")
    label: str | None = Field(description="What it is for.")
    created_at: datetime = Field(description="When it was issued (UTC).")
    revoked_at: datetime | None = Field(description="When it was revoked; null while valid.")
    role: str | None = Field(None, description="annotator: it may post annotations of objects.")

    @classmethod
    def of(cls, info: TokenInfo) -> TokenOut:
        return cls(token_id=info.token_id, user=info.user_name, label=info.label,
                   created_at=info.created_at, revoked_at=info.revoked_at, role=info.role)


class NewTokenOut(TokenOut):
    """A token just issued, with its text: shown this once, kept nowhere."""

    token: str = Field(description="The token: send it as 'Authorization: Bearer <token>'. "
                                   "Only a hash of it is kept, so it cannot be shown again.")


class TokenIn(BaseModel):
    """A token to issue."""

    label: str | None = Field(None, max_length=64, description="What it is for.")
    user: str | None = Field(None, description="Whose token (admins only; default: yours).")
    role: Literal["annotator"] | None = Field(
        None, description="annotator (admins only): the token may post annotations of objects.")


@router.get("/me", response_model=UserOut, summary="The caller's account",
            responses={**_AUTH, **UNAVAILABLE})
def me(caller: Authenticated) -> UserOut:
    assert caller.user is not None
    return UserOut.of(caller.user)


@router.post("/users", response_model=UserOut, status_code=201, summary="Make a user (admin)",
             responses={**_ADMIN, **_TAKEN, **UNAVAILABLE})
def add_user(body: UserIn, _: Admin, stores: Stores) -> UserOut:
    return UserOut.of(stores.accounts.add_user(body.name, body.tier.value))


@router.get("/users", response_model=list[UserOut], summary="Every user (admin)",
            responses={**_ADMIN, **UNAVAILABLE})
def list_users(_: Admin, stores: Stores) -> list[UserOut]:
    return [UserOut.of(user) for user in stores.accounts.list_users()]


@router.post("/tokens", response_model=NewTokenOut, status_code=201, summary="Issue a token",
             description="A new token for the caller, or (admins) for the user named. The "
                         "answer holds the token's text, which is never shown again.",
             responses={**_AUTH, **_MISSING, **UNAVAILABLE})
def issue_token(body: TokenIn, caller: Authenticated, stores: Stores,
                response: Response) -> NewTokenOut:
    owner = _owner(caller, body.user)
    if body.role is not None and not caller.is_admin:
        raise HTTPException(status_code=403, detail="only an admin gives a token a role")
    token, info = stores.accounts.issue_token(owner, body.label, role=body.role)
    response.headers["Cache-Control"] = "no-store"
    return NewTokenOut(**TokenOut.of(info).model_dump(), token=token.text)


@router.get("/tokens", response_model=list[TokenOut], summary="List tokens",
            description="The caller's tokens, revoked ones included (admins: `user=` names "
                        "whose).",
            responses={**_AUTH, **_MISSING, **UNAVAILABLE})
def list_tokens(caller: Authenticated, stores: Stores,
                user: Annotated[str | None, Query(max_length=32)] = None) -> list[TokenOut]:
    owner = _owner(caller, user)
    return [TokenOut.of(info) for info in stores.accounts.tokens(owner)]


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a token",
               responses={**_AUTH, **_MISSING, **UNAVAILABLE})
def revoke_token(token_id: str, caller: Authenticated, stores: Stores) -> Response:
    try:
        info = stores.accounts.token(token_id)
    except NotFoundError:
        info = None
    if info is None or (info.user_name != caller.name and not caller.is_admin):
        raise HTTPException(status_code=404, detail=f"no token {token_id}")
    stores.accounts.revoke(token_id)
    return Response(status_code=204)


def _owner(caller: Authenticated, named: str | None) -> str:
    """Whose tokens a request is about: the caller's, or for an admin the user named (404 for
    anyone else naming another user, as for a user that does not exist)."""
    assert caller.name is not None
    if named is None or named == caller.name:
        return caller.name
    if not caller.is_admin:
        raise HTTPException(status_code=404, detail=f"no user {named}")
    return named
