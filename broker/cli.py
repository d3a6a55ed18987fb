"""The ``lanner`` command.

Errors end in one clear line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import structlog
import typer
from rich.console import Console
from rich.table import Table

from broker.config import get_settings
from broker.exceptions import LannerError
from broker.logs import configure_logging

app = typer.Typer(help="Lanner: an alert-stream broker with a sharded catalog archive.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
services_app = typer.Typer(help="Run the real services locally (Kafka, Cassandra, MariaDB shards).",
                           no_args_is_help=True)
app.add_typer(services_app, name="services")
catalog_app = typer.Typer(
    help="Reference catalogs in the chunked layout (load, list, purge-tombstones).",
    no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

console = Console(stderr=True)
out = Console(soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """Turn Lanner's own errors into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except LannerError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            # An unexpected failure still ends in one line; the traceback goes to the debug log.
            structlog.get_logger(__name__).debug("unexpected error", exc_info=True)
            console.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc}",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main() -> None:
    """Configure logging once for every command."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


ShardsOption = Annotated[
    int | None, typer.Option("--shards", min=1, max=16, help="Number of MariaDB shard servers.")
]


@services_app.command("up")
@clean_errors
def services_up(shards: ShardsOption = None) -> None:
    """Fetch (first time) and start Kafka, Cassandra and the MariaDB shards; wait until ready."""
    from broker.services import manager  # noqa: PLC0415 - keeps `lanner --help` fast

    def report(name: str, message: str) -> None:
        console.print(f"  {name:<12} {message}", highlight=False)

    with console.status("starting services (the first run downloads the jars)"):
        statuses = manager.up(get_settings(), shards, report)
    _print_status(statuses)


@services_app.command("fetch")
@clean_errors
def services_fetch() -> None:
    """Resolve the Kafka and Cassandra jars from Maven Central into the cache (once)."""
    from broker.services import manager  # noqa: PLC0415

    with console.status("resolving jars with Maven (first time only)"):
        for service in manager.build(get_settings()):
            service.fetch()
    out.print("jars are in " + str(get_settings().cache_dir / "jars"), highlight=False)


@services_app.command("down")
@clean_errors
def services_down() -> None:
    """Stop every service process that `services up` started, by pid."""
    from broker.services import manager  # noqa: PLC0415

    stopped = manager.down(get_settings())
    out.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@services_app.command("status")
@clean_errors
def services_status() -> None:
    """One line per service: name, state, address."""
    from broker.services import manager  # noqa: PLC0415

    statuses = manager.status(get_settings())
    _print_status(statuses)
    if any(s.state != "running" for s in statuses):
        raise typer.Exit(3)


@catalog_app.command("load")
@clean_errors
def catalog_load(
    name: Annotated[str, typer.Argument(help="Catalog name: lower-case letters, digits, _.")],
    file: Annotated[Path, typer.Argument(help="Parquet (.parquet) or CSV (.csv, .csv.gz) file.")],
    id_col: Annotated[str, typer.Option("--id-col", help="Column of the unique id.")] = "id",
    ra_col: Annotated[str, typer.Option("--ra-col", help="Column of RA, degrees.")] = "ra",
    dec_col: Annotated[str, typer.Option("--dec-col", help="Column of Dec, degrees.")] = "dec",
    batch_rows: Annotated[int, typer.Option(
        "--batch-rows", min=1000, max=5_000_000, help="Rows read and stored per batch.")] = 200_000,
) -> None:
    """Load (or reload, atomically) a reference catalog from a Parquet or CSV file.

    Fails at once if another process is loading or changing the same catalog.
    """
    import pyarrow as pa  # noqa: PLC0415
    from rich.progress import Progress  # noqa: PLC0415

    from broker.factory import Factory  # noqa: PLC0415
    from broker.storage.refcat import open_catalog_file  # noqa: PLC0415

    factory = Factory(get_settings())
    source = open_catalog_file(file, batch_rows)
    store = factory.refcats
    try:
        with Progress(console=console) as progress:
            task = progress.add_task(f"loading {name} ({source.unit})", total=source.total)
            report = store.load(name, source.batches, id_col, ra_col, dec_col,
                                lambda _: progress.update(task, completed=source.position()))
            progress.update(task, completed=source.total)
    except ValueError as exc:
        raise LannerError(str(exc)) from None
    except pa.ArrowException as exc:
        raise LannerError(f"cannot read {file}: {exc}") from None
    finally:
        source.close()
        factory.close()
    out.print(f"catalog {name} v{report.version}: {report.rows} rows, {report.skipped} skipped "
              f"(no valid position or id), {report.overlap_rows} overlap rows, "
              f"{report.seconds:.1f} s ({report.rows / max(report.seconds, 1e-9):,.0f} rows/s)",
              highlight=False)


@catalog_app.command("purge-tombstones")
@clean_errors
def catalog_purge_tombstones(
    name: Annotated[str, typer.Argument(help="Catalog name.")],
    older_than: Annotated[float | None, typer.Option(
        "--older-than", min=0,
        help="Remove tombstones of deletes applied more than this many seconds ago (default: "
             "LANNER_DR_TOMBSTONE_GRACE_S). Keep it above the retention of dr.updates plus its "
             "segment roll time, or an older change still in the topic can bring a deleted "
             "row back.")] = None,
) -> None:
    """Remove old tombstones of deleted rows (left by `lanner dr-updates`); rows are unchanged."""
    from broker.factory import Factory  # noqa: PLC0415

    settings = get_settings()
    grace = settings.dr_tombstone_grace_s if older_than is None else older_than
    factory = Factory(settings)
    store = factory.refcats
    try:
        removed = store.purge_tombstones(name, grace)
    except ValueError as exc:
        raise LannerError(str(exc)) from None
    finally:
        factory.close()
    age = f"{grace:,.0f} s ({grace / 86_400:g} days)" if grace >= 86_400 else f"{grace:g} s"
    out.print(f"catalog {name}: {removed} tombstones older than {age} removed", highlight=False)


@catalog_app.command("drop")
@clean_errors
def catalog_drop(
    name: Annotated[str, typer.Argument(help="Catalog name.")],
    yes: Annotated[bool, typer.Option(
        "--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Forget a reference catalog and drop its tables on every shard (waits for its lock)."""
    from broker.exceptions import UnknownCatalogError  # noqa: PLC0415
    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    store = factory.refcats
    try:
        entry = next((e for e in store.list() if e["name"] == name), None)
        if entry is None:
            raise UnknownCatalogError(name)
        if not yes and not typer.confirm(f"drop catalog {name} ({entry['rows']} rows)?"):
            raise typer.Exit(1)
        store.drop(name)
    finally:
        factory.close()
    out.print(f"catalog {name} dropped ({entry['rows']} rows)", highlight=False)


