"""The felis schema is the one description of the relational tables: what the stores create on
each backend, what they answer with and what the dr-updates records carry all come from it."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from broker.constants import RUBIN_BANDS
from broker.domain.catalogs import plan_columns
from broker.storage import schema
from broker.storage.archive import DETECTION_COLUMNS, FORCED_COLUMNS, OBJECT_COLUMNS
from broker.storage.catalog import TABLES, ChunkedCatalog
from broker.storage.refcat import ChunkedRefCatalogs, state_table, table_names
from broker.storage.shards import ShardSet
from tests.storage.conftest import CHUNKER


def _columns_on(shards: ShardSet, table: str, *, only_first: bool = False) -> list[list[str]]:
    """The column names of a table on every shard (or shard 0), as the database reports them."""
    def work(cursor: Any) -> list[str]:
        cursor.execute(f"SELECT * FROM `{table}` WHERE 1 = 0")
        return [d[0] for d in cursor.description]
    if only_first:
        return [shards.run(0, work, write=False)]
    return list(shards.all_shards(work, write=False).values())


def test_felis_validates() -> None:
    """felis's own model validates the file (``felis validate`` runs it in ``make lint``)."""
    assert set(schema.metadata().tables) >= {
        "objects", "alert_rows", "director", "layout", "refcat_registry", "refcat_rows",
        "refcat_overlap", "refcat_director", "refcat_state", "dr_objects"}


def test_every_column_is_described_with_a_ucd() -> None:
    for table in schema.metadata().tables.values():
        assert table.comment, table.name
        for column in table.columns:
            assert column.comment, f"{table.name}.{column.name} has no description"
    from felis.datamodel import Schema

    described = Schema.from_uri(str(schema.felis_path()), context={"id_generation": True})
    for table in described.tables:
        for column in table.columns:
            assert column.ivoa_ucd, f"{table.name}.{column.name} has no UCD"
            if column.name in ("ra", "dec") or column.name.endswith(("_mjd", "_flux")):
                assert column.fits_tunit, f"{table.name}.{column.name} has no unit"


def test_row_columns_come_from_felis() -> None:
    assert schema.columns("alert_rows") == DETECTION_COLUMNS
    assert schema.columns("embedded_detections") == DETECTION_COLUMNS
    assert schema.columns("embedded_forced_photometry") == FORCED_COLUMNS
    assert schema.columns("objects")[:len(OBJECT_COLUMNS)] == OBJECT_COLUMNS
    # The per-band columns are those of every band the archive knows.
    bands = {c.split("_", 1)[0] for c in OBJECT_COLUMNS if c.endswith("_last_flux_err")}
    assert bands == set(RUBIN_BANDS)


def test_the_feature_columns_are_the_features() -> None:
    """The objects table's feature columns are `FEATURES`, with their types, units, UCDs and
    descriptions (the YAML was generated from them; this keeps the two from drifting)."""
    from broker.domain.features import FEATURES

    docs = schema.column_docs("objects")
    names = list(docs)
    start = names.index(FEATURES[0].name)
    assert names[start:start + len(FEATURES)] == [f.name for f in FEATURES]
    for feature in FEATURES:
        doc = docs[feature.name]
        assert doc.datatype == ("int" if feature.kind == "int" else "double"), feature.name
        assert (doc.unit, doc.ucd, doc.description) == (feature.unit, feature.ucd,
                                                        feature.description), feature.name
        assert doc.nullable  # NULL until the object is first enriched


def test_dr_objects_matches_the_dr_update_records() -> None:
    """The catalog the dr-updates stage creates has exactly the columns felis describes."""
    from consumers.dr_updates import DEC_COL, ID_COL, RA_COL, row_schema

    planned = plan_columns(row_schema(), ID_COL, RA_COL, DEC_COL)
    stored = ["chunk_id", "hpx29", *(name for name, _ in planned.stored)]
    assert list(schema.columns("dr_objects")) == stored


def test_tables_on_each_backend_have_the_felis_columns(shard_set: ShardSet) -> None:
    catalog = ChunkedCatalog(shards=shard_set, chunker=CHUNKER)
    catalog.setup()
    for table in TABLES:
        assert _columns_on(shard_set, table) == [list(schema.columns(table))] * len(shard_set)
    refcats = ChunkedRefCatalogs(shard_set, CHUNKER)
    refcats.load("stars", [pa.record_batch({"sid": [1, 2], "ra": [10.0, 200.0],
                                            "dec": [1.0, -5.0], "vmag": [3.5, None]})],
                 "sid", "ra", "dec")
    refcats.apply("stars", pa.table({"sid": [3], "ra": [11.0], "dec": [2.0], "vmag": [1.0],
                                     "version": [1]}), [], id_col="sid", ra_col="ra",
                  dec_col="dec")
    main, overlap, director = table_names("stars", 1)
    expected = {
        "refcat_registry": list(schema.columns("refcat_registry")),
        main: [*schema.columns("refcat_rows"), "vmag"],
        overlap: list(schema.columns("refcat_overlap")),
        director: list(schema.columns("refcat_director")),
        state_table("stars", 1): list(schema.columns("refcat_state")),
    }
    for table, columns in expected.items():
        found = _columns_on(shard_set, table, only_first=table == "refcat_registry")
        assert all(f == columns for f in found), (table, found)
    from broker.storage.accounts import TABLES as ACCOUNT_TABLES
    from broker.storage.accounts import AccountStore

    AccountStore(shard_set).setup()
    for table in ACCOUNT_TABLES:  # on shard 0 only
        assert _columns_on(shard_set, table, only_first=True) == [list(schema.columns(table))]


@pytest.mark.parametrize("template", ["refcat_rows", "refcat_overlap", "refcat_director",
                                      "refcat_state"])
def test_refcat_templates_index_names_are_per_table(template: str) -> None:
    one = schema.refcat_table(template, "rc_a_v1", text_ids=False)
    two = schema.refcat_table(template, "rc_b_v1", text_ids=True)
    names_one = {i.name for i in one.indexes}
    names_two = {i.name for i in two.indexes}
    assert not names_one & names_two  # SQLite's index names are global to a file
    assert str(two.c.id.type).startswith("VARCHAR")
    assert not str(one.c.id.type).startswith("VARCHAR")


def test_the_api_describes_objects_as_felis_does() -> None:
    """The API's models and the SCS fields are generated from the felis columns, not written
    again: every stored column is there, typed and described as felis says."""
    from api.models import DetectionOut, ForcedOut, ObjectFields
    from api.routers.scs import OBJECT_ALL_COLUMNS

    for model, table, columns in ((ObjectFields, "objects", OBJECT_COLUMNS),
                                  (DetectionOut, "alert_rows", DETECTION_COLUMNS),
                                  (ForcedOut, "embedded_forced_photometry", FORCED_COLUMNS)):
        docs = schema.column_docs(table)
        for name in columns:
            field = model.model_fields[name]
            assert field.description is not None
            assert field.description.startswith(docs[name].description), (table, name)
            if docs[name].unit:
                assert field.description.endswith(f"Unit: {docs[name].unit}."), (table, name)
    fields = {c.name: c for c in OBJECT_ALL_COLUMNS}
    docs = schema.column_docs("objects")
    for name in OBJECT_COLUMNS:
        shown = "id" if name == "object_id" else name
        assert shown in fields, name
        if name not in ("object_id", "ra", "dec"):  # SCS 1.03's own three UCDs
            assert (fields[name].ucd, fields[name].unit) == (docs[name].ucd, docs[name].unit)
