"""What every stage process shares: the batch loop, retries with back-off, dead letters.

A stage polls a batch, processes it (writing through storage classes and publishing through
the publisher), and commits its offsets only after its outputs are acknowledged.

Failures are classified by exception type, nothing else:

- `TransientError` (a store or a service unavailable, `ServiceUnavailableError`; a reference
  catalog locked by a load or another writer, `CatalogBusyError`): `retry` runs the step
  again with back-off and the batch's offsets are not committed until it succeeds.
- `PermanentError` of one message (bad bytes, bad values): that message goes to the
  dead-letter topic with its original bytes and the reason, and the stream moves on.
- Anything else is a bug or a broken store: it ends the run with nothing committed, so a
  restarted stage reads the batch again.

A run that is to drain its input and stop (``run(once=True)``, ``--once``) raises
`NotDrainedError` when it cannot, a `TransientError` that is not retried: it ends the run, so
that the command reports the group and the reason instead of a drain it did not do.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

import structlog

from broker import metrics
from broker.config import DEFAULT_ONCE_WAIT_S
from broker.exceptions import NotDrainedError, PermanentError, TransientError
from broker.streaming.queue import Message, MessageSource, Publisher

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Report(Protocol):
    """What a batch did; reports of several batches add up (a report adds reports of its own
    type: `BatchReport.add` takes a `BatchReport`, `DRBatchReport.add` a `DRBatchReport`)."""

    consumed: int

    def add(self, other: Self) -> None: ...


R = TypeVar("R", bound=Report)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: doubling from ``first`` up to ``most`` seconds."""

    first: float = 0.25
    most: float = 30.0

    def delays(self) -> Callable[[], float]:
        state = {"next": self.first}

        def next_delay() -> float:
            delay = state["next"]
            state["next"] = min(self.most, delay * 2)
            return delay

        return next_delay


class Retry(Protocol):
    """Runs a step of a batch until it works, retrying `TransientError` (`retry`, bound to a
    stage)."""

    def __call__(self, store: str, action: Callable[[], T]) -> T: ...


def retry(stage: str, store: str, action: Callable[[], T], *, backoff: Backoff,
          stopping: threading.Event) -> T:
    """Run ``action``; on a `TransientError` wait and run it again until it works (other
    exceptions propagate at once). Once ``stopping`` is set a transient failure is raised, so
    that a stopping process does not wait on a store forever."""
    next_delay = backoff.delays()
    while True:
        try:
            return action()
        except TransientError as exc:
            if stopping.is_set():
                raise
            delay = next_delay()
            metrics.RETRIES.labels(stage, store).inc()
            log.warning("store unavailable, retrying", stage=stage, store=store,
                        error=str(exc), retry_in_s=delay)
            stopping.wait(delay)


def dead_letter_headers(stage: str, message: Message, error: PermanentError) -> dict[str, bytes]:
    """The headers of a rejected message on the dead-letter topic: why it was rejected, by
    which stage, and where it was read (its value and key go unchanged)."""
    return {
        "reason": error.reason.encode(),
        "error": str(error).encode()[:4000],
        "stage": stage.encode(),
        "topic": message.topic.encode(),
        "partition": str(message.partition).encode(),
        "offset": str(message.offset).encode(),
    }


def count_rejections(stage: str, reasons: dict[str, int],
                     rejected: Sequence[tuple[Message, PermanentError]]) -> None:
    """Tally rejections by reason, in a report's ``reasons`` and in the metrics."""
    for _, error in rejected:
        reasons[error.reason] = reasons.get(error.reason, 0) + 1
        metrics.ALERTS_DLQ.labels(stage, error.reason).inc()
    if rejected:
        log.info("dead-lettered messages", stage=stage, count=len(rejected),
                 reasons=dict(reasons))


def unexpected(stage: str, message: Message, exc: Exception) -> PermanentError:
    """A bug met while reading one message: logged, and dead-lettered rather than fatal."""
    log.exception("unexpected error reading a message", stage=stage, topic=message.topic,
                  partition=message.partition, offset=message.offset)
    error = PermanentError(f"unexpected {type(exc).__name__}: {exc}")
    error.reason = "unexpected_error"
    return error