@catalog_app.command("list")
@clean_errors
def catalog_list() -> None:
    """One line per loaded reference catalog: name, rows, version, load time, columns."""
    from broker.factory import Factory  # noqa: PLC0415

    factory = Factory(get_settings())
    store = factory.refcats
    try:
        entries = store.list()
    finally:
        factory.close()
    if not entries:
        out.print("no reference catalogs loaded", highlight=False)
    for entry in entries:
        out.print(f"{entry['name']} {entry['rows']} rows v{entry['version']} "
                  f"loaded {entry['loaded_at']} columns: "
                  f"{','.join(c[0] for c in entry['columns'])}", highlight=False)


SchemaOption = Annotated[
    str, typer.Option("--schema", help="Rubin alert schema version (MAJOR.MINOR).")
]


@app.command()
@clean_errors
def simulate(
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Alerts to produce.")] = 1000,
    rate: Annotated[float | None, typer.Option(
        "--rate", min=0.001, help="Alerts per second (default: as fast as possible).")] = None,
    schema: SchemaOption = "",
    to: Annotated[str, typer.Option(
        "--to", help="'kafka' (the Rubin alert topic) or a folder for one file per alert."
    )] = "kafka",
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed for a repeatable stream.")] = None,
    topic: Annotated[str | None, typer.Option(
        "--topic", help="Topic to write to (default: the Rubin alert topic).")] = None,
) -> None:
    """Produce realistic synthetic Rubin alert packets (histories and FITS cutouts included)."""
    from broker.streaming.schemas import SchemaVersion, latest_version  # noqa: PLC0415

    settings = get_settings()
    version = SchemaVersion.parse(schema) if schema else latest_version()
    stream = _simulated(count, version, seed, rate)
    if to == "kafka":
        from broker.storage.kafka import KafkaClients, produce_all  # noqa: PLC0415

        target = topic or settings.topic_alerts_lsst
        clients = KafkaClients.from_settings(settings)
        clients.ensure_topics([target])
        sent = produce_all(clients.producer(), target, stream)
        out.print(f"{sent} alerts (schema {version}) on topic {target} at {clients.bootstrap}",
                  highlight=False)
    else:
        from broker.streaming import files, wire  # noqa: PLC0415

        # Files are named by diaSourceId; reading it back costs a decode, which is cheap next to
        # writing the file and keeps the simulator's output the exact bytes Kafka would carry.
        written = files.write_alerts(
            to, ((wire.decode(value)[1]["diaSource"]["diaSourceId"], value)
                 for _, value in stream)
        )
        out.print(f"{written} alerts (schema {version}) written to {to}", highlight=False)


