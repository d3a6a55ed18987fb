"""Accounts over the API on each backend: tokens, tiers, the hourly limits and what the logs
never hold."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from broker.domain.accounts import ANONYMOUS, LIMITS, Tier, parse_token


@pytest.fixture
def api(harness, tmp_path) -> Iterator[tuple[TestClient, Any]]:
    """A client of a fresh app, and its account store (with one admin made as an operator
    would, from the command line's store)."""
    factory = harness.factory(tmp_path)
    accounts = factory.accounts
    accounts.add_user("root", "admin")
    with TestClient(create_app(factory)) as client:
        yield client, accounts


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(accounts: Any, user: str) -> str:
    token, _ = accounts.issue_token(user)
    return str(token.text)


def test_public_reads_need_no_token_and_accounts_need_one(api) -> None:
    client, _ = api
    assert client.get("/api/v1/status").status_code == 200
    assert client.get("/api/v1/cone?ra=10&dec=10&radius=10").status_code == 200
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "needs a token" in response.json()["detail"]
    assert client.post("/api/v1/tokens", json={}).status_code == 401


def test_admin_makes_users_who_manage_their_own_tokens(api) -> None:
    client, accounts = api
    root = _bearer(_token(accounts, "root"))
    made = client.post("/api/v1/users", json={"name": "alice", "tier": "power"}, headers=root)
    assert made.status_code == 201, made.text
    assert made.json()["limits"]["requests_per_hour"] == LIMITS[Tier.power].requests_per_hour
    assert client.post("/api/v1/users", json={"name": "alice"}, headers=root).status_code == 409
    bad = client.post("/api/v1/users", json={"name": "Alice!"}, headers=root)
    assert bad.status_code == 422
    assert "name" in bad.json()["detail"]
    assert client.post("/api/v1/users", json={"name": "bob"}, headers=root).status_code == 201
    assert [u["name"] for u in client.get("/api/v1/users", headers=root).json()] == [
        "alice", "bob", "root"]

    # Alice's first token comes from the admin; then she issues her own.
    first = client.post("/api/v1/tokens", json={"user": "alice", "label": "from root"},
                        headers=root)
    assert first.status_code == 201
    assert first.headers["cache-control"] == "no-store"
    alice = _bearer(first.json()["token"])
    assert client.get("/api/v1/me", headers=alice).json()["name"] == "alice"
    issued = client.post("/api/v1/tokens", json={"label": "laptop"}, headers=alice).json()
    assert issued["user"] == "alice"
    listed = client.get("/api/v1/tokens", headers=alice).json()
    assert [t["label"] for t in listed] == ["from root", "laptop"]
    assert all("token" not in t for t in listed)  # never shown again
    # A non-admin makes no user and sees no one else's tokens (404, as for no such user).
    assert client.post("/api/v1/users", json={"name": "eve"}, headers=alice).status_code == 403
    assert client.get("/api/v1/users", headers=alice).status_code == 403
    assert client.get("/api/v1/tokens?user=bob", headers=alice).status_code == 404
    assert client.post("/api/v1/tokens", json={"user": "bob"}, headers=alice).status_code == 404
    bob_token = _token(accounts, "bob")
    bob_id = bob_token.split("_")[1]
    assert client.delete(f"/api/v1/tokens/{bob_id}", headers=alice).status_code == 404
    assert client.get("/api/v1/me", headers=_bearer(bob_token)).status_code == 200
    # Revoking her own: refused from the next request on.
    assert client.delete(f"/api/v1/tokens/{issued['token_id']}", headers=alice).status_code == 204
    refused = client.get("/api/v1/me", headers=_bearer(issued["token"]))
    assert refused.status_code == 401
    # The admin may revoke anyone's.
    assert client.delete(f"/api/v1/tokens/{bob_id}", headers=root).status_code == 204
    assert client.get("/api/v1/me", headers=_bearer(bob_token)).status_code == 401


@pytest.mark.parametrize("header", [
    "Bearer lnr_0123456789ab_" + "A" * 43,  # well formed, unknown
    "Bearer not-a-token", "Bearer ", "Basic YWxpY2U6c2VjcmV0", "lnr_0123456789ab_" + "A" * 43,
    "Bearer lnr_0123456789ab_" + "A" * 43 + " extra",
])
def test_every_refused_token_gets_the_same_answer(api, header: str) -> None:
    client, accounts = api
    revoked = _token(accounts, "root")
    accounts.revoke(revoked.split("_")[1])
    answers = {client.get("/api/v1/cone?ra=1&dec=1&radius=1",
                          headers={"Authorization": h}).text
               for h in (header, f"Bearer {revoked}")}
    assert answers == {'{"detail":"invalid or expired token"}'}


def test_the_hourly_limit_answers_429_with_retry_after(api) -> None:
    client, accounts = api
    token = _token(accounts, "root")
    accounts.add_user("carol")
    carol = _token(accounts, "carol")
    hour = int(time.time() // 3600)
    limit = LIMITS[Tier.user].requests_per_hour
    # As if carol had already made all but one of her requests this hour.
    accounts.count_request("user:carol", hour)
    accounts.shards.run(0, lambda cursor: cursor.execute(
        "UPDATE request_counts SET requests = %s WHERE subject = %s AND hour = %s",
        [limit - 1, "user:carol", hour]))
    assert client.get("/api/v1/me", headers=_bearer(carol)).status_code == 200
    refused = client.get("/api/v1/status", headers=_bearer(carol))
    if int(time.time() // 3600) != hour:  # the clock hour turned between the two requests
        pytest.skip("an hour boundary fell inside the test")
    assert refused.status_code == 429
    assert f"user carol has made {limit} requests this hour" in refused.json()["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    # Others are not affected; anonymous callers are counted by address.
    assert client.get("/api/v1/me", headers=_bearer(token)).status_code == 200
    accounts.count_request("anon:testclient", hour)
    accounts.shards.run(0, lambda cursor: cursor.execute(
        "UPDATE request_counts SET requests = %s WHERE subject = %s AND hour = %s",
        [ANONYMOUS.requests_per_hour, "anon:testclient", hour]))
    anonymous = client.get("/api/v1/cone?ra=1&dec=1&radius=1")
    assert anonymous.status_code == 429
    assert "address testclient" in anonymous.json()["detail"]


def test_no_log_line_holds_a_token(api, caplog: pytest.LogCaptureFixture,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    client, accounts = api
    caplog.set_level(logging.DEBUG)
    good = _token(accounts, "root")
    revoked = _token(accounts, "root")
    accounts.revoke(revoked.split("_")[1])
    wrong = good[:-4] + "AAAA"
    issued = client.post("/api/v1/tokens", json={"label": "x"}, headers=_bearer(good)).json()
    for token in (good, revoked, wrong, issued["token"]):
        for path in ("/api/v1/me", "/api/v1/objects/none", "/api/v1/cone?ra=1&dec=1&radius=1",
                     "/api/v1/cone?ra=1&dec=100&radius=1", "/api/v1/tokens"):
            client.get(path, headers=_bearer(token))
    client.delete(f"/api/v1/tokens/{issued['token_id']}", headers=_bearer(good))
    logged = caplog.text + "".join(capsys.readouterr())
    assert logged  # something was logged, or this test checks nothing
    for token in (good, revoked, wrong, issued["token"]):
        assert token not in logged
        assert parse_token(token)[1] not in logged  # nor its secret alone


def test_with_the_accounts_shard_down_tokens_are_503_and_anonymous_reads_go_on(
        harness, tmp_path) -> None:
    from broker.exceptions import ServiceUnavailableError

    class Down:
        """An account store whose shard does not answer."""

        def authenticate(self, text: str) -> None:
            raise ServiceUnavailableError("MariaDB shard 0 (127.0.0.1:1) does not answer")

        def count_request(self, subject: str, hour: int) -> int:
            return self.authenticate(subject)  # type: ignore[func-returns-value]

    factory = harness.factory(tmp_path)
    factory.__dict__["accounts"] = Down()
    with TestClient(create_app(factory)) as client:
        assert client.get("/api/v1/cone?ra=1&dec=1&radius=1").status_code == 200
        down = client.get("/api/v1/me", headers=_bearer("lnr_0123456789ab_" + "A" * 43))
        assert down.status_code == 503
        assert "shard 0" in down.json()["detail"]
        assert down.headers["retry-after"]
