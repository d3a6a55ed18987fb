"""TAP_SCHEMA as felis makes it from the archive's felis description."""

from __future__ import annotations

import sqlite3

from broker.storage import schema
from broker.tap.tapschema import PUBLIC, TapSchema


def test_tap_schema_describes_the_public_tables_and_itself(tmp_path) -> None:
    tap = TapSchema(tmp_path / "tap_schema.db")
    assert sorted(t.name for t in tap) == sorted(
        [f"lanner.{n}" for n in PUBLIC]
        + [f"TAP_SCHEMA.{n}" for n in ("schemas", "tables", "columns", "keys", "key_columns")])
    for name in ("users", "tokens", "jobs", "filters", "watch_hits", "refcat_registry"):
        assert tap.table(f"lanner.{name}") is None, name
    for name in PUBLIC:
        assert [c.name for c in tap.table(f"lanner.{name}").columns] == list(
            schema.columns(name)), name
    objects = tap.table("LANNER.OBJECTS")
    assert objects is not None
    object_id = objects.column("object_id")
    assert (object_id.ucd, object_id.principal, object_id.indexed, object_id.datatype) == (
        "meta.id;meta.main", True, True, "char")
    ra = objects.column("ra")
    assert (ra.ucd, ra.unit, ra.datatype) == ("pos.eq.ra;meta.main", "deg", "double")
    assert all(c.std for c in tap.table("TAP_SCHEMA.columns").columns)
    # The file answers SQL over the five tables as TAP_SCHEMA queries read them.
    with sqlite3.connect(tap.path) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM columns WHERE table_name = 'lanner.alert_rows'").fetchone()
        schemas = connection.execute("SELECT schema_name FROM schemas ORDER BY "
                                     "schema_index").fetchall()
    assert count == len(schema.columns("alert_rows"))
    assert schemas == [("lanner",), ("TAP_SCHEMA",)]
