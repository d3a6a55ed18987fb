"""MariaDB shard servers from Debian's ``mariadb-server``: one datadir, port and socket each."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pymysql

from broker.constants import MARIADB_START_TIMEOUT_S
from broker.exceptions import ServiceError
from broker.services import process
from broker.services.base import LocalService, port_open

_INSTALL_HINT = "install Debian's mariadb-server (make install does)"
# Two bootstraps at once were seen to collide on temporary tables; initialise one at a time.
_install_lock = threading.Lock()


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()),
            None,
        )
        if found:
            return found
    raise ServiceError("mariadb", f"{names[0]} not found: {_INSTALL_HINT}")


class MariaDBService(LocalService):
    """One shard server on ``127.0.0.1:<port>``; root has an empty password on loopback."""

    start_timeout = MARIADB_START_TIMEOUT_S

    def __init__(self, *, home: Path, index: int, port: int, buffer_pool: str = "256M",
                 key_buffer: str = "1G") -> None:
        self.name = f"mariadb-{index}"
        super().__init__(home=home)
        self.index = index
        self.port = port
        self.buffer_pool = buffer_pool
        # The reference catalogs are MyISAM tables, whose index blocks live in the key cache:
        # with the default 128 MB, a 1e8-row catalog (1.7 GB of index per shard) would read
        # most index blocks through a system call at every cone search. Memory is taken as
        # blocks are used, not up front.
        self.key_buffer = key_buffer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def socket(self) -> Path:
        return self.home / "mysqld.sock"

    @property
    def tmpdir(self) -> Path:
        return self.home / "tmp"

    def launch(self) -> None:
        datadir = self.home / "data"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        if not (datadir / "mysql").is_dir():
            with _install_lock:
                self._install_db(datadir)
        if port_open("127.0.0.1", self.port):
            raise ServiceError(self.name, f"port {self.port} is already taken by another process")
        argv = [
            _binary("mariadbd", "mysqld"),
            # Keep the machine's /etc/mysql configuration out of our servers.
            "--no-defaults",
            "--user=root",
            f"--datadir={datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--tmpdir={self.tmpdir}",
            f"--pid-file={self.home / 'mysqld-own.pid'}",
            f"--log-error={self.files.log_file}",
            "--local-infile=1",
            f"--innodb-buffer-pool-size={self.buffer_pool}",
            f"--key-buffer-size={self.key_buffer}",
            "--innodb-flush-log-at-trx-commit=2",
            "--max-connections=500",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
        ]
        process.start(self.files, argv)
        (self.home / "port").write_text(f"{self.port}\n")

    def _install_db(self, datadir: Path) -> None:
        datadir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        with self.files.log_file.open("ab") as log:
            result = subprocess.run(
                [_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", "--user=root",
                 f"--datadir={datadir}", f"--tmpdir={self.tmpdir}",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                stdout=log, stderr=subprocess.STDOUT, check=False, timeout=120,
            )
        if result.returncode != 0:
            shutil.rmtree(datadir, ignore_errors=True)
            raise ServiceError(self.name, "mariadb-install-db failed", str(self.files.log_file))

    def ready(self) -> bool:
        connection = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                                     connect_timeout=2)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                return cursor.fetchone() == (1,)
        finally:
            connection.close()
