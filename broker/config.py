"""Lanner's settings: one pydantic-settings object, ``LANNER_*`` environment variables.

Defaults point at embedded mode. ``lanner services up`` writes the addresses of the services it
started into ``<state_dir>/services.json``; while that file exists, every later ``lanner`` command
and the test suite read it, so they use those services with no further settings. Explicit
environment variables still win over it.
"""

from __future__ import annotations

import enum
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.constants import DEFAULT_CHUNK_STRIPES, DEFAULT_CHUNK_SUB_STRIPES

SERVICES_FILE = "services.json"

#: Default age after which the dr-updates stage purges tombstones of deleted catalog rows: the
#: broker defaults' retention (7 days) plus segment roll time (7 days) of ``dr.updates``, plus a
#: day of margin (docs/operations.md gives the rule).
DEFAULT_TOMBSTONE_GRACE_S = 15 * 86_400.0
#: Default seconds between two tombstone purges of the dr-updates stage.
DEFAULT_TOMBSTONE_PURGE_INTERVAL_S = 3_600.0
#: Default consumer-group session timeout of Lanner's Kafka consumers, seconds.
DEFAULT_SESSION_TIMEOUT_S = 30.0
#: What a stage run with ``--once`` waits for a rebalance on top of the session timeout, seconds:
#: once the dead members' sessions expire, the live ones rejoin at their next heartbeat (3 s) and
#: poll, and the leader assigns. Under a second on the local services; the rest is margin for
#: a live member finishing its batch.
ONCE_REBALANCE_ALLOWANCE_S = 15.0
#: Default wait bound of ``--once`` runs with the default session timeout.
DEFAULT_ONCE_WAIT_S = DEFAULT_SESSION_TIMEOUT_S + ONCE_REBALANCE_ALLOWANCE_S


class Backend(enum.StrEnum):
    """Where the broker keeps its queues and its archive."""

    embedded = "embedded"
    """One process, an in-process queue and SQLite: no servers."""

    services = "services"
    """Kafka, Cassandra and MariaDB shard servers."""


class LogFormat(enum.StrEnum):
    """How log lines are rendered."""

    console = "console"
    json = "json"


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lanner"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lanner"


def _repo_deploy_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "deploy"


