"""Real reference catalogues shipped in the package for the demo (provenance in their README)."""

from __future__ import annotations

from typing import Any

from tests.support.data import BUNDLED_DATA

BUNDLED = BUNDLED_DATA / "catalogs"
HIPPARCOS = BUNDLED / "hipparcos2.parquet"
OPENNGC = BUNDLED / "openngc.csv"

SIRIUS = (32349, 101.28854, -16.71314)
VEGA = (91262, 279.23411, 38.78299)  # Hipparcos epoch J1991.25


def version_rows(catalogs: Any, name: str, *, state: bool = False) -> dict[int, Any]:
    """Per shard, every main, overlap and director row of a reference catalog's current version
    (as sets, by kind), and with ``state`` its row-level state rows (id, version, deleted)."""
    from broker.storage.refcat import state_table, table_names

    [entry] = [e for e in catalogs.list() if e["name"] == name]
    tables = table_names(name, entry["version"])
    state_name = state_table(name, entry["version"])

    def work(cursor: Any) -> Any:
        found = {}
        for kind, table in zip(("main", "overlap", "director"), tables, strict=True):
            cursor.execute(f"SELECT * FROM `{table}`")
            found[kind] = set(cursor.fetchall())
        if not state:
            return found
        cursor.execute(f"SELECT id, version, deleted FROM `{state_name}`")
        return found, list(cursor.fetchall())

    return catalogs.shards.all_shards(work, write=False)
