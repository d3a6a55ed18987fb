"""The account rules: user names, tiers, token format and hashing."""

from __future__ import annotations

import itertools
import re

import pytest

from broker.domain.accounts import (
    LIMITS,
    InvalidTokenError,
    Tier,
    check_tier,
    check_user_name,
    hash_secret,
    new_token,
    parse_token,
    secret_matches,
)


@pytest.mark.parametrize("name", ["alice", "a", "bob_2", "z" * 32])
def test_good_user_names(name: str) -> None:
    assert check_user_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", "2bob", "_x", "bob-smith", "a.b", "z" * 33,
                                  "bob smith", "bob\n", "ælice"])
def test_bad_user_names(name: str) -> None:
    with pytest.raises(ValueError, match="is not valid: use a lower-case letter"):
        check_user_name(name)


def test_tiers() -> None:
    assert check_tier("power") is Tier.power
    with pytest.raises(ValueError, match="tier 'root' is not one of user, power, admin"):
        check_tier("root")
    # Each tier allows at least what the one below it does.
    ordered = [LIMITS[Tier.user], LIMITS[Tier.power], LIMITS[Tier.admin]]
    for low, high in itertools.pairwise(ordered):
        assert high.requests_per_hour > low.requests_per_hour
        assert high.max_rows >= low.max_rows
        assert high.max_watchlist_rows >= low.max_watchlist_rows


def test_a_new_token_parses_and_only_its_secret_matches() -> None:
    token = new_token()
    assert re.fullmatch(r"lnr_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", token.text)
    token_id, secret = parse_token(token.text)
    assert token_id == token.token_id
    assert token.secret_sha256 == hash_secret(secret)
    assert secret not in token.secret_sha256
    assert secret_matches(secret, token.secret_sha256)
    other = new_token()
    assert other.token_id != token.token_id
    assert not secret_matches(parse_token(other.text)[1], token.secret_sha256)


@pytest.mark.parametrize("text", ["", "lnr_", "lnr_abc_def", "Bearer lnr_x", "lnr_" + "0" * 12,
                                  "lnr_0123456789ab_" + "a" * 42, "lnr_0123456789AB_" + "a" * 43,
                                  "xyz_0123456789ab_" + "a" * 43, "lnr_0123456789ab_" + "a" * 44,
                                  "lnr_0123456789ab_" + "a" * 42 + "!",
                                  "lnr_0123456789ab_" + "a" * 43 + "\n"])
def test_malformed_tokens_are_refused_without_repeating_them(text: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        parse_token(text)
    assert str(caught.value) == "not a Lanner token"
