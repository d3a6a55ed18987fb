"""Bring the local services up, down, and report on them.

``up`` is idempotent: a service whose process is already ours and answering is left alone. After
a successful ``up``, the addresses are recorded in ``<state_dir>/services.json`` so that every
later ``lanner`` command and the test suite use them with no further settings; ``down`` removes
the record after stopping every process it started.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from broker.config import SERVICES_FILE, Settings
from broker.exceptions import ServiceError
from broker.services.base import LocalService, ServiceStatus
from broker.services.cassandra import CassandraService
from broker.services.kafka import KafkaService
from broker.services.mariadb import MariaDBService

log = structlog.get_logger(__name__)

Reporter = Callable[[str, str], None]


def _services_root(settings: Settings) -> Path:
    return settings.state_dir / "services"


def _recorded(settings: Settings) -> dict:
    try:
        data = json.loads((settings.state_dir / SERVICES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def shard_ports(settings: Settings, shards: int | None) -> list[int]:
    """Ports of the MariaDB shards: the configured ones, or ``shards`` consecutive ports."""
    ports = [port for _, port in settings.shard_addresses]
    if shards is None:
        recorded = _recorded(settings).get("settings", {}).get("mariadb_shards")
        if recorded:
            return [int(a.rpartition(":")[2]) for a in recorded]
        return ports
    if shards < 1:
        raise ServiceError("mariadb", "at least one shard is needed")
    return [ports[0] + i for i in range(shards)]


def build(settings: Settings, shards: int | None = None) -> list[LocalService]:
    """The local services these settings describe, in start order."""
    root = _services_root(settings)
    host = settings.kafka_bootstrap.split(",")[0]
    kafka_port = int(host.rpartition(":")[2])
    services: list[LocalService] = [
        MariaDBService(home=root / f"mariadb-{i}", index=i, port=port)
        for i, port in enumerate(shard_ports(settings, shards))
    ]
    services.append(KafkaService(
        home=root / "kafka", deploy_dir=settings.deploy_dir, cache_dir=settings.cache_dir,
        broker_port=kafka_port, controller_port=settings.kafka_controller_port,
        partitions=settings.kafka_partitions,
    ))
    services.append(CassandraService(
        home=root / "cassandra", deploy_dir=settings.deploy_dir, cache_dir=settings.cache_dir,
        native_port=settings.cassandra_port, storage_port=settings.cassandra_storage_port,
    ))
    return services


def _ignore(_name: str, _message: str) -> None:
    return None


def up(
    settings: Settings, shards: int | None = None, report: Reporter = _ignore
) -> list[ServiceStatus]:
    """Fetch, start and wait for every service; record their addresses.

    Raises
    ------
    ServiceError
        For the first service that cannot be fetched or started, with its log path. Services
        that did start are left running (``down`` stops them).
    """
    services = build(settings, shards)

    def bring_up(service: LocalService) -> None:
        if service.pid() is not None:
            try:
                ready = service.ready()
            except Exception:  # any failure to answer means "not ready yet"
                ready = False
            if ready:
                report(service.name, "already running")
                return
            report(service.name, "waiting for the running process")
        else:
            report(service.name, "fetching")
            service.fetch()
            report(service.name, "starting")
            service.launch()
        service.wait()
        report(service.name, f"ready on {service.address}")

    # The JVMs start in parallel; their start-up, not ours, is what takes time.
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        futures = [pool.submit(bring_up, s) for s in services]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        raise failed[0]
    _record(settings, services)
    return [s.status() for s in services]


def _record(settings: Settings, services: list[LocalService]) -> None:
    kafka = next(s for s in services if isinstance(s, KafkaService))
    cassandra = next(s for s in services if isinstance(s, CassandraService))
    shards = [s.address for s in services if isinstance(s, MariaDBService)]
    record = {
        "settings": {
            "backend": "services",
            "kafka_bootstrap": kafka.address,
            "cassandra_hosts": ["127.0.0.1"],
            "cassandra_port": cassandra.native_port,
            "mariadb_shards": shards,
        },
        "services": {
            s.name: {"address": s.address, "pid": s.pid(), "log": str(s.files.log_file)}
            for s in services
        },
    }
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    target = settings.state_dir / SERVICES_FILE
    staging = target.with_suffix(".tmp")
    staging.write_text(json.dumps(record, indent=2) + "\n")
    staging.replace(target)


def _known(settings: Settings) -> list[LocalService]:
    """Every service with a folder under the state dir, including shards beyond the settings."""
    services = build(settings)
    names = {s.name for s in services}
    root = _services_root(settings)
    extra_ports = {}
    for home in sorted(root.glob("mariadb-*")) if root.is_dir() else []:
        if home.name not in names and home.name.rpartition("-")[2].isdigit():
            extra_ports[int(home.name.rpartition("-")[2])] = home
    for index, home in extra_ports.items():
        try:
            port = int((home / "port").read_text())
        except (OSError, ValueError):
            port = 0
        services.insert(index, MariaDBService(home=home, index=index, port=port))
    return services


def down(settings: Settings, report: Reporter = _ignore) -> list[str]:
    """Stop every process ``up`` started (by pid); return the names stopped."""
    services = _known(settings)
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        stopped = list(pool.map(lambda s: (s.name, s.stop()), services))
    (settings.state_dir / SERVICES_FILE).unlink(missing_ok=True)
    names = [name for name, was_running in stopped if was_running]
    for name in names:
        report(name, "stopped")
    return names


def status(settings: Settings) -> list[ServiceStatus]:
    """The state of every known service."""
    return [s.status() for s in _known(settings)]
