"""ADQL queries checked against TAP_SCHEMA (`broker.tap.adql`): valid ones pass with their
tables and qualified columns; the hostile corpus (tests/data/adql/hostile.txt plus generated
cases) is refused, each with a message; comments never reach the SQL made from a tree."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from broker.tap.adql import (
    MAX_DEPTH,
    MAX_IN_ITEMS,
    MAX_NODES,
    MAX_TABLES,
    MAX_TEXT,
    ADQLError,
    check,
)
from broker.tap.tapschema import TapSchema

HOSTILE = Path(__file__).parent / "data" / "adql" / "hostile.txt"

#: Statements other than SELECT, each tried as it is and after a valid SELECT.
STATEMENTS = [
    "INSERT INTO lanner.objects (object_id) VALUES ('x')", "UPDATE lanner.objects SET ra = 0",
    "DELETE FROM lanner.objects", "DROP TABLE lanner.objects", "DROP DATABASE lanner",
    "CREATE TABLE lanner.x (a INT)", "ALTER TABLE lanner.objects ADD COLUMN x INT",
    "TRUNCATE TABLE lanner.objects", "GRANT ALL ON *.* TO 'x'@'%'", "REVOKE ALL ON *.* FROM x",
    "SET GLOBAL max_connections = 1", "SET @x = 1", "SHOW TABLES", "SHOW GRANTS",
    "DESCRIBE lanner.objects", "EXPLAIN SELECT ra FROM lanner.objects", "USE mysql",
    "CALL lanner.evil()", "LOAD DATA INFILE '/etc/passwd' INTO TABLE lanner.objects",
    "HANDLER lanner.objects OPEN", "LOCK TABLES lanner.objects WRITE", "UNLOCK TABLES",
    "REPLACE INTO lanner.objects (object_id) VALUES ('x')", "KILL 1", "SHUTDOWN",
    "FLUSH PRIVILEGES", "ANALYZE TABLE lanner.objects", "OPTIMIZE TABLE lanner.objects",
    "CREATE USER x", "DO SLEEP(10)", "PREPARE s FROM 'SELECT 1'", "EXECUTE s",
    "BEGIN", "COMMIT", "ROLLBACK", "PRAGMA table_info(objects)", "ATTACH DATABASE 'x' AS y",
    "VACUUM", "COPY lanner.objects TO '/tmp/x'", "MERGE INTO lanner.objects USING x ON 1 = 1 "
    "WHEN MATCHED THEN DELETE",
]
#: Functions of MariaDB, PostgreSQL or SQLite that are not ADQL's, in the select list and in
#: a condition.
FUNCTIONS = [
    "SLEEP(10)", "BENCHMARK(100000000, MD5('x'))", "LOAD_FILE('/etc/passwd')", "USER()",
    "CURRENT_USER()", "SYSTEM_USER()", "DATABASE()", "SCHEMA()", "VERSION()",
    "CONNECTION_ID()", "GET_LOCK('x', 10)", "RELEASE_LOCK('x')", "IS_FREE_LOCK('x')",
    "MASTER_POS_WAIT('x', 1)", "UUID()", "SYSDATE()", "NOW()", "LAST_INSERT_ID()",
    "ROW_COUNT()", "FOUND_ROWS()", "MD5('x')", "SHA1('x')", "SHA2('x', 256)",
    "AES_ENCRYPT('x', 'k')", "COMPRESS('x')", "CONCAT('a', 'b')", "SUBSTRING('abc', 1, 1)",
    "REPEAT('x', 100000000)", "LPAD('x', 100000000, 'y')", "SPACE(100000000)",
    "REGEXP_REPLACE('x', 'a', 'b')", "REGEXP_LIKE('x', '(a+)+$')", "JSON_EXTRACT('{}', '$')",
    "EXTRACTVALUE('<a/>', '/a')", "UPDATEXML('<a/>', '/a', '<b/>')", "NAME_CONST('x', 1)",
    "PG_SLEEP(10)", "PG_READ_FILE('/etc/passwd')", "DBLINK('x', 'y')", "LO_IMPORT('/x')",
    "CURRENT_SETTING('x')", "SET_CONFIG('x', 'y', false)", "RANDOMBLOB(100000000)",
    "ZEROBLOB(100000000)", "LOAD_EXTENSION('x')", "SQLITE_VERSION()", "CHAR(65)",
    "HEX('x')", "UNHEX('41')", "FORMAT(1, 2)", "INET_ATON('1.2.3.4')", "SYS_EXEC('id')",
    "XP_CMDSHELL('dir')", "EXEC('x')", "GROUP_CONCAT(object_id)", "STRING_AGG(object_id, ',')",
    "ARRAY_AGG(object_id)", "JSON_ARRAYAGG(object_id)", "BIT_XOR(ra)",
]
#: Tables that are not in TAP_SCHEMA, named every way.
TABLES = [
    "information_schema.tables", "information_schema.columns", "information_schema.processlist",
    "mysql.user", "mysql.db", "performance_schema.accounts", "sys.session", "pg_catalog.pg_user",
    "pg_shadow", "sqlite_master", "sqlite_schema", "lanner.users", "lanner.tokens",
    "lanner.jobs", "lanner.filters", "lanner.filter_days", "lanner.filter_progress",
    "lanner.watchlists", "lanner.watch_hits", "lanner.watchmaps", "lanner.watchmap_hits",
    "lanner.refcat_registry", "lanner.refcat_rows", "lanner.refcat_state", "lanner.director",
    "lanner.embedded_cutouts", "TAP_SCHEMA.evil", "tap_schema.users", "mysql.general_log",
    "mysql.slow_log",
]


def _hostile() -> list[str]:
    text = HOSTILE.read_text(encoding="utf-8")
    blocks = text.split("\n====\n")[1:]
    cases = [b for b in blocks if b.strip() or b]
    cases += STATEMENTS
    cases += [f"SELECT ra FROM lanner.objects; {s}" for s in STATEMENTS]
    cases += [f"SELECT {f} FROM lanner.objects" for f in FUNCTIONS]
    cases += [f"SELECT ra FROM lanner.objects WHERE {f} IS NOT NULL" for f in FUNCTIONS]
    cases += [f"SELECT * FROM {t}" for t in TABLES]
    cases += [
        "SELECT ra FROM lanner.objects WHERE " + "(" * (MAX_DEPTH + 1) + "ra > 1"
        + ")" * (MAX_DEPTH + 1),
        "SELECT ra FROM lanner.objects WHERE " + "(" * 5000 + "ra > 1" + ")" * 5000,
        "SELECT ra FROM lanner.objects WHERE " + "NOT " * 3000 + "ra > 1",
        "SELECT ra FROM lanner.objects WHERE " + " + ".join(["ra"] * (MAX_NODES // 2)) + " > 0",
        "SELECT ra FROM lanner.objects WHERE ra IN (" + ", ".join(
            str(i) for i in range(MAX_IN_ITEMS + 1)) + ")",
        "SELECT ra FROM lanner.objects WHERE object_id = '" + "x" * MAX_TEXT + "'",
        "SELECT ra FROM lanner.objects WHERE ra > 1" + " " * MAX_TEXT,
        "SELECT ra FROM lanner.objects WHERE ra > 1\x00",
        "SELECT * FROM " + ", ".join(f"lanner.alert_rows AS a{i}" for i in range(MAX_TABLES + 1)),
        "SELECT ra FROM " + "(SELECT ra FROM " * 60 + "lanner.objects" + ") AS x" * 60,
    ]
    return cases


HOSTILE_CASES = _hostile()


@pytest.fixture(scope="module")
def tap(tmp_path_factory) -> TapSchema:
    return TapSchema(tmp_path_factory.mktemp("tap") / "tap_schema.db")


def test_the_corpus_is_large() -> None:
    assert len(HOSTILE_CASES) >= 200


@pytest.mark.parametrize("text", HOSTILE_CASES, ids=range(len(HOSTILE_CASES)))
def test_hostile_queries_are_refused_with_a_message(tap: TapSchema, text: str) -> None:
    with pytest.raises(ADQLError) as refused:
        check(text, tap)
    assert refused.value.message.strip()
    assert "Traceback" not in str(refused.value)


@pytest.mark.parametrize(("text", "tables"), [
    ("SELECT TOP 10 ra, dec FROM lanner.objects WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
     "CIRCLE('ICRS', 10, 20, 0.1))", ("lanner.objects",)),
    ("SELECT o.object_id, COUNT(*) AS n FROM lanner.objects AS o JOIN lanner.alert_rows AS a "
     "ON a.object_id = o.object_id GROUP BY o.object_id HAVING COUNT(*) > 2 ORDER BY n DESC",
     ("lanner.alert_rows", "lanner.objects")),
    ("SELECT band, COUNT(*), AVG(psf_flux), MIN(mjd), MAX(mjd) FROM alert_rows GROUP BY band",
     ("lanner.alert_rows",)),
    ("SELECT DISTINCT survey FROM lanner.objects", ("lanner.objects",)),
    ("SELECT x.ra FROM (SELECT ra FROM lanner.objects WHERE ra < 10) AS x ORDER BY x.ra "
     "OFFSET 5", ("lanner.objects",)),
    ('SELECT "ra", "dec" FROM lanner.objects -- a comment\nWHERE ra BETWEEN 1 AND 2',
     ("lanner.objects",)),
    ("SELECT table_name, description FROM TAP_SCHEMA.tables WHERE schema_name = 'lanner'",
     ("TAP_SCHEMA.tables",)),
    ("SELECT ABS(ra), CEILING(ra), FLOOR(dec), LOG10(ra + 1), SQRT(ra), POWER(ra, 2), "
     "MOD(3, 2), ROUND(ra, 2), TRUNCATE(ra), DEGREES(ra), RADIANS(ra), PI(), ATAN2(ra, dec), "
     "SIN(ra), LOWER(object_id), UPPER(survey), COALESCE(ra, 0) FROM lanner.objects",
     ("lanner.objects",)),
    ("SELECT ra FROM lanner.objects WHERE object_id IN (SELECT object_id FROM "
     "lanner.alert_rows WHERE band = 'g') AND survey LIKE 'ls%' AND object_id ILIKE 'A%'",
     ("lanner.alert_rows", "lanner.objects")),
    ("SELECT DISTANCE(POINT('ICRS', ra, dec), POINT('ICRS', 1, 2)) AS d, "
     "COORD1(POINT('ICRS', ra, dec)), AREA(BOX('ICRS', 1, 2, 3, 4)) FROM lanner.objects "
     "WHERE 1 = INTERSECTS(CIRCLE('ICRS', ra, dec, 0.1), POLYGON('ICRS', 1, 1, 2, 1, 2, 2))",
     ("lanner.objects",)),
])
def test_valid_queries_pass_with_their_tables(tap: TapSchema, text: str,
                                              tables: tuple[str, ...]) -> None:
    checked = check(text, tap)
    assert checked.tables == tables
    # Every column is qualified by its table (or alias) once checked, but for the select
    # list's own aliases (ORDER BY n).
    from sqlglot import exp

    aliases = {e.alias for e in checked.tree.expressions if e.alias}
    assert all(column.table or column.name in aliases
               for column in checked.tree.find_all(exp.Column))


def test_errors_say_where(tap: TapSchema) -> None:
    with pytest.raises(ADQLError) as unknown:
        check("SELECT ra,\n  nosuch FROM lanner.objects", tap)
    assert (unknown.value.line, unknown.value.column) == (2, 3)
    assert "unknown column nosuch" in unknown.value.message
    with pytest.raises(ADQLError) as function:
        check("SELECT ra FROM lanner.objects WHERE SLEEP(1) = 0", tap)
    assert (function.value.line, function.value.column, function.value.message) == (
        1, 37, "unknown function SLEEP")
    with pytest.raises(ADQLError) as table:
        check("SELECT *\nFROM lanner.tokens", tap)
    assert (table.value.line, table.value.message) == (2, "unknown table lanner.tokens")


def test_comments_never_reach_the_sql_made_from_the_tree(tap: TapSchema) -> None:
    checked = check("SELECT ra /* SLEEP(10) */ FROM lanner.objects -- ; DROP TABLE x\n"
                    "WHERE /*!50000 BENCHMARK(1, 1) */ ra > 1", tap)
    made = checked.tree.sql(dialect="mysql")
    for hidden in ("SLEEP", "BENCHMARK", "DROP", "/*", "--"):
        assert hidden not in made, hidden


_IN = "SELECT object_id FROM lanner.objects WHERE 1 = "
_P = "POINT('ICRS', ra, dec)"


@pytest.mark.parametrize(("text", "message"), [
    (f"{_IN}CONTAINS(POINT('GALACTIC', ra, dec), CIRCLE('ICRS', 1, 2, 3))",
     "POINT in 'GALACTIC'"),
    (f"{_IN}CONTAINS({_P}, BOX('FK5', 1, 2, 3, 4))", "BOX in 'FK5'"),
    (f"{_IN}CONTAINS({_P}, CIRCLE(ra, 1, 2, 3))", "first argument is its coordinate system"),
    (f"{_IN}CONTAINS({_P}, CIRCLE('ICRS', 'x', 2, 3))", "takes numbers"),
    (f"{_IN}CONTAINS({_P}, BOX('ICRS', 1, NULL, 3, 4))", "takes numbers"),
    (f"{_IN}CONTAINS({_P}, BOX('ICRS', ra, 2, 3, 4))", "BOX in CONTAINS takes literal numbers"),
    (f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 1, 2, 3, 4, 5, dec))", "literal numbers"),
    (f"{_IN}CONTAINS({_P}, BOX('ICRS', 1, 2, 181, 4))", "width 181 is outside"),
    (f"{_IN}CONTAINS({_P}, BOX('ICRS', 1, 95, 1, 4))", "declination 95 is outside"),
    (f"{_IN}CONTAINS({_P}, CIRCLE('ICRS', 1, 2, -1))", "radius -1 is outside"),
    (f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 0, 0, 2, 2, 2, 0, 0, 2))", "edges 1 and 3 cross"),
    (f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 0, 0, 1, 0, 1, 0, 0, 1))", "are the same point"),
    (f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 0, 0, 1, 0, 2, 0))", "turns back on itself"),
    (f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 0, 0, 120, 0, 240, 0))", "smaller than a hemisphere"),
    (f"{_IN}CONTAINS({_P}, POLYGON('ICRS', " + ", ".join(
        f"{math.cos(i / 101 * 2 * math.pi):.6f}, {math.sin(i / 101 * 2 * math.pi):.6f}"
        for i in range(101)) + "))", "101 vertices; at most 100"),
    (f"{_IN}CONTAINS(BOX('ICRS', 1, 2, 3, 4), CIRCLE('ICRS', 1, 2, 3))",
     "CONTAINS is supported for a POINT in a CIRCLE, BOX or POLYGON"),
    (f"{_IN}INTERSECTS(BOX('ICRS', 1, 2, 3, 4), POLYGON('ICRS', 0, 0, 1, 0, 0, 1))",
     "INTERSECTS is supported for a POINT and"),
    ("SELECT POINT('ICRS', ra, dec) FROM lanner.objects", "POINT is a geometry value"),
    ("SELECT CENTROID(CIRCLE('ICRS', ra, dec, 1)) FROM lanner.objects",
     "CENTROID is a geometry value"),
    ("SELECT AREA(BOX('ICRS', ra, dec, 1, 1)) FROM lanner.objects", "AREA is supported for"),
    ("SELECT COORD1(CENTROID(POLYGON('ICRS', ra, 0, 1, 0, 0, 1))) FROM lanner.objects",
     "CENTROID is supported for"),
    ("SELECT COORDSYS(ra) FROM lanner.objects", "COORDSYS takes a POINT"),
    ("SELECT DISTANCE(CIRCLE('ICRS', ra, dec, 1), POINT('ICRS', 1, 2)) FROM lanner.objects",
     "DISTANCE takes a POINT"),
])
def test_geometry_that_cannot_be_run_is_refused(tap: TapSchema, text: str,
                                                message: str) -> None:
    from broker.tap.functions import rewrite

    checked = check(text, tap)
    for dialect in ("mysql", "sqlite"):
        with pytest.raises(ADQLError, match=message):
            rewrite(checked.tree, dialect)


@pytest.mark.parametrize("text", [
    f"{_IN}CONTAINS({_P}, BOX('ICRS', 1, 2, 3))",
    f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 0, 0, 1, 0, 0, 1, 2))",
    f"{_IN}CONTAINS({_P}, POLYGON('ICRS', 0, 0, 1, 0))",
    f"{_IN}CONTAINS({_P}, CIRCLE('ICRS', 1, 2))",
    f"{_IN}INTERSECTS({_P})",
    "SELECT AREA(BOX('ICRS', 1, 2, 3, 4), 1) FROM lanner.objects",
])
def test_geometry_with_the_wrong_arguments_is_refused_by_the_check(tap: TapSchema,
                                                                  text: str) -> None:
    with pytest.raises(ADQLError, match="takes"):
        check(text, tap)
