"""Chunks of the stored reference catalogs, as the cross-match engine reads them.

`RefCatChunkSource` adapts the reference-catalog store (on MariaDB shards or SQLite files) to the
`broker.domain.crossmatch.ChunkSource` protocol: one ``load`` asks the store for many chunks at
once, which it answers with one query per shard (main rows and overlap halo together).
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.domain.crossmatch import ChunkRows
from broker.storage.stores import ReferenceCatalogs


class RefCatChunkSource:
    """`ChunkSource` over `ReferenceCatalogs`."""

    def __init__(self, refcats: ReferenceCatalogs) -> None:
        self.refcats = refcats

    def load(self, catalog: str, chunk_ids: Sequence[int]) -> dict[int, ChunkRows]:
        found = self.refcats.chunk_rows(catalog, chunk_ids)
        return {int(chunk): ChunkRows(ids=ids, ra=ra, dec=dec)
                for chunk, (ids, ra, dec) in found.items()}
