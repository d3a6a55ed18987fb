"""The account store over each backend: users, tokens (only hashes kept), request counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.domain.accounts import Tier, parse_token
from broker.exceptions import ConflictError, NotFoundError
from broker.storage.accounts import AccountStore
from broker.storage.shards import ShardSet
from tests.storage.conftest import reopen


@pytest.fixture
def accounts(shard_set: ShardSet) -> AccountStore:
    return AccountStore(shard_set)


def test_users_are_made_once_and_listed(accounts: AccountStore) -> None:
    alice = accounts.add_user("alice")
    assert (alice.name, alice.tier, alice.disabled) == ("alice", Tier.user, False)
    accounts.add_user("bob", "power")
    with pytest.raises(ConflictError, match="user alice exists already"):
        accounts.add_user("alice", "admin")
    with pytest.raises(ValueError, match="tier 'root'"):
        accounts.add_user("carol", "root")
    with pytest.raises(ValueError, match="is not valid"):
        accounts.add_user("Carol")
    assert [(u.name, u.tier) for u in accounts.list_users()] == [("alice", Tier.user),
                                                                 ("bob", Tier.power)]
    assert accounts.get_user("alice").tier is Tier.user  # the conflict changed nothing
    assert accounts.set_tier("alice", "admin").tier is Tier.admin
    with pytest.raises(NotFoundError, match="no user carol"):
        accounts.get_user("carol")
    assert abs(accounts.get_user("bob").created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_tokens_authenticate_until_revoked(accounts: AccountStore) -> None:
    accounts.add_user("alice")
    accounts.add_user("bob")
    token, info = accounts.issue_token("alice", "laptop")
    second, _ = accounts.issue_token("alice")
    bobs, _ = accounts.issue_token("bob")
    assert accounts.authenticate(token.text).name == "alice"  # type: ignore[union-attr]
    assert accounts.authenticate(bobs.text).name == "bob"  # type: ignore[union-attr]
    # Only the hash is stored: no column of any row holds the secret.
    secret = parse_token(token.text)[1]
    rows = accounts.shards.run(0, lambda c: (c.execute("SELECT * FROM tokens"),
                                             c.fetchall())[1], write=False)
    assert len(rows) == 3
    assert not any(secret in str(value) for row in rows for value in row)
    # A token with the right id and a wrong secret, or an unknown id, is refused.
    token_id, _ = parse_token(token.text)
    assert accounts.authenticate(f"lnr_{token_id}_{'A' * 43}") is None
    assert accounts.authenticate(f"lnr_{'0' * 12}_{secret}") is None
    assert accounts.authenticate("not a token") is None
    assert [(t.token_id, t.label, t.active) for t in accounts.tokens("alice")] == [
        (info.token_id, "laptop", True), (parse_token(second.text)[0], None, True)]
    revoked = accounts.revoke(info.token_id)
    assert not revoked.active
    assert accounts.authenticate(token.text) is None
    assert accounts.authenticate(second.text).name == "alice"  # type: ignore[union-attr]
    assert accounts.revoke(info.token_id).revoked_at == revoked.revoked_at  # again: no-op
    with pytest.raises(NotFoundError):
        accounts.revoke("0" * 12)
    # Another process sees the same (a second connection to the same files or databases).
    other = AccountStore(reopen(accounts.shards))
    try:
        assert other.authenticate(token.text) is None
        assert other.authenticate(second.text).name == "alice"  # type: ignore[union-attr]
        # A disabled user's tokens are refused.
        other.set_disabled("alice", True)
        assert accounts.authenticate(second.text) is None
    finally:
        other.shards.close()
    with pytest.raises(NotFoundError):
        accounts.issue_token("nobody")


def test_requests_are_counted_per_subject_and_hour(accounts: AccountStore) -> None:
    counts = [accounts.count_request("user:alice", 500_000) for _ in range(5)]
    assert counts == [1, 2, 3, 4, 5]
    assert accounts.count_request("anon:127.0.0.1", 500_000) == 1
    assert accounts.count_request("user:alice", 500_001) == 1
    # Hours before the previous one are purged when a new hour starts.
    accounts.count_request("user:alice", 500_003)
    rows = accounts.shards.run(0, lambda c: (c.execute(
        "SELECT subject, hour FROM request_counts ORDER BY subject, hour"), c.fetchall())[1],
        write=False)
    assert [tuple(r) for r in rows] == [("user:alice", 500_003)]


def test_the_command_line_makes_users_and_tokens(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from broker.cli import app
    from broker.config import get_settings

    monkeypatch.setenv("LANNER_BACKEND", "embedded")
    monkeypatch.setenv("LANNER_STATE_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        made = runner.invoke(app, ["users", "add", "root", "--tier", "admin"])
        assert made.exit_code == 0, made.output
        assert "user root (admin) made" in made.output
        again = runner.invoke(app, ["users", "add", "root"])
        assert (again.exit_code, "user root exists already" in again.output) == (1, True)
        bad = runner.invoke(app, ["users", "add", "Root"])
        assert bad.exit_code == 1
        assert "is not valid" in bad.output
        assert "Traceback" not in bad.output + again.output
        issued = runner.invoke(app, ["tokens", "issue", "root", "--label", "ops"])
        assert issued.exit_code == 0, issued.output
        text = issued.output.strip().splitlines()[-1]
        token_id, _ = parse_token(text)
        listed = runner.invoke(app, ["tokens", "list", "root"]).output
        assert f"{token_id} ops issued" in listed
        assert "active" in listed
        assert text not in listed
        assert runner.invoke(app, ["users", "list"]).output.startswith("root admin since")
        assert runner.invoke(app, ["tokens", "revoke", token_id]).exit_code == 0
        assert "revoked" in runner.invoke(app, ["tokens", "list", "root"]).output
        missing = runner.invoke(app, ["tokens", "issue", "nobody"])
        assert (missing.exit_code, "no user nobody" in missing.output) == (1, True)
        assert runner.invoke(app, ["users", "set-tier", "root", "power"]).exit_code == 0
        assert "root power" in runner.invoke(app, ["users", "list"]).output
    finally:
        get_settings.cache_clear()
