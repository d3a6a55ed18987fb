"""What every local service offers the manager."""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from string import Template

from broker.services import process
from broker.services.process import ProcessFiles


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One line of ``lanner services status``."""

    name: str
    state: str  # "running", "stopped" or "not answering"
    address: str
    pid: int | None
    log: str


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def render(template: Path, target: Path, **values: object) -> None:
    """Write ``template`` with its ``${name}`` fields filled in."""
    text = Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


class LocalService(ABC):
    """A server the project starts and stops by pid on loopback."""

    name: str
    start_timeout: float

    def __init__(self, *, home: Path) -> None:
        self.home = home
        self.files = ProcessFiles(home=home, name=self.name)

    @property
    @abstractmethod
    def address(self) -> str:
        """host:port clients use."""

    def fetch(self) -> None:  # noqa: B027 - most services have nothing to fetch
        """Download what the service needs, once (may be slow; safe to run twice)."""

    @abstractmethod
    def launch(self) -> None:
        """Prepare the data folder if needed and start the process in the background."""

    @abstractmethod
    def ready(self) -> bool:
        """True once clients can use the service."""

    def pid(self) -> int | None:
        """Pid of our running process, if any."""
        return process.running_pid(self.files)

    def wait(self) -> None:
        """Block until ready, or raise ServiceError with a one-line reason and the log path."""
        process.wait_ready(self.files, self.ready, timeout=self.start_timeout)

    def stop(self) -> bool:
        """Stop our process (SIGTERM, then SIGKILL); True if one was running."""
        return process.stop(self.files)

    def status(self) -> ServiceStatus:
        """Current state, checked against the process and the port."""
        pid = self.pid()
        if pid is None:
            state = "stopped"
        else:
            host, _, port = self.address.rpartition(":")
            state = "running" if port_open(host, int(port)) else "not answering"
        return ServiceStatus(self.name, state, self.address, pid, str(self.files.log_file))
