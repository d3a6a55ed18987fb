"""Apache Cassandra 5.0, one node, from its Maven Central jars on Java 17."""

from __future__ import annotations

import shutil
from pathlib import Path

from broker.constants import CASSANDRA_START_TIMEOUT_S
from broker.exceptions import ServiceError
from broker.services import maven, process
from broker.services.base import LocalService, port_open, render

_MAIN = "org.apache.cassandra.service.CassandraDaemon"


def jvm_options(path: Path) -> list[str]:
    """The options file as a list: one option per line, # comments and blank lines dropped."""
    options = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            options.append(stripped)
    return options


class CassandraService(LocalService):
    """Cassandra with CQL on ``127.0.0.1:<native_port>``."""

    name = "cassandra"
    start_timeout = CASSANDRA_START_TIMEOUT_S

    def __init__(self, *, home: Path, deploy_dir: Path, cache_dir: Path, native_port: int,
                 storage_port: int) -> None:
        super().__init__(home=home)
        self.deploy_dir = deploy_dir
        self.cache_dir = cache_dir
        self.native_port = native_port
        self.storage_port = storage_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.native_port}"

    def fetch(self) -> None:
        maven.fetch(self.deploy_dir, self.cache_dir, "cassandra")

    def launch(self) -> None:
        java = shutil.which("java")
        if java is None:
            raise ServiceError(self.name, "java is not installed (Java 17 runs Cassandra 5.0)")
        for port in (self.native_port, self.storage_port):
            if port_open("127.0.0.1", port):
                raise ServiceError(self.name, f"port {port} is already taken by another process")
        lib = maven.fetch(self.deploy_dir, self.cache_dir, "cassandra")
        templates = self.deploy_dir / "local" / "cassandra"
        config = self.home / "cassandra.yaml"
        render(templates / "cassandra.yaml", config, home=self.home,
               native_port=self.native_port, storage_port=self.storage_port)
        logback = self.home / "logback.xml"
        shutil.copyfile(templates / "logback.xml", logback)
        argv = [java, *jvm_options(templates / "jvm17.options")]
        # The launcher scripts add jamm as an agent for exact memtable sizing; without it
        # Cassandra falls back to Unsafe, so a missing jar is not fatal.
        jamm = sorted(lib.glob("jamm-*.jar"))
        if jamm:
            argv.append(f"-javaagent:{jamm[-1]}")
        argv += [
            f"-Dcassandra.config=file://{config}",
            f"-Dcassandra.storagedir={self.home}",
            f"-Dcassandra.logdir={self.home}",
            f"-Dlogback.configurationFile={logback}",
            "-cp", f"{self.home}:{lib}/*",
            _MAIN,
        ]
        process.start(self.files, argv)

    def ready(self) -> bool:
        if not port_open("127.0.0.1", self.native_port):
            return False
        # Imported here: the driver picks an event loop at import time, which costs a moment
        # that commands not touching Cassandra should not pay.
        from broker.storage.cassandra import make_cluster  # noqa: PLC0415

        cluster = make_cluster(["127.0.0.1"], self.native_port, connect_timeout=3)
        try:
            session = cluster.connect()
            session.execute("SELECT release_version FROM system.local", timeout=5)
        finally:
            cluster.shutdown()
        return True
