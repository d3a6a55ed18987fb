"""``lanner ingest``, ``lanner dr-updates``, ``lanner enrich`` and ``lanner run``: the broker's
stages as processes."""

from __future__ import annotations

import enum
import importlib
from functools import partial
from typing import Annotated, Any

import typer

from broker.cli.common import check_port, clean_errors, out, stop_on_signals
from broker.config import Backend, Settings, get_settings
from broker.exceptions import LannerError

#: What ``--once`` does when the group gives the process nothing to drain (docs/operations.md).
ONCE_BOUND = ("exit non-zero if the group assigns this process no partition within "
              "LANNER_ONCE_WAIT_S (default: the session timeout plus 15 s).")


@clean_errors
def ingest(
    once: Annotated[bool, typer.Option(
        "--once", help=f"Drain what is on the topics, then exit; {ONCE_BOUND}")] = False,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", min=0, max=65535,
        help="Serve Prometheus metrics of this process on 127.0.0.1:PORT (0: off).")] = 0,
) -> None:
    """Run the ingest stage: alert topics into the archive, bad packets to the dead-letter topic."""
    from broker.factory import Factory  # noqa: PLC0415
    from consumers import ingest as ingest_stage  # noqa: PLC0415

    stopping = stop_on_signals()

    if metrics_port:
        from prometheus_client import start_http_server  # noqa: PLC0415

        import broker.metrics  # noqa: F401, PLC0415 - register the metrics before serving them

        check_port("127.0.0.1", metrics_port)
        start_http_server(metrics_port, addr="127.0.0.1")
    factory = Factory(get_settings())
    try:
        factory.ensure_topics()
        stage = ingest_stage.build(factory)
        stage.stopping = stopping
        total = stage.run(once=once)
        out.print(f"ingested {total.archived} alerts, {total.dead_lettered} to the dead-letter "
                  f"topic, from {total.consumed} packets", highlight=False)
    finally:
        factory.close()


@clean_errors
def dr_updates(
    once: Annotated[bool, typer.Option(
        "--once", help=f"Drain what is on the topic, then exit; {ONCE_BOUND}")] = False,
) -> None:
    """Run the dr-updates stage: data-release changes (dr.updates) into the dr_objects catalog."""
    from broker.factory import Factory  # noqa: PLC0415
    from consumers import dr_updates as dr_stage  # noqa: PLC0415

    stopping = stop_on_signals()

    settings = get_settings()
    factory = Factory(settings)
    try:
        if settings.backend is not Backend.embedded:
            from broker.storage.kafka import KafkaClients  # noqa: PLC0415

            KafkaClients.from_settings(settings).ensure_topics(
                [settings.topic_dr_updates, settings.topic_dlq])
        stage = dr_stage.build(factory)
        stage.stopping = stopping
        total = stage.run(once=once)
        out.print(f"{settings.dr_catalog}: {total.upserted} rows written, {total.deleted} "
                  f"deleted, {total.ignored} changes not newer than stored, "
                  f"{total.dead_lettered} to the dead-letter topic, from {total.consumed} "
                  f"records; {total.purged} old tombstones purged", highlight=False)
    finally:
        factory.close()


class Engine(enum.StrEnum):
    """The stream library a stage runs on (bench/enrich.py and bench/filters_engines.py
    measure both)."""

    confluent = "confluent"
    """The confluent-kafka loop of `consumers.stage` (the default)."""

    faust = "faust"
    """A faust-streaming agent on the same code (the ``faust`` extra)."""


def _check_group(settings: Settings, group: str, engine: Engine) -> None:
    """Refuse to start while members of the other engine are in the stage's consumer group.

    Both engines use the same group (its committed offsets are the stage's progress, whichever
    engine runs), but Kafka refuses a member whose partition assignors share none with the
    group's, and neither client gives up on that: the newcomer would wait forever, silently.
    """
    from broker.storage.kafka import FAUST_ASSIGNOR, group_assignor  # noqa: PLC0415

    assignor, members = group_assignor(settings.kafka_bootstrap, group)
    if members and assignor and (assignor == FAUST_ASSIGNOR) != (engine is Engine.faust):
        other = "faust" if assignor == FAUST_ASSIGNOR else "confluent"
        raise LannerError(f"consumer group {group} has {members} live member(s) of the {other} "
                          f"engine (partition assignor {assignor!r}); the engines share the "
                          "group but cannot be in it together: stop them first (a killed "
                          "process's member stays until its session times out, "
                          "LANNER_KAFKA_SESSION_TIMEOUT_S)")


def _faust_engine(settings: Settings, once: bool, module: str) -> Any:
    """The faust engine's module of a stage, or why it cannot run."""
    if once:
        raise LannerError("--once needs the confluent engine: the faust engine runs until it "
                          "is stopped (SIGTERM or Ctrl-C)")
    if settings.backend is Backend.embedded:
        raise LannerError("the faust engine needs Kafka (LANNER_BACKEND=services or "
                          "lanner services up)")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LannerError(f"the faust engine needs faust-streaming (pip install "
                          f"'lanner[faust]'): {exc}") from None


