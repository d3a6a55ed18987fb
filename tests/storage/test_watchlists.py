"""The watchlist store over each backend: ownership (another's private list does not exist),
atomic replacement with a version, hits stored once and paged."""

from __future__ import annotations

import numpy as np
import pytest

from broker.domain.watchlists import Cones
from broker.exceptions import ConflictError, NotFoundError
from broker.storage.shards import ShardSet
from broker.storage.watchlists import Hit, WatchlistStore


def _cones(n: int, start: float = 10.0) -> Cones:
    return Cones([f"c{i}" for i in range(n)], np.linspace(start, start + 1, n),
                 np.linspace(-5, 5, n), np.full(n, 3.0))


@pytest.fixture
def store(shard_set: ShardSet) -> WatchlistStore:
    return WatchlistStore(shard_set)


def test_owners_see_theirs_and_everyone_sees_public(store: WatchlistStore) -> None:
    mine = store.create("alice", "hosts", _cones(5))
    public = store.create("bob", "grbs", _cones(3), visibility="public")
    hidden = store.create("bob", "secret", _cones(2))
    assert (mine.cones, mine.version, mine.visibility) == (5, 1, "private")
    with pytest.raises(ConflictError, match="named 'hosts' already"):
        store.create("alice", "hosts", _cones(1))
    store.create("bob", "hosts", _cones(1))  # the same name for another owner is fine
    assert [(w.owner, w.name) for w in store.visible("alice")] == [("alice", "hosts"),
                                                                  ("bob", "grbs")]
    assert [(w.owner, w.name) for w in store.visible(None)] == [("bob", "grbs")]
    assert store.get(public.watchlist_id, "alice").name == "grbs"
    assert store.get(public.watchlist_id, None).name == "grbs"
    for caller in ("alice", None):
        with pytest.raises(NotFoundError, match=f"no watchlist {hidden.watchlist_id}"):
            store.get(hidden.watchlist_id, caller)
    # A public list of another user can be read, not changed or deleted.
    with pytest.raises(NotFoundError):
        store.replace(public.watchlist_id, "alice", _cones(1))
    with pytest.raises(NotFoundError):
        store.delete(public.watchlist_id, "alice")
    with pytest.raises(ValueError, match="visibility 'shared'"):
        store.create("alice", "x", _cones(1), visibility="shared")


def test_replace_is_whole_and_bumps_the_version(store: WatchlistStore) -> None:
    made = store.create("alice", "hosts", _cones(1000))
    before = store.versions()
    replaced = store.replace(made.watchlist_id, "alice", _cones(7, start=200.0),
                             visibility="public", default_radius_arcsec=5.0)
    assert (replaced.cones, replaced.version, replaced.visibility,
            replaced.default_radius_arcsec) == (7, 2, "public", 5.0)
    assert store.versions() == {**before, made.watchlist_id: 2}
    ids, names, ra, dec, radius = store.cones(made.watchlist_id)
    assert dec.tolist() == np.linspace(-5, 5, 7).tolist()
    assert ids.tolist() == list(range(1, 8))
    assert names == [f"c{i}" for i in range(7)]
    assert ra[0] == 200.0
    assert radius.tolist() == [3.0] * 7
    # A replacement that fails (a bad radius) leaves everything as it was.
    with pytest.raises(ValueError, match="default radius 0"):
        store.replace(made.watchlist_id, "alice", _cones(3), default_radius_arcsec=0.0)
    assert store.get(made.watchlist_id, "alice").version == 2
    assert len(store.cones(made.watchlist_id)[0]) == 7


def test_hits_are_stored_once_and_paged_newest_first(store: WatchlistStore) -> None:
    made = store.create("alice", "hosts", _cones(3))
    other = store.create("bob", "b", _cones(1))
    hits = [Hit(made.watchlist_id, cone, 1000 + i, f"obj{i}", 0.5 * i, 60000.0 + (i % 4),
                live=i % 2 == 0) for i, cone in enumerate([1, 2, 3, 1, 2, 3, 1, 2, 3, 1])]
    assert store.add_hits(hits) == 10
    assert store.add_hits(hits[:4]) == 0  # found again: nothing new
    store.add_hits([Hit(other.watchlist_id, 1, 5, "x", 0.1, 60000.0, live=True)])
    pages, after = [], None
    while True:
        page = store.hits(made.watchlist_id, "alice", limit=3, after=after)
        if not page:
            break
        pages.append(page)
        last = page[-1]
        after = (last["mjd"], last["cone_id"], last["alert_id"])
    seen = [h for page in pages for h in page]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert len({h["alert_id"] for h in seen}) == 10
    assert [h["mjd"] for h in seen] == sorted((h["mjd"] for h in seen), reverse=True)
    assert {h["cone_name"] for h in seen} == {"c0", "c1", "c2"}
    assert sum(h["live"] for h in seen) == 5
    with pytest.raises(NotFoundError):
        store.hits(made.watchlist_id, "bob")
    store.delete(made.watchlist_id, "alice")
    with pytest.raises(NotFoundError):
        store.get(made.watchlist_id, "alice")
    assert made.watchlist_id not in store.versions()
    assert store.hits(other.watchlist_id, "bob")[0]["alert_id"] == 5


