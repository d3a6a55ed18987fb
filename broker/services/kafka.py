"""Apache Kafka 4.x in KRaft mode: one combined broker/controller from Maven Central jars."""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from broker.constants import KAFKA_START_TIMEOUT_S
from broker.exceptions import ServiceError
from broker.services import maven, process
from broker.services.base import LocalService, port_open, render

_JVM_OPTIONS = [
    "-Xms512m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
    # The Maven artifact has no log4j config; slf4j-simple writes INFO lines to stderr.
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn",
]


class KafkaService(LocalService):
    """Kafka on ``127.0.0.1:<broker_port>`` with its controller on ``<controller_port>``."""

    name = "kafka"
    start_timeout = KAFKA_START_TIMEOUT_S

    def __init__(self, *, home: Path, deploy_dir: Path, cache_dir: Path, broker_port: int,
                 controller_port: int, partitions: int) -> None:
        super().__init__(home=home)
        self.deploy_dir = deploy_dir
        self.cache_dir = cache_dir
        self.broker_port = broker_port
        self.controller_port = controller_port
        self.partitions = partitions

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def fetch(self) -> None:
        maven.fetch(self.deploy_dir, self.cache_dir, "kafka")

    def _java(self, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise ServiceError(self.name, "java is not installed (Java 17 runs Kafka)")
        lib = maven.fetch(self.deploy_dir, self.cache_dir, "kafka")
        return [java, *_JVM_OPTIONS, f"-Dlanner.home={self.home}", "-cp", f"{lib}/*", main, *args]

    def launch(self) -> None:
        config = self.home / "server.properties"
        data = self.home / "data"
        render(self.deploy_dir / "local" / "kafka" / "server.properties", config,
               broker_port=self.broker_port, controller_port=self.controller_port,
               data_dir=data, partitions=self.partitions)
        if not (data / "meta.properties").is_file():
            self._format(config)
        for port in (self.broker_port, self.controller_port):
            if port_open("127.0.0.1", port):
                raise ServiceError(self.name, f"port {port} is already taken by another process")
        process.start(self.files, self._java("kafka.Kafka", str(config)))

    def _format(self, config: Path) -> None:
        # A KRaft cluster id is 16 random bytes in URL-safe base64 without padding; making it
        # here saves a JVM start of `StorageTool random-uuid`.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.home.mkdir(parents=True, exist_ok=True)
        with self.files.log_file.open("ab") as log:
            result = subprocess.run(
                # `=` form: an id starting with "-" would otherwise read as an option.
                self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                           "-c", str(config), "--ignore-formatted"),
                stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
            )
        if result.returncode != 0:
            reason = process.last_error_line(self.files)
            raise ServiceError(self.name, f"storage format failed: {reason}",
                               str(self.files.log_file))

    def ready(self) -> bool:
        if not port_open("127.0.0.1", self.broker_port):
            return False
        admin = AdminClient({"bootstrap.servers": self.address, "socket.timeout.ms": 2000})
        metadata = admin.list_topics(timeout=3)
        return bool(metadata.brokers)