_ENGINE_HELP = ("Stream library: the confluent-kafka loop or the faust-streaming agent (same "
                "work, same outputs, same consumer group).")


@clean_errors
def enrich(
    once: Annotated[bool, typer.Option(
        "--once", help=f"Drain what is on internal.ingested, then exit; {ONCE_BOUND} "
        "Confluent engine only.")] = False,
    engine: Annotated[Engine, typer.Option("--engine", help=_ENGINE_HELP)] = Engine.confluent,
) -> None:
    """Run the enrich stage: every ingested alert's object cross-matched against the reference
    catalogs and put in context (docs/context.md), onto internal.enriched."""
    from broker.factory import Factory  # noqa: PLC0415

    settings = get_settings()
    if engine is Engine.faust:
        enrich_faust = _faust_engine(settings, once, "consumers.enrich_faust")
        # The faust worker installs its own SIGTERM and SIGINT handlers (a clean stop).
        factory = Factory(settings)
        try:
            factory.ensure_topics()
            _check_group(settings, settings.enrich_group, engine)
            total = enrich_faust.build(factory).run()
        finally:
            factory.close()
    else:
        from consumers import enrich as enrich_stage  # noqa: PLC0415

        stopping = stop_on_signals()
        factory = Factory(settings)
        try:
            factory.ensure_topics()
            if settings.backend is Backend.services:
                _check_group(settings, settings.enrich_group, engine)
            stage = enrich_stage.build(factory)
            stage.stopping = stopping
            total = stage.run(once=once)
        finally:
            factory.close()
    contexts = ", ".join(f"{n} {label}" for label, n in sorted(total.contexts.items()))
    out.print(f"enriched {total.enriched} alerts ({contexts or 'none'}), "
              f"{total.dead_lettered} to the dead-letter topic, from {total.consumed} "
              "records", highlight=False)


@clean_errors
def filters(
    once: Annotated[bool, typer.Option(
        "--once", help=f"Drain what is on internal.enriched, then exit; {ONCE_BOUND} "
        "Confluent engine only.")] = False,
    engine: Annotated[Engine, typer.Option("--engine", help=_ENGINE_HELP)] = Engine.confluent,
) -> None:
    """Run the filters stage: every enabled user filter (docs/filters.md) on every enriched
    alert, the passing alerts published on each filter's topic filter.<owner>.<name>."""
    from broker.factory import Factory  # noqa: PLC0415
    from consumers import filters as filters_stage  # noqa: PLC0415

    settings = get_settings()
    faust_engine = (_faust_engine(settings, once, "consumers.filters_faust")
                    if engine is Engine.faust else None)
    factory = Factory(settings)
    try:
        factory.ensure_topics()
        if settings.backend is Backend.services:
            _check_group(settings, settings.filters_group, engine)
        if faust_engine is not None:
            # The faust worker installs its own SIGTERM and SIGINT handlers (a clean stop).
            runner = faust_engine.build(factory)
            stage, run_stage = runner.stage, runner.run
        else:
            stage = filters_stage.build(factory)
            stage.stopping = stop_on_signals()
            run_stage = partial(stage.run, once=once)
        try:
            total = run_stage()
        finally:
            if stage.notifier is not None:
                stage.notifier.drain(30.0)  # what is queued goes out before the process ends
                stage.notifier.close()
    finally:
        factory.close()
    out.print(f"published {total.published} alerts for {len(total.by_filter)} filters "
              f"({total.dropped} past daily caps), {total.dead_lettered} to the dead-letter "
              f"topic, from {total.consumed} records", highlight=False)


@clean_errors
def run(
    ingest_processes: Annotated[int, typer.Option(
        "--ingest", min=1, max=64, help="Ingest processes (one consumer group).")] = 2,
    dr_updates: Annotated[bool, typer.Option(
        "--dr-updates/--no-dr-updates", help="Run the dr-updates stage.")] = True,
    enrich: Annotated[bool, typer.Option(
        "--enrich/--no-enrich", help="Run the enrich stage.")] = True,
    run_filters: Annotated[bool, typer.Option(
        "--filters/--no-filters", help="Run the filters stage.")] = True,
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

    from broker.supervisor import Supervisor, lanner_child  # noqa: PLC0415

    stopping = stop_on_signals()
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
    if enrich:
        children.append(lanner_child("enrich", "enrich"))
    if run_filters:
        children.append(lanner_child("filters", "filters"))
    if api:
        check_port("127.0.0.1", port)
        children.append(lanner_child("api", "serve", "--port", str(port),
                                     "--workers", str(workers)))
    supervisor = Supervisor(children, report=lambda line: out.print(line, highlight=False))
    supervisor.stopping = stopping
    raise typer.Exit(supervisor.run())
