"""Cassandra through the DataStax driver: one cluster object per process, sessions per keyspace."""

from __future__ import annotations

import logging
import re

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from broker.config import Settings
from broker.exceptions import ServiceUnavailableError

#: The single local node starts in this data centre (SimpleSnitch's name for it).
LOCAL_DC = "datacenter1"

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

# The driver warns at INFO about defaults we set on purpose; keep its chatter out of our logs.
logging.getLogger("cassandra").setLevel(logging.WARNING)


def make_cluster(hosts: list[str], port: int, *, connect_timeout: float = 10.0) -> Cluster:
    """A driver cluster with token-aware routing in the local data centre."""
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=LOCAL_DC)),
        request_timeout=30.0,
    )
    return Cluster(hosts, port=port, protocol_version=5, connect_timeout=connect_timeout,
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile})


class CassandraConnection:
    """Owns the driver cluster of one process and hands out the archive keyspace's session."""

    def __init__(self, *, hosts: list[str], port: int, keyspace: str) -> None:
        if not _IDENTIFIER.match(keyspace):
            msg = f"keyspace name {keyspace!r} is not a plain lower-case identifier"
            raise ValueError(msg)
        self.hosts = hosts
        self.port = port
        self.keyspace = keyspace
        self._cluster: Cluster | None = None
        self._session: Session | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CassandraConnection:
        return cls(hosts=settings.cassandra_hosts, port=settings.cassandra_port,
                   keyspace=settings.cassandra_keyspace)

    def session(self) -> Session:
        """A session bound to the keyspace, created (replication factor 1) if missing."""
        if self._session is not None:
            return self._session
        self._cluster = make_cluster(self.hosts, self.port)
        try:
            session = self._cluster.connect()
        except Exception as exc:
            self._cluster.shutdown()
            self._cluster = None
            where = ",".join(self.hosts)
            msg = f"Cassandra at {where}:{self.port} does not answer: {exc}"
            raise ServiceUnavailableError(msg) from exc
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        session.set_keyspace(self.keyspace)
        self._session = session
        return session

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
        self._cluster = None
        self._session = None
