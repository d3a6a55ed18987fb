"""Chunks of the stored reference catalogs, as the cross-match engine reads them.

`RefCatChunkSource` adapts either reference-catalog store (MariaDB shards or SQLite) to the
`broker.domain.crossmatch.ChunkSource` protocol: one ``load`` asks the store for many chunks at
once, which it answers with one query per shard (main rows and overlap halo together).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.domain.crossmatch import ChunkRows


class RefCatChunkSource:
    """`ChunkSource` over `ShardedRefCatalogs` or `SQLiteRefCatalogs`."""

    def __init__(self, refcats: Any) -> None:
        self.refcats = refcats

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        found = self.refcats.chunk_rows(catalog, chunk_ids)
        return {int(chunk): ChunkRows(ids=ids, ra=ra, dec=dec)
                for chunk, (ids, ra, dec) in found.items()}
