"""Reference catalogs in the chunked layout, over any shard set (MariaDB servers or SQLite files).

Versioned tables make a reload atomic. Version ``k`` of catalog ``name`` is the tables
``rc_<name>_v<k>`` (the rows, on the shard of their chunk), ``rc_<name>_v<k>_overlap`` (the halo
of each chunk: rows of neighbouring chunks within the overlap radius, on the halo chunk's shard)
and ``rc_<name>_v<k>_director`` (id → chunk, on the shard of `ChunkPlacement.director_shard`),
made from the felis templates ``refcat_rows``, ``refcat_overlap`` and ``refcat_director``. The
registry table ``refcat_registry`` on shard 0 names the current version. A load writes version
``k+1`` in full, flips the registry row in one statement, then drops version ``k``. Readers
resolve the version first and query only that version's tables, so they see the old catalog or
the new one, never a mix; a reader that resolved ``k`` just before its tables were dropped gets
"no such table" and resolves again. A failed load drops what it wrote and leaves ``k`` current.

Bulk load: each batch is split per shard and stored by the dialect's bulk insert (MariaDB:
tab-separated text written by pyarrow, read by ``LOAD DATA LOCAL INFILE`` into MyISAM tables
with non-unique keys disabled and rebuilt by sort at the end; SQLite: batched inserts); the
shards load in parallel threads while the next batch is prepared.

Row-level changes (`ChunkedRefCatalogs.apply`, used by the dr-updates stage) are in
`broker.storage.refcat.changes`; reading catalog files in `broker.storage.refcat.files`.

One writer per catalog: a load, `apply`, `drop` and `purge_tombstones` of a catalog hold its
lock (`catalog_lock_name`: a MariaDB named lock on shard 0; for SQLite a thread lock and an
``flock`` on a file next to the shard files). Without it two loads of one catalog would both
write version ``k+1`` and drop each other's tables, and a change applied during a load would go
into version ``k``, dropped at the end of the load. A load does not wait (`CatalogBusyError` at
once); the short operations wait up to ``lock_wait_s`` seconds. Readers take no lock.
"""

from broker.exceptions import CatalogBusyError, RefCatalogError, UnknownCatalogError
from broker.storage.dialect import catalog_lock_name
from broker.storage.refcat.files import CatalogInput, open_catalog_file
from broker.storage.refcat.store import ChunkedRefCatalogs, state_table, table_names
from broker.storage.stores import ApplyReport, LoadReport

__all__ = [
    "ApplyReport",
    "CatalogBusyError",
    "CatalogInput",
    "ChunkedRefCatalogs",
    "LoadReport",
    "RefCatalogError",
    "UnknownCatalogError",
    "catalog_lock_name",
    "open_catalog_file",
    "state_table",
    "table_names",
]
