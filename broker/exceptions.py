"""The exception tree of Lanner.

Two families: `TransientError` (a store or a service is unavailable for now; retry with back-off,
commit nothing) and `PermanentError` (the input itself is bad; dead-letter it with the reason and
move on). Each carries a short machine-readable ``reason`` used in dead-letter records and metrics.
Outside both, `NotFoundError` answers a read of something the archive does not hold (the API
answers 404).
"""

from __future__ import annotations


class LannerError(Exception):
    """Base of every error raised by Lanner on purpose."""

    reason: str = "error"


class TransientError(LannerError):
    """A failure that may go away by itself: retry later, never dead-letter."""

    reason = "transient"


class PermanentError(LannerError):
    """A failure of the input itself: retrying cannot help."""

    reason = "permanent"


class WireFormatError(PermanentError):
    """A message does not follow the Confluent wire format or cannot be decoded."""

    reason = "wire_format"


class BadMagicByteError(WireFormatError):
    """The first byte of a message is not the Confluent magic byte 0x00."""

    reason = "bad_magic_byte"


class TruncatedMessageError(WireFormatError):
    """A message is shorter than its header, or its Avro body ends early."""

    reason = "truncated"


class UnknownSchemaError(WireFormatError):
    """The schema id in a message header is not one Lanner knows."""

    reason = "unknown_schema_id"

    def __init__(self, schema_id: int, known: list[int] | None = None) -> None:
        self.schema_id = schema_id
        hint = f" (known: {', '.join(map(str, sorted(known)))})" if known else ""
        super().__init__(f"unknown schema id {schema_id}{hint}")


class CorruptBodyError(WireFormatError):
    """The Avro body cannot be decoded with the schema named by its header."""

    reason = "corrupt_body"


class ServiceError(LannerError):
    """A local service could not be fetched, started, reached or stopped."""

    reason = "service"

    def __init__(self, service: str, message: str, log_path: str | None = None) -> None:
        self.service = service
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{service}: {message}{where}")


class ServiceUnavailableError(TransientError):
    """A configured service does not answer."""

    reason = "service_unavailable"


class NotFoundError(LannerError):
    """Something a query names does not exist: an object, a source of it, a cutout or a catalog.

    The message says what is missing (and, for a catalog, which ones there are), in words fit
    for a client.
    """

    reason = "not_found"


class ConflictError(LannerError):
    """The thing to be made exists already (a user name, a watchlist name): HTTP 409."""


class ArchiveIntegrityError(LannerError):
    """Stored data is not whole: a row refers to another that is gone."""

    reason = "archive_integrity"


class RefCatalogError(LannerError):
    """A reference catalog cannot be loaded or read as asked."""

    reason = "refcat"


class UnknownCatalogError(RefCatalogError):
    """No catalog of that name is loaded."""

    reason = "unknown_catalog"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no reference catalog named {name!r} is loaded")


class CatalogBusyError(RefCatalogError, TransientError):
    """Another process (or thread) is loading or changing the catalog: try again later.

    A `TransientError`, so the stages retry the step with back-off and commit nothing, as for
    an unavailable store, rather than treat the batch as bad.
    """

    reason = "catalog_busy"

    def __init__(self, name: str, holder: str | None = None) -> None:
        self.name = name
        self.holder = holder
        by = f" ({holder})" if holder else ""
        super().__init__(f"catalog {name} is being loaded or changed by another process{by}")


class CatalogReloadedError(RefCatalogError):
    """A reader asked for a version of a catalog that a reload has replaced: resolve again."""

    reason = "catalog_reloaded"

    def __init__(self, name: str, version: int, current: int | None) -> None:
        self.name = name
        self.version = version
        self.current = current
        now = f"version {current} is current" if current is not None else "it is being replaced"
        super().__init__(f"catalog {name} version {version} is gone: {now}")


class NotDrainedError(TransientError):
    """A stage run to drain its input (``--once``) could not: the consumer group assigned it no
    partition, or an owned partition stopped delivering, for longer than the wait bound.

    Transient (running it again later may work), but never a success: the message names the
    group and the reason, for the one line the command ends with.
    """

    reason = "not_drained"

    def __init__(self, group: str, message: str) -> None:
        self.group = group
        super().__init__(f"group {group}: {message}")


class StatementTimeoutError(LannerError):
    """A read ran past the time it was given (MariaDB's ``max_statement_time``, or SQLite's
    progress handler) and was stopped by the database."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the query ran past its time limit of {seconds:g} s and was stopped")
        self.seconds = seconds
