"""The IVOA validator, STILTS taplint, against the TAP service served over HTTP on each
backend: every stage it runs (metadata from /tables and TAP_SCHEMA compared, capabilities,
availability, sync GET and POST and async queries, UWS behaviour, result columns against their
declared metadata) reports no error and no warning, with a reference catalog loaded."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from broker.data import CATALOGS
from broker.storage.refcat import open_catalog_file
from tests.support.alerts import produce_placed, scattered
from tests.support.catalogs import OPENNGC
from tests.support.server import served
from tests.support.stilts import run


def test_taplint_reports_no_error_and_no_warning(harness, tmp_path) -> None:
    produce_placed(harness, scattered(30, 6), first_id=950_000_000_000, seed=59)
    assert harness.ingest_once().archived == 30
    # A reference catalog with text ids, text columns and NULLs, described: taplint checks
    # its TAP_SCHEMA entries against /tables and its query results against them.
    source = open_catalog_file(OPENNGC)
    try:
        harness.refcats.load("openngc", source.batches, "id", "ra_deg", "dec_deg",
                             description=CATALOGS[1].description)
    finally:
        source.close()
    factory: Any = harness.factory(tmp_path)
    factory.__dict__["refcats"] = harness.refcats  # on the archive's shards, as deployed
    factory.settings = factory.settings.model_copy(update={"state_dir": tmp_path / "state"})
    app = create_app(factory)
    with TestClient(app), served(app) as url:
        report = run("taplint", f"tapurl={url}/tap", "report=EWS")
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", report)
    assert totals is not None, report[-3000:]
    problems = [line for line in report.splitlines() if re.match(r"[EW]-", line)]
    assert totals.groups() == ("0", "0"), "\n".join(problems)
    assert "S-TMS-SUMM-1 Schemas: 3," in report  # lanner, refcat and TAP_SCHEMA
    # It did run its queries (a service it could not read would skip them silently), and every
    # one succeeded.
    for stage in ("TMS", "QGE", "QPO", "QAS", "MDQ"):
        counted = re.search(rf"S-{stage}-QNUM-1 Successful/submitted TAP queries: (\d+)/(\d+)",
                            report)
        assert counted is not None, stage
        assert int(counted[2]) > 0, stage
        assert counted[1] == counted[2], stage
