"""``lanner demo``: the embedded first look (simulated and shipped alerts, ingested and served)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from broker.cli.alerts import simulated
from broker.cli.common import check_port, clean_errors, console, out
from broker.config import get_settings


@clean_errors
def demo(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Alerts to simulate.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated stream.")] = 2026,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535,
                                      help="Port of the API.")] = 8000,
    serve_api: Annotated[bool, typer.Option(
        "--serve/--no-serve", help="Serve the API when the archive is ready.")] = True,
) -> None:
    """A first look with no servers: simulated and real ZTF alerts, ingested and served.

    Runs the real ingest stage over the embedded backend (an in-process queue and one SQLite
    file under the state folder): simulated Rubin packets and the bundled real ZTF packets are
    queued, archived with a progress bar, and served on http://127.0.0.1:PORT.
    """
    from rich.progress import Progress  # noqa: PLC0415

    from broker.config import Backend  # noqa: PLC0415
    from broker.data import ztf_alerts  # noqa: PLC0415
    from broker.factory import Factory  # noqa: PLC0415
    from broker.streaming.replay import iter_alert_files  # noqa: PLC0415
    from broker.streaming.schemas import latest_version  # noqa: PLC0415

    settings = get_settings().model_copy(update={"backend": Backend.embedded})
    if serve_api:
        check_port("127.0.0.1", port)
    factory = Factory(settings)
    queue = factory.memory_broker
    version = latest_version()
    queued = 0
    for key, value in simulated(count, version, seed, None):
        queue.produce(settings.topic_alerts_lsst, value, key=key)
        queued += 1
    ztf_count = 0
    for _, packet, object_id in iter_alert_files(ztf_alerts()):
        queue.produce(settings.topic_alerts_ztf, packet, key=object_id)
        ztf_count += 1
    stage = factory.ingest_stage(poll_timeout=0.05)
    with Progress(console=console) as progress:
        task = progress.add_task("ingesting into the embedded archive", total=queued + ztf_count)
        total = stage.run(once=True, idle_polls=2,
                          on_batch=lambda report: progress.advance(task, report.consumed))
    loaded = _demo_catalogs(factory)
    counts = dict(factory.catalog.counts())
    base = f"http://127.0.0.1:{port}"
    latest = next(iter(queue.messages(settings.topic_ingested)[-1:]), None)
    example = None
    if latest is not None:
        from broker.streaming import lanner_schemas  # noqa: PLC0415

        example = lanner_schemas.decode("ingested", latest.value)
    out.print(f"\narchived {total.archived} alerts ({queued} simulated Rubin {version}, "
              f"{ztf_count} real ZTF) into {settings.embedded_path}: "
              f"{counts.get('objects', 0)} objects, {counts.get('alert_rows', 0)} detections",
              highlight=False)
    _print_demo_urls(base, example, ztf_count, loaded)
    if not serve_api:
        factory.close()
        return
    import uvicorn  # noqa: PLC0415

    from api.app import create_app  # noqa: PLC0415

    out.print(f"\nserving on {base} (Ctrl-C stops)", highlight=False)
    uvicorn.run(create_app(factory), host="127.0.0.1", port=port, log_level="warning")


def _print_demo_urls(base: str, example: dict | None, ztf_count: int, loaded: list[str]) -> None:
    """The URLs the demo suggests opening."""
    out.print("\nworth opening:", highlight=False)
    out.print(f"  {base}/                      the landing page", highlight=False)
    out.print(f"  {base}/docs                  the API documentation", highlight=False)
    if example is not None:
        oid = example["object_id"]
        out.print(f"  {base}/api/v1/objects/{oid}", highlight=False)
        out.print(f"  {base}/api/v1/objects/{oid}/lightcurve", highlight=False)
        out.print(f"  {base}/api/v1/cone?ra={example['ra']:.5f}&dec={example['dec']:.5f}"
                  "&radius=60", highlight=False)
    if ztf_count:
        out.print(f"  {base}/api/v1/objects/ZTF18abmmoot/lightcurve   a real ZTF light curve",
                  highlight=False)
        out.print(f"  {base}/api/v1/cone?ra=197.6&dec=7.3&radius=1800   a real ZTF field",
                  highlight=False)
    if loaded:
        out.print(f"  reference catalogs: {', '.join(loaded)} (see {base}/api/v1/catalogs)",
                  highlight=False)
    if "hipparcos" in loaded:
        out.print(f"  {base}/api/v1/cone?ra=279.2341&dec=38.7830&radius=3600&catalog=hipparcos"
                  "   stars around Vega", highlight=False)
        out.print(f"  {base}/scs/hipparcos?RA=279.2341&DEC=38.7830&SR=1   the same, IVOA SCS",
                  highlight=False)
        if ztf_count:
            out.print(f"  {base}/api/v1/objects/ZTF20aabaesq/crossmatches?radius=300   a real "
                      "ZTF object's Hipparcos neighbour", highlight=False)


def _demo_catalogs(factory: Any) -> list[str]:
    """Load the bundled reference catalogs into the embedded archive (once; names loaded)."""
    from broker.data import CATALOGS  # noqa: PLC0415
    from broker.storage.refcat import open_catalog_file  # noqa: PLC0415

    present = {entry["name"] for entry in factory.refcats.list()}
    loaded = []
    for catalog in CATALOGS:
        if catalog.name not in present:
            with catalog.path() as path:
                source = open_catalog_file(path)
                try:
                    with console.status(f"loading the {catalog.name} catalog"):
                        factory.refcats.load(catalog.name, source.batches, catalog.id_col,
                                             catalog.ra_col, catalog.dec_col)
                finally:
                    source.close()
        loaded.append(catalog.name)
    return loaded