@app.command()
@clean_errors
def replay(
    folder: Annotated[str, typer.Argument(help="Folder of Rubin or ZTF alert files.")],
    topic: Annotated[str, typer.Option("--topic", help="Topic to put them on.")],
) -> None:
    """Put a folder of alert files (Rubin wire format or Avro containers, ZTF) on a topic."""
    from pathlib import Path  # noqa: PLC0415

    from broker.storage.kafka import KafkaClients, produce_all  # noqa: PLC0415
    from broker.streaming.replay import iter_alert_files  # noqa: PLC0415

    if not Path(folder).is_dir():
        raise LannerError(f"{folder} is not a folder")
    clients = KafkaClients.from_settings(get_settings())
    clients.ensure_topics([topic])
    sent = produce_all(clients.producer(), topic,
                       ((key, value) for _, value, key in iter_alert_files(folder)))
    out.print(f"{sent} alerts from {folder} on topic {topic}", highlight=False)


@app.command()
@clean_errors
def ingest(
    once: Annotated[bool, typer.Option(
        "--once", help="Drain what is on the topics, then exit.")] = False,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", min=0, max=65535,
        help="Serve Prometheus metrics of this process on 127.0.0.1:PORT (0: off).")] = 0,
) -> None:
    """Run the ingest stage: alert topics into the archive, bad packets to the dead-letter topic."""
    from broker.factory import Factory  # noqa: PLC0415

    stopping = _stop_on_signals()

    if metrics_port:
        from prometheus_client import start_http_server  # noqa: PLC0415

        import broker.metrics  # noqa: F401, PLC0415 - register the metrics before serving them

        _check_port("127.0.0.1", metrics_port)
        start_http_server(metrics_port, addr="127.0.0.1")
    factory = Factory(get_settings())
    try:
        factory.ensure_topics()
        stage = factory.ingest_stage()
        stage.stopping = stopping
        total = stage.run(once=once)
        out.print(f"ingested {total.archived} alerts, {total.dead_lettered} to the dead-letter "
                  f"topic, from {total.consumed} packets", highlight=False)
    finally:
        factory.close()


@app.command("dr-updates")
@clean_errors
def dr_updates(
    once: Annotated[bool, typer.Option(
        "--once", help="Drain what is on the topic, then exit.")] = False,
) -> None:
    """Run the dr-updates stage: data-release changes (dr.updates) into the dr_objects catalog."""
    from broker.config import Backend  # noqa: PLC0415
    from broker.factory import Factory  # noqa: PLC0415

    stopping = _stop_on_signals()

    settings = get_settings()
    factory = Factory(settings)
    try:
        if settings.backend is not Backend.embedded:
            from broker.storage.kafka import KafkaClients  # noqa: PLC0415

            KafkaClients.from_settings(settings).ensure_topics(
                [settings.topic_dr_updates, settings.topic_dlq])
        stage = factory.dr_stage()
        stage.stopping = stopping
        total = stage.run(once=once)
        out.print(f"{settings.dr_catalog}: {total.upserted} rows written, {total.deleted} "
                  f"deleted, {total.ignored} changes not newer than stored, "
                  f"{total.dead_lettered} to the dead-letter topic, from {total.consumed} "
                  f"records; {total.purged} old tombstones purged", highlight=False)
    finally:
        factory.close()


@app.command()
@clean_errors
def run(
    ingest_processes: Annotated[int, typer.Option(
        "--ingest", min=1, max=64, help="Ingest processes (one consumer group).")] = 2,
    dr_updates: Annotated[bool, typer.Option(
        "--dr-updates/--no-dr-updates", help="Run the dr-updates stage.")] = True,
    api: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the API too.")] = True,
    port: Annotated[int, typer.Option(
        "--port", "-p", min=1, max=65535, help="API port (with --serve).")] = 8000,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=1, max=64, help="API worker processes.")] = 1,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", min=0, max=65535,
        help="Ingest process i serves its metrics on 127.0.0.1:PORT+i (0: off).")] = 0,
) -> None:
    """Run the broker on the real services: every stage (and the API) as supervised processes.

    A stage process that ends is restarted (back-off from 1 s to 60 s); SIGTERM or Ctrl-C stops
    them all, each finishing or abandoning (uncommitted) the batch in hand.
    """
    import socket  # noqa: PLC0415

    from broker.config import Backend  # noqa: PLC0415
    from broker.supervisor import Supervisor, lanner_child  # noqa: PLC0415

    stopping = _stop_on_signals()
    settings = get_settings()
    if settings.backend is Backend.embedded:
        msg = ("lanner run needs the real services (lanner services up, or LANNER_BACKEND="
               "services); the embedded backend lives in one process: lanner demo runs it")
        raise LannerError(msg)
    base_id = settings.ingest_instance_id or f"{socket.gethostname()}-ingest"
    children = [
        lanner_child(f"ingest-{i}", "ingest",
                     *(("--metrics-port", str(metrics_port + i)) if metrics_port else ()),
                     env={"LANNER_INGEST_INSTANCE_ID": f"{base_id}-{i}"})
        for i in range(ingest_processes)
    ]
    if dr_updates:
        children.append(lanner_child("dr-updates", "dr-updates"))
    if api:
        _check_port("127.0.0.1", port)
        children.append(lanner_child("api", "serve", "--port", str(port),
                                     "--workers", str(workers)))
    supervisor = Supervisor(children, report=lambda line: out.print(line, highlight=False))
    supervisor.stopping = stopping
    raise typer.Exit(supervisor.run())