def test_the_matcher_follows_changes_by_polling_versions(store: WatchlistStore) -> None:
    from broker.watching import WatchMatcher

    now = [0.0]
    matcher = WatchMatcher(store, poll_s=2.0, clock=lambda: now[0])
    assert matcher.refresh() is False  # nothing yet
    made = store.create("alice", "hosts", Cones(["a", "b"], np.array([10.0, 20.0]),
                                                np.array([0.0, 0.0]), np.array([5.0, 5.0])))
    assert matcher.refresh() is False  # polled less than 2 s ago
    now[0] = 2.5
    assert matcher.refresh() is True
    found = matcher.match(np.array([10.0, 20.0005, 30.0]), np.array([0.0, 0.0, 0.0]))
    assert [[(m.watchlist_id, m.cone_id, m.cone_name) for m in f] for f in found] == [
        [(made.watchlist_id, 1, "a")], [(made.watchlist_id, 2, "b")], []]
    assert found[1][0].separation_arcsec == pytest.approx(1.8, abs=0.01)
    # Replaced over the store: picked up at the next poll, and only then.
    store.replace(made.watchlist_id, "alice", Cones(["c"], np.array([30.0]), np.array([0.0]),
                                                    np.array([5.0])))
    assert matcher.match(np.array([30.0]), np.array([0.0])) == [[]]
    now[0] = 5.0
    assert matcher.refresh() is True
    assert matcher.refresh() is False
    assert [m.cone_name for m in matcher.match(np.array([30.0]), np.array([0.0]))[0]] == ["c"]
    other = store.create("bob", "b", Cones(["d"], np.array([30.0]), np.array([0.0]),
                                           np.array([60.0])))
    store.delete(made.watchlist_id, "alice")
    now[0] = 8.0
    assert matcher.refresh() is True
    assert [(m.watchlist_id, m.cone_name) for m in matcher.match(
        np.array([30.0]), np.array([0.0]))[0]] == [(other.watchlist_id, "d")]
    assert matcher.cones == 1


def test_the_packed_copy_is_the_rows(store: WatchlistStore) -> None:
    n = 300_000  # about 12 MB packed: several parts
    rng = np.random.default_rng(3)
    cones = Cones([f"cone {i}" for i in range(n)], rng.uniform(0, 360, n),
                  rng.uniform(-90, 90, n), rng.uniform(1, 1800, n))
    made = store.create("alice", "big", cones)
    parts = store.shards.run(0, lambda c: (c.execute(
        "SELECT COUNT(*) FROM watchlist_packs WHERE watchlist_id = %s", [made.watchlist_id]),
        c.fetchone())[1], write=False)
    assert int(parts[0]) >= 3
    packed = store.cones(made.watchlist_id)
    rows = store._cone_rows(made.watchlist_id)
    assert packed[0].tolist() == rows[0].tolist() == list(range(1, n + 1))
    assert packed[1] == rows[1] == cones.name
    for a, b, c in zip(packed[2:], rows[2:], (cones.ra, cones.dec, cones.radius_arcsec),
                       strict=True):
        assert np.array_equal(a, b)
        assert np.array_equal(a, c)
    store.replace(made.watchlist_id, "alice", _cones(2))
    assert store.cones(made.watchlist_id)[1] == ["c0", "c1"]


def test_many_hits_go_by_the_bulk_path_and_are_still_stored_once(store: WatchlistStore) -> None:
    from broker.storage.watchlists import BULK_HITS

    made = store.create("alice", "many", _cones(3))
    n = BULK_HITS + 1500
    hits = [Hit(made.watchlist_id, 1 + i % 3, 10_000 + i, f"o{i}", 0.25, 60000.0 + i / 1e4,
                live=i % 3 == 0) for i in range(n)]
    assert store.add_hits(hits[:100]) == 100
    assert store.add_hits(hits) == n - 100  # the first hundred were stored already
    assert store.add_hits(hits) == 0
    stored = store.hits(made.watchlist_id, "alice", limit=n + 10)
    assert len(stored) == n
    assert sum(h["live"] for h in stored) == sum(h.live for h in hits)
    assert {h["cone_name"] for h in stored} == {"c0", "c1", "c2"}


def test_hits_as_columns_are_stored_once_value_for_value(store: WatchlistStore) -> None:
    """A retroactive page's hits as columns, in no particular order: stored with their values,
    each once (the same page again stores nothing)."""
    from broker.storage.watchlists import HitColumns

    made = store.create("alice", "columns", _cones(4))
    rng = np.random.default_rng(8)
    n = 7_000
    order = rng.permutation(n)
    hits = HitColumns(np.full(n, made.watchlist_id, dtype=np.int64), 1 + order % 4,
                      50_000 + order, [f"obj{i}" for i in order.tolist()],
                      order / 1000.0, 60_000.0 + order / 1e5, np.zeros(n, dtype=bool))
    assert store.add_hit_columns(hits) == n
    assert store.add_hit_columns(hits) == 0
    stored = {h["alert_id"]: h for h in store.hits(made.watchlist_id, "alice", limit=n + 1)}
    assert len(stored) == n
    for i in rng.choice(n, 50, replace=False).tolist():
        h = stored[50_000 + i]
        assert (h["cone_id"], h["object_id"], h["live"]) == (1 + i % 4, f"obj{i}", False)
        assert h["separation_arcsec"] == pytest.approx(i / 1000.0)
        assert h["mjd"] == pytest.approx(60_000.0 + i / 1e5)
