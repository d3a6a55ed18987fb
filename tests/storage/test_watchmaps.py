"""The watchmap store over each backend, and the matcher following it."""

from __future__ import annotations

import numpy as np
import pytest

from broker.domain.watchmaps import area_sq_deg, contains, moc_from_skymap, parse_moc
from broker.exceptions import ConflictError, NotFoundError
from broker.storage.shards import ShardSet
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import MapHit, WatchmapStore
from tests.support.data import REPO_ROOT

SKYMAP = REPO_ROOT / "tests" / "data" / "skymaps" / "bayestar.multiorder.fits"


@pytest.fixture
def store(shard_set: ShardSet) -> WatchmapStore:
    return WatchmapStore(shard_set)


def test_watchmaps_are_owned_replaced_and_their_hits_kept_once(store: WatchmapStore) -> None:
    gw = moc_from_skymap(SKYMAP.read_bytes(), 0.9)
    made = store.create("alice", "S200129m", gw, source="skymap", credible_level=0.9)
    assert (made.source, made.credible_level, made.version) == ("skymap", 0.9, 1)
    assert made.area_sq_deg == pytest.approx(area_sq_deg(gw))
    with pytest.raises(ConflictError):
        store.create("alice", "S200129m", gw, source="skymap", credible_level=0.9)
    public = store.create("bob", "patch", parse_moc(b"3/1-4", "ascii"), source="moc",
                          visibility="public")
    assert [(m.owner, m.name) for m in store.visible("bob")] == [("bob", "patch")]
    assert [(m.owner, m.name) for m in store.visible("alice")] == [
        ("alice", "S200129m"), ("bob", "patch")]
    for caller in ("bob", None):
        with pytest.raises(NotFoundError):
            store.get(made.watchmap_id, caller)
    with pytest.raises(NotFoundError):
        store.replace(public.watchmap_id, "alice", gw, source="moc")
    replaced = store.replace(made.watchmap_id, "alice", moc_from_skymap(SKYMAP.read_bytes(),
                                                                        0.5),
                             source="skymap", credible_level=0.5)
    assert (replaced.version, replaced.credible_level) == (2, 0.5)
    assert replaced.area_sq_deg < made.area_sq_deg
    assert parse_moc(store.moc(made.watchmap_id).encode(), "ascii") is not None
    hit = MapHit(made.watchmap_id, 7, "obj", 10.0, 20.0, 60000.0, live=True)
    assert store.add_hits([hit, hit]) == 1
    assert store.add_hits([hit]) == 0
    assert [h["alert_id"] for h in store.hits(made.watchmap_id, "alice")] == [7]
    with pytest.raises(NotFoundError):
        store.hits(made.watchmap_id, "bob")
    store.delete(made.watchmap_id, "alice")
    assert made.watchmap_id not in store.versions()


def test_the_matcher_follows_watchmaps(shard_set: ShardSet) -> None:
    from broker.watching import WatchMatcher

    maps = WatchmapStore(shard_set)
    now = [0.0]
    matcher = WatchMatcher(WatchlistStore(shard_set), maps=maps, poll_s=1.0,
                           clock=lambda: now[0])
    matcher.refresh(force=True)
    made = maps.create("alice", "square", parse_moc(b"0/4", "ascii"), source="moc")
    ra, dec = np.array([0.0, 180.0]), np.array([40.0, -40.0])
    assert matcher.match_maps(ra, dec) == [[], []]
    now[0] = 2.0
    assert matcher.refresh() is True
    inside = [[made.watchmap_id] if hit else []
              for hit in contains(parse_moc(b"0/4", "ascii"), ra, dec)]
    assert matcher.match_maps(ra, dec) == inside
    assert any(inside)
    maps.delete(made.watchmap_id, "alice")
    now[0] = 4.0
    assert matcher.refresh() is True
    assert matcher.match_maps(ra, dec) == [[], []]