@app.command()
@clean_errors
def serve(
    port: Annotated[int, typer.Option(
        "--port", "-p", min=1, max=65535, help="TCP port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=1, max=64,
        help="Worker processes. One process runs its requests' Python on one core (the GIL); "
             "give one per core on a busy server.")] = 1,
) -> None:
    """Serve the HTTP API (objects, light curves, cutouts, cone search, status; docs at /docs)."""
    import uvicorn  # noqa: PLC0415

    # uvicorn logs a busy port among its start-up lines; checking first ends in one clear line.
    _check_port(host, port)
    out.print(f"serving the API on http://{host}:{port} (docs at /docs) with {workers} worker "
              f"process{'es' if workers > 1 else ''}; Ctrl-C stops", highlight=False)
    level = get_settings().log_level.lower()
    log_level = level if level in ("critical", "error", "warning", "info", "debug") else "info"
    if workers == 1:
        uvicorn.run("api.app:create_app", factory=True, host=host, port=port,
                    log_level=log_level)
        return
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

    # What uvicorn.run does for workers > 1, but with our own listener: uvicorn's binds it with
    # proto 0, accepted sockets inherit that, and asyncio then leaves TCP_NODELAY off, so each
    # keep-alive request waits ~40 ms for the client's delayed ACK (uvicorn issue #3149;
    # measured here: 48 ms instead of 2.6 ms per cone search).
    config = uvicorn.Config("api.app:create_app", factory=True, host=host, port=port,
                            workers=workers, log_level=log_level)
    Multiprocess(config, sockets=[tcp_listener(host, port)]).run()


@app.command()
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
        _check_port("127.0.0.1", port)
    factory = Factory(settings)
    queue = factory.memory_broker
    version = latest_version()
    queued = 0
    for key, value in _simulated(count, version, seed, None):
        queue.produce(settings.topic_alerts_lsst, value, key=key)
        queued += 1
    ztf_count = 0
    for _, value, key in iter_alert_files(ztf_alerts()):
        queue.produce(settings.topic_alerts_ztf, value, key=key)
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


def _stop_on_signals() -> Any:
    """An event set by SIGTERM or SIGINT, installed before anything slow starts.

    A stage takes it as its stop flag: it finishes (or abandons, uncommitted) the batch in hand
    and returns. Installed first, so a signal during start-up also ends the process cleanly.
    """
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    return stopping


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


def tcp_listener(host: str, port: int) -> Any:
    """A listening TCP socket that says it is TCP (``IPPROTO_TCP``), inheritable by workers.

    asyncio turns TCP_NODELAY on for an accepted connection only when the socket's ``proto``
    is ``IPPROTO_TCP``, and accepted sockets take it from the listener.
    """
    import socket  # noqa: PLC0415

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LannerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _check_port(host: str, port: int) -> None:
    """Fail with one clear line if the port is taken."""
    import os  # noqa: PLC0415
    import socket  # noqa: PLC0415

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise LannerError(f"cannot listen on {host}:{port}: {reason}") from None


def _simulated(count: int, version: Any, seed: int | None, rate: float | None) -> Any:
    """Yield (key, wire-format value) with a progress bar, paced to ``rate``."""
    import time  # noqa: PLC0415

    from rich.progress import Progress  # noqa: PLC0415

    from broker.simulator import AlertSimulator  # noqa: PLC0415

    simulator = AlertSimulator(schema=version, seed=seed)
    started = time.monotonic()
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(f"simulating schema {version}", total=count)
        for done, (key, value) in enumerate(simulator.encoded(count), start=1):
            if rate is not None:
                delay = started + done / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield key, value
            progress.advance(task)


def _print_status(statuses: list[Any]) -> None:
    if not sys.stdout.isatty():
        for s in statuses:
            out.print(f"{s.name} {s.state} {s.address}", highlight=False)
        return
    table = Table(show_header=True, header_style="bold", box=None)
    for column in ("service", "state", "address", "pid", "log"):
        table.add_column(column)
    for s in statuses:
        colour = "green" if s.state == "running" else "red"
        table.add_row(s.name, f"[{colour}]{s.state}[/{colour}]", s.address,
                      str(s.pid or "-"), s.log)
    out.print(table)


if __name__ == "__main__":
    app()