class _ServicesFileSource(PydanticBaseSettingsSource):
    """Reads the addresses that ``lanner services up`` recorded, if any."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        state_dir = os.environ.get("LANNER_STATE_DIR")
        path = (Path(state_dir) if state_dir else _default_state_dir()) / SERVICES_FILE
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return recorded.get("settings", {}) if isinstance(recorded, dict) else {}


class Settings(BaseSettings):
    """Every setting of Lanner. Each field reads the environment variable ``LANNER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="LANNER_", env_file=".env", extra="ignore")

    backend: Backend = Field(Backend.embedded, description="Queues and stores to use.")
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Folder holding the data, logs and pid files of the local services.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Folder caching downloads (the Kafka and Cassandra jars).",
    )
    deploy_dir: Path = Field(
        default_factory=_repo_deploy_dir,
        description="The repository's deploy/ folder (Maven poms and service config templates).",
    )
    embedded_shards: int = Field(
        2, ge=1, le=64,
        description="SQLite files the embedded catalogs are spread over, as over MariaDB shards.",
    )
    embedded_dir: Path | None = Field(
        None, description="Folder of the embedded backend; defaults to <state_dir>/embedded."
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:19092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    kafka_controller_port: int = Field(19093, description="KRaft controller port of local Kafka.")
    kafka_partitions: int = Field(4, ge=1, description="Partitions of topics Lanner creates.")
    kafka_session_timeout_s: float = Field(
        DEFAULT_SESSION_TIMEOUT_S, ge=1,
        description="Consumer-group session timeout of the stages, seconds (Kafka's "
        "session.timeout.ms): a member whose process died holds its partitions this long after "
        "its last heartbeat. The broker accepts 6 to 1800 s unless its "
        "group.min/max.session.timeout.ms say otherwise.")

    cassandra_hosts: list[str] = Field(["127.0.0.1"], description="Cassandra contact points.")
    cassandra_port: int = Field(19042, description="Cassandra CQL native port.")
    cassandra_storage_port: int = Field(17000, description="Cassandra inter-node port (local).")
    cassandra_keyspace: str = Field("lanner", description="Cassandra keyspace of the archive.")

    mariadb_shards: list[str] = Field(
        ["127.0.0.1:13306", "127.0.0.1:13307"],
        description="MariaDB shard servers as host:port, in shard order.",
    )
    mariadb_user: str = Field("root", description="MariaDB user.")
    mariadb_password: SecretStr = Field(SecretStr(""), description="MariaDB password.")
    mariadb_database: str = Field("lanner", description="Database name on every shard.")

    topic_alerts_lsst: str = Field("alerts.lsst", description="Topic of Rubin alert packets.")
    topic_alerts_ztf: str = Field("alerts.ztf", description="Topic of ZTF alert packets.")
    topic_dlq: str = Field("alerts.dlq", description="Dead-letter topic of rejected packets.")
    topic_ingested: str = Field("internal.ingested",
                                description="Topic of compact records of archived alerts.")
    topic_annotations: str = Field(
        "internal.annotations", description="Topic of annotations posted over the API (the "
        "filters stage reads it to run the filters that use annotations again).")
    topic_dr_updates: str = Field(
        "dr.updates", description="Topic of data-release catalog changes (lanner.dr_update).")
    topic_enriched: str = Field(
        "internal.enriched", description="Topic of enriched alerts (lanner.enriched).")

    chunk_stripes: int = Field(DEFAULT_CHUNK_STRIPES, ge=1, le=2048,
                               description="Qserv partitioning: number of declination stripes.")
    chunk_sub_stripes: int = Field(DEFAULT_CHUNK_SUB_STRIPES, ge=1, le=64,
                                   description="Qserv partitioning: sub-stripes per stripe.")

    ingest_group: str = Field("lanner-ingest", description="Consumer group of the ingest stage.")
    ingest_instance_id: str | None = Field(
        None, description="Static consumer-group member id of this ingest process (e.g. the pod "
        "name): a restart then resumes at once instead of after the session timeout.")
    ingest_batch_size: int = Field(500, ge=1, le=100_000,
                                   description="Most alerts one ingest batch takes.")
    ingest_poll_timeout_s: float = Field(
        0.2, gt=0, description="Longest wait for a batch to fill, seconds: bounds the latency "
        "added under light load (under heavy load batches fill at once).")

    enrich_group: str = Field("lanner-enrich", description="Consumer group of the enrich stage.")
    enrich_instance_id: str | None = Field(
        None, description="Static consumer-group member id of this enrich process: a restart "
        "then resumes at once instead of after the session timeout.")
    enrich_batch_size: int = Field(1000, ge=1, le=100_000,
                                   description="Most records one enrich batch takes.")
    enrich_radius_arcsec: dict[str, float] = Field(
        default_factory=dict,
        description="Match radius per reference catalog, arcsec, as JSON "
        '(e.g. {"hipparcos": 2, "openngc": 60}); a catalog not named gets the default of its '
        "kind (docs/context.md). Capped by the catalog's overlap radius.")
    enrich_cache_rows: int = Field(
        20_000_000, ge=0, description="Most reference-catalog rows the enrich stage keeps in "
        "its chunk cache (with halos).")
    api_jobs: bool = Field(
        True, description="Whether the API process runs the background jobs (the retroactive "
        "match of new watchlists and watchmaps against the archive), one at a time.")
    tap_sync_seconds: float = Field(
        60.0, gt=0, le=3600, description="Longest a /tap/sync query may run, in seconds: each "
        "of its statements is stopped by its database after this long (max_statement_time).")
    tap_async_seconds: int = Field(
        600, ge=1, le=86_400, description="Longest an asynchronous TAP job may run, in seconds "
        "(its executionDuration; a caller may ask for less, never more).")
    tap_workers: int = Field(
        2, ge=0, le=64, description="Asynchronous TAP jobs the API process runs at once (0: this "
        "process runs none; another API process does).")
    tap_jobs_per_user: int = Field(
        2, ge=1, le=64, description="Asynchronous TAP jobs one user (or one anonymous address) "
        "may have running at once; more wait queued.")
    tap_queue: int = Field(
        64, ge=1, le=100_000, description="Most asynchronous TAP jobs waiting in the queue: past "
        "it, a new job is refused with 503 and Retry-After.")
    tap_anonymous_upload_bytes: int = Field(
        1 * 2**20, ge=0, description="Most bytes a TAP query without a token may upload (a "
        "short list to cross-match, as TOPCAT sends); a token's tier gives its own limit.")
    tap_upload_urls: bool = Field(
        True, description="Whether a TAP query may upload a table by an http(s) URL the "
        "service fetches (public addresses only; broker.tap.upload.fetch).")
    tap_retention_days: float = Field(
        7.0, gt=0, le=365, description="How long an asynchronous TAP job and its result are "
        "kept (its destruction time; a caller may ask for less, never more).")
    filter_max_share: float = Field(
        0.05, gt=0, le=1, description="Largest share of the reference window's alerts a filter "
        "may pass to be enabled (Babamul refuses filters that pass more than 5 % of a night).")
    filter_reference_days: float = Field(
        1.0, gt=0, le=30, description="The reference window a filter is checked on when it is "
        "enabled: this many days of archived alerts, up to the newest.")
    filter_reference_rows: int = Field(
        20_000, ge=100, le=1_000_000, description="Most archived alerts read for the check on "
        "enable (the newest of the window).")
    filter_backfill_rows: int = Field(
        1_000_000, ge=1, description="Most alerts one backfill delivers (to a topic or a file).")
    filter_daily_cap: int = Field(
        100_000, ge=1, description="Most alerts a filter made from now on publishes in one "
        "UTC day (each filter keeps the cap it was made with).")
    filters_group: str = Field("lanner-filters",
                               description="Consumer group of the filters stage.")
    filters_instance_id: str | None = Field(
        None, description="Static consumer-group member id of this filters process.")
    filters_batch_size: int = Field(2000, ge=1, le=100_000,
                                    description="Most records one filters batch takes.")
    filter_poll_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between the filters stage's reads of the "
        "filters' versions: a change made over the API is live within this plus one batch.")
    filter_time_limit_ms: float = Field(
        500.0, gt=0, description="Longest one filter may take on one batch before it is "
        "suspended, ms.")
    webhook_attempts: int = Field(
        5, ge=1, le=20, description="Tries of a filter's webhook POST (back-off 1, 2, 4 ... s) "
        "before it is given up.")
    webhook_allow_private: bool = Field(
        False, description="Allow webhooks to loopback and private-network addresses (tests, "
        "closed deployments); by default they are refused.")
    smtp_host: str | None = Field(
        None, description="SMTP server of filters' daily email digests (none: no digests).")
    smtp_port: int = Field(25, ge=1, le=65535, description="Its port.")
    smtp_from: str = Field("lanner@localhost", description="The digests' sender address.")
    public_url: str = Field(
        "http://127.0.0.1:8000", description="Where users reach the API (links in digests).")
    watch_poll_s: float = Field(
        1.0, gt=0, le=60, description="Seconds between the enrich stage's reads of the "
        "watchlists' versions: a change made over the API is matched live within this, plus "
        "the time to load the changed list and one batch.")

    once_wait_s: float | None = Field(
        None, gt=0,
        description="With --once, the longest a stage waits without a message while its input "
        "is not read to its end (for its group to assign it partitions, or for an owned "
        "partition to deliver) before it fails with a non-zero exit. Default: the session "
        "timeout plus 15 s, enough to outwait the members of crashed processes.")

    dr_group: str = Field("lanner-dr", description="Consumer group of the dr-updates stage.")
    dr_catalog: str = Field("dr_objects",
                            description="Reference catalog the dr-updates stage keeps up to date.")
    dr_tombstone_grace_s: float = Field(
        DEFAULT_TOMBSTONE_GRACE_S, ge=0,
        description="Age, seconds, after which the dr-updates stage deletes the tombstones of "
        "deleted rows. Must exceed the retention of the dr.updates topic plus its segment roll "
        "time (retention.ms + segment.ms): an older change still in the topic could otherwise "
        "bring a deleted row back.")
    dr_tombstone_purge_interval_s: float = Field(
        DEFAULT_TOMBSTONE_PURGE_INTERVAL_S, ge=0,
        description="Seconds between two tombstone purges of the dr-updates stage; 0 turns "
        "purging off (needed if dr.updates keeps messages forever, retention.ms = -1).")

    log_level: str = Field("INFO", description="Logging level name.")
    log_format: LogFormat = Field(LogFormat.console, description="Log rendering.")

    @field_validator("mariadb_shards")
    @classmethod
    def _check_shards(cls, value: list[str]) -> list[str]:
        for address in value:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                msg = f"MariaDB shard address {address!r} is not host:port"
                raise ValueError(msg)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            _ServicesFileSource(settings_cls),
            file_secret_settings,
        )

    @property
    def embedded_path(self) -> Path:
        """Folder of the embedded backend."""
        return self.embedded_dir or self.state_dir / "embedded"

    @property
    def once_wait_limit_s(self) -> float:
        """The wait bound of ``--once`` runs: `once_wait_s`, or the session timeout plus a
        rebalance."""
        if self.once_wait_s is not None:
            return self.once_wait_s
        return self.kafka_session_timeout_s + ONCE_REBALANCE_ALLOWANCE_S

    @property
    def shard_addresses(self) -> list[tuple[str, int]]:
        """MariaDB shards as (host, port) pairs."""
        pairs = []
        for address in self.mariadb_shards:
            host, _, port = address.rpartition(":")
            pairs.append((host, int(port)))
        return pairs


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