class Stage(ABC, Generic[R]):
    """A consumer-group member that processes batches until stopped."""

    #: Name of the stage in metrics, logs and dead-letter headers.
    name: str

    def __init__(self, *, source: MessageSource, publisher: Publisher, batch_size: int,
                 poll_timeout: float, backoff: Backoff | None,
                 once_wait: float = DEFAULT_ONCE_WAIT_S) -> None:
        self.source = source
        self.publisher = publisher
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.backoff = backoff or Backoff()
        #: With ``run(once=True)``: the longest wait without a message while the input is not
        #: known to be drained (`broker.config.Settings.once_wait_limit_s`).
        self.once_wait = once_wait
        self.stopping = threading.Event()

    @abstractmethod
    def new_report(self) -> R:
        """An empty report."""

    @abstractmethod
    def process(self, messages: Sequence[Message]) -> R:
        """Handle one batch, publish its outputs, commit its offsets."""

    def run(self, *, once: bool = False, idle_polls: int = 3,
            on_batch: Callable[[R], None] | None = None) -> R:
        """Process batches until stopped; with ``once``, until the input is drained.

        With ``once`` the run ends when the source owns partitions and has read them to their
        ends, checked after ``idle_polls`` empty polls in a row. An empty poll alone proves
        nothing: a member that just joined owns no partition yet, and after a crash the dead
        members hold theirs until their sessions time out. So the run waits, but not forever:
        if `once_wait` seconds pass without a message, and without a change of assignment,
        while the input is not known to be drained, it raises `NotDrainedError` rather than
        report a drain it did not do.
        """
        total = self.new_report()
        idle = 0
        owned = self.source.assignment()
        since = time.monotonic()  # the last message, or the last change of assignment
        while not self.stopping.is_set():
            messages = self.retry("kafka", lambda: self.source.poll(self.batch_size,
                                                                    self.poll_timeout))
            if messages:
                idle = 0
                report = self.process(messages)
                total.add(report)
                if on_batch is not None:
                    on_batch(report)
                since = time.monotonic()
                continue
            idle += 1
            if not once:
                continue
            now_owned = self.source.assignment()
            if now_owned != owned:
                owned, since = now_owned, time.monotonic()
            if owned and idle >= idle_polls and self.retry("kafka", self.source.drained):
                break
            waited = time.monotonic() - since
            if waited >= self.once_wait:
                raise self._not_drained(owned, waited)
        return total

    def _not_drained(self, owned: list[tuple[str, int]], waited: float) -> NotDrainedError:
        after = f"{waited:.0f} s" if waited >= 10 else f"{waited:.1f} s"
        if not owned:
            return NotDrainedError(self.source.group, f"no partitions assigned after {after} "
                                   f"({self.source.describe_group()})")
        by_topic: dict[str, list[str]] = {}
        for topic, partition in owned:
            by_topic.setdefault(topic, []).append(str(partition))
        partitions = "; ".join(f"{topic} {','.join(p)}" for topic, p in by_topic.items())
        return NotDrainedError(self.source.group, f"owned partitions ({partitions}) not read to "
                               f"their ends after {after} without a message")

    def stop(self) -> None:
        self.stopping.set()

    def retry(self, store: str, action: Callable[[], T]) -> T:
        """Run ``action``, retrying transient failures with this stage's back-off (`retry`)."""
        return retry(self.name, store, action, backoff=self.backoff, stopping=self.stopping)

    def dead_letter(self, topic: str, rejected: Sequence[tuple[Message, PermanentError]]) -> None:
        """Queue each rejected message on the dead-letter topic: its original bytes, and
        headers saying why and where it was read (the caller flushes)."""
        for message, error in rejected:
            self.publisher.publish(topic, message.value, key=message.key,
                                   headers=dead_letter_headers(self.name, message, error))

    def count_rejections(self, reasons: dict[str, int],
                         rejected: Sequence[tuple[Message, PermanentError]]) -> None:
        """Tally rejections by reason, in the report and in the metrics."""
        count_rejections(self.name, reasons, rejected)
