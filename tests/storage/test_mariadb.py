"""The chunked MariaDB catalog on the real shards: layout guard and director placement."""

from __future__ import annotations

import pytest

from broker.domain.sky import Chunker, ChunkPlacement
from broker.storage.mariadb import LayoutMismatchError, ShardedCatalog, ShardSet


def test_a_changed_layout_is_refused(shards: ShardSet) -> None:
    catalog = ShardedCatalog(shards=shards, chunker=Chunker(85, 12))
    catalog.setup()
    catalog.setup()  # the same layout again is fine
    catalog.close()

    other_chunking = ShardedCatalog(shards=shards, chunker=Chunker(36, 8))
    with pytest.raises(LayoutMismatchError, match="chunk_stripes"):
        other_chunking.setup()
    other_chunking.close()

    one_shard = ShardSet(addresses=shards.addresses[:1], user=shards.user,
                         password="", database=shards.database)
    fewer = ShardedCatalog(shards=one_shard, chunker=Chunker(85, 12))
    with pytest.raises(LayoutMismatchError, match="shards"):
        fewer.setup()
    fewer.close()


def test_rows_live_on_the_shard_of_their_chunk(shards: ShardSet) -> None:
    from broker.domain.alerts import from_rubin
    from broker.domain.archive import plan
    from broker.domain.simulator import AlertSimulator

    chunker = Chunker(85, 12)
    catalog = ShardedCatalog(shards=shards, chunker=chunker)
    catalog.setup()
    alerts = [from_rubin(r, 1101) for r in AlertSimulator(schema="11.1", seed=31,
                                                          cutouts=False).packets(300)]
    batch = plan(alerts, {}, chunker)
    catalog.write(batch)
    placement = ChunkPlacement(len(shards))
    per_shard = []
    for shard in range(len(shards)):
        with shards.connection(shard) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT DISTINCT chunk_id FROM objects")
            chunks = [row[0] for row in cursor.fetchall()]
            cursor.execute("SELECT DISTINCT chunk_id FROM alert_rows")
            chunks += [row[0] for row in cursor.fetchall()]
        assert all(placement.shard_of(c) == shard for c in chunks)
        per_shard.append(len(chunks))
    assert all(n > 0 for n in per_shard)  # both shards hold data
    catalog.close()
