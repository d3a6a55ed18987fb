"""Chunks of the stored reference catalogs, as the cross-match engine reads them.

`RefCatChunkSource` adapts the reference-catalog store (on MariaDB shards or SQLite files) to the
`broker.domain.crossmatch.ChunkSource` protocol: one ``load`` asks the store for many chunks at
once, which it answers with one query per shard (main rows and overlap halo together).

A catalog may be named with its version, ``name@version`` (`versioned`): its chunks are then
read from that version only, and the chunk cache, keyed by that name, never mixes the rows of
two versions; a reload shows as `CatalogReloadedError`, after which the reader resolves the
versions again and uses new keys.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.domain.crossmatch import ChunkRows
from broker.storage.stores import ReferenceCatalogs


def versioned(name: str, version: int) -> str:
    """The name the cross-match engine and its cache know one version of a catalog by."""
    return f"{name}@{int(version)}"


def unversioned(key: str) -> tuple[str, int | None]:
    """The catalog name and version (None: the current one) of a cache key."""
    name, _, version = key.partition("@")
    return name, int(version) if version else None


class RefCatChunkSource:
    """`ChunkSource` over `ReferenceCatalogs`."""

    def __init__(self, refcats: ReferenceCatalogs) -> None:
        self.refcats = refcats

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        name, version = unversioned(catalog)
        found = self.refcats.chunk_rows(name, chunk_ids, version=version)
        return {int(chunk): ChunkRows(ids=ids, ra=ra, dec=dec)
                for chunk, (ids, ra, dec) in found.items()}
