"""The filters stage: every enabled user filter run on every enriched alert, the passing
alerts published on each filter's own topic.

Per batch of ``internal.enriched`` records: decode them (a bad record goes to the dead-letter
topic with its reason); reload the filters if any changed (`broker.filterset.FilterSet`, a
version poll); run every enabled filter over the batch as columns
(`broker.domain.filters.AlertBatch`); publish one ``lanner.filtered`` record per passing alert
on ``filter.<owner>.<name>`` (Avro in the Confluent wire format, keyed by object id), up to the
filter's daily cap; wait for every acknowledgement; then, in one transaction, add the day's
counts and move each filter's progress (``filter_progress``: the last input offset per
partition it published for); commit the offsets.

Annotations: the stage also reads ``internal.annotations`` (one record per annotation posted
over the API). An annotated object's newest archived alert is rebuilt (`Rerun`: its row,
context, features, counterparts, memberships and annotations) and the filters that use
annotations alone run on it, so such a filter passes the object when it is annotated rather
than at its next alert. Its progress is kept on the annotations topic's partitions like any
other input.

Redelivery: a batch delivered again after a crash skips, per filter, the records at or before
its recorded progress, so what was published and counted is not published or counted again.
Only a crash between the acknowledged publish and that transaction publishes a batch's alerts
twice (at-least-once, with the same alert ids: readers deduplicate by ``(filter_id,
alert_id)``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import structlog

from broker import metrics
from broker.config import DEFAULT_ONCE_WAIT_S
from broker.domain.filters import COLUMNS, AlertBatch, Selection
from broker.exceptions import PermanentError
from broker.factory import Factory
from broker.filtering import add_memberships, annotate, scope_for
from broker.filterset import FilterSet, Passed, attachments, filtered_records
from broker.notify import LISTED, Notifier, digest, summary
from broker.storage.annotations import AnnotationStore
from broker.storage.filters import FilterStore
from broker.storage.stores import LightCurveArchive, ObjectCatalog
from broker.storage.watchlists import WatchlistStore
from broker.storage.watchmaps import WatchmapStore
from broker.streaming import lanner_schemas
from broker.streaming.queue import Message, MessageSource, Publisher
from consumers.stage import Backoff, Stage, count_rejections, unexpected

log = structlog.get_logger(__name__)

STAGE = "filters"


@dataclass(slots=True)
class FiltersReport:
    """What one batch did (or several, added up)."""

    consumed: int = 0
    published: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    by_filter: dict[int, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: FiltersReport) -> None:
        self.consumed += other.consumed
        self.published += other.published
        self.dropped += other.dropped
        self.dead_lettered += other.dead_lettered
        for filter_id, n in other.by_filter.items():
            self.by_filter[filter_id] = self.by_filter.get(filter_id, 0) + n
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n


def build(factory: Factory, *, source: MessageSource | None = None,
          publisher: Publisher | None = None, batch_size: int | None = None,
          poll_timeout: float | None = None, backoff: Backoff | None = None) -> FiltersStage:
    """The filters stage of ``lanner filters``, from the factory's settings and stores."""
    s = factory.settings
    if source is None:
        source = factory.source(group=s.filters_group,
                                topics=[s.topic_enriched, s.topic_annotations],
                                instance_id=s.filters_instance_id)

    def scope(owner: str) -> Any:
        return scope_for(owner, refcats=factory.refcats, watchlists=factory.watchlists,
                         watchmaps=factory.watchmaps, annotations=factory.annotations)

    return FiltersStage(
        source=source, publisher=factory.publisher() if publisher is None else publisher,
        filters=FilterSet(factory.filters, scope, poll_s=s.filter_poll_s,
                          time_limit_s=s.filter_time_limit_ms / 1000.0,
                          scopes_changed=lambda: (factory.watchlists.signature(),
                                                  factory.watchmaps.signature())),
        store=factory.filters, dlq=s.topic_dlq,
        rerun=Rerun(s.topic_annotations, factory.catalog, factory.watchlists,
                    factory.watchmaps, factory.annotations),
        # Opened at the first filter that attaches light curves or cutouts.
        lightcurves=lambda: factory.lightcurves,
        notifier=Notifier(attempts=s.webhook_attempts,
                          smtp=(s.smtp_host, s.smtp_port) if s.smtp_host else None),
        mail=Mail(s.smtp_from, s.public_url),
        batch_size=s.filters_batch_size if batch_size is None else batch_size,
        poll_timeout=s.ingest_poll_timeout_s if poll_timeout is None else poll_timeout,
        backoff=backoff, once_wait=s.once_wait_limit_s)


def read_enriched(message: Message) -> dict[str, Any]:
    """Decode one ``internal.enriched`` record."""
    return lanner_schemas.decode("enriched", message.value)


@dataclass(frozen=True, slots=True)
class Mail:
    """The digests' sender, and where their links point."""

    sender: str = "lanner@localhost"
    api_url: str = "http://127.0.0.1:8000"


@dataclass(frozen=True, slots=True)
class Rerun:
    """What the stage needs to run the filters that use annotations again when an object is
    annotated: the annotations topic, and where the object's newest alert is rebuilt from."""

    topic: str
    catalog: ObjectCatalog
    watchlists: WatchlistStore
    watchmaps: WatchmapStore
    annotations: AnnotationStore

    def records(self, messages: Sequence[Message], columns: set[str]
                ) -> tuple[list[dict[str, Any]], list[Message]]:
        """The newest archived alert of each annotated object (the last message of an object
        in the batch stands for it), with ``columns``' features, its memberships and
        annotations; and the message each comes from."""
        last: dict[str, Message] = {}
        for message in messages:
            last[lanner_schemas.decode("annotation", message.value)["object_id"]] = message
        features = sorted(c for c in columns if COLUMNS[c].group == "feature")
        records = self.catalog.newest_alerts(list(last), features=features, matches=True)
        add_memberships(records, self.watchlists, self.watchmaps)
        annotate(records, self.annotations)
        return records, [last[r["object_id"]] for r in records]


class FiltersStage(Stage[FiltersReport]):
    """Runs the enabled filters on ``internal.enriched`` and publishes on their topics."""

    name = STAGE

    def __init__(self, *, source: MessageSource, publisher: Publisher, filters: FilterSet,
                 store: FilterStore, dlq: str = "alerts.dlq", batch_size: int = 2000,
                 poll_timeout: float = 0.2, backoff: Backoff | None = None,
                 once_wait: float = DEFAULT_ONCE_WAIT_S,
                 clock: Callable[[], float] = time.time, rerun: Rerun | None = None,
                 notifier: Notifier | None = None, mail: Mail | None = None,
                 lightcurves: Callable[[], LightCurveArchive] | None = None) -> None:
        super().__init__(source=source, publisher=publisher, batch_size=batch_size,
                         poll_timeout=poll_timeout, backoff=backoff, once_wait=once_wait)
        self.filters = filters
        self.store = store
        self.dlq = dlq
        self.clock = clock
        self.rerun = rerun
        self.notifier = notifier
        self.mail = mail or Mail()
        #: Where attached light curves and cutouts are read (none: they go out as null).
        self.lightcurves = lightcurves
        self._digested = ""  # the last UTC day whose ended predecessor's digests were sent

    def new_report(self) -> FiltersReport:
        return FiltersReport()

    def process(self, messages: Sequence[Message]) -> FiltersReport:
        started = time.monotonic()
        records, read, annotated, rejected = self._split(messages)
        self.retry("filters", self.filters.refresh)
        only: set[int] | None = None
        first_rerun: int | None = None
        users = [(f, p) for f, p in self.filters.active if p.annotators]
        if annotated and users and self.rerun is not None:
            # An annotation runs the filters that use annotations on the object's newest alert.
            rerun = self.rerun
            columns = set().union(*(p.columns for _, p in users))
            again, sources = self.retry("stores", lambda: rerun.records(annotated, columns))
            first_rerun, only = len(records), {f.filter_id for f, _ in users}
            records += again
            read += sources
        passed = self._run(records, only=only, first_rerun=first_rerun)
        part = [f"{m.topic}:{m.partition}" for m in read]
        offset = np.array([m.offset for m in read], dtype=np.int64)
        done = self.retry("filters", lambda: self.store.progress(sorted(set(part))))
        now_ms = int(self.clock() * 1000)
        counts: dict[int, tuple[int, int]] = {}
        published: dict[int, list[int]] = {}
        moved: dict[tuple[int, str], int] = {}
        wanted: dict[int, frozenset[str]] = {}
        for p in passed:
            fid = p.filter.filter_id
            # What a delivery of this batch before a crash published and counted is skipped.
            rows = p.selection.rows.tolist()
            fresh = [i for i, row in enumerate(rows)
                     if offset[row] > done.get((fid, part[row]), -1)]
            publish = fresh[:self.filters.room(p.filter)]
            counts[fid] = (len(publish), len(fresh) - len(publish))
            published[fid] = publish
            for i in publish if p.filter.attach else ():
                wanted[rows[i]] = wanted.get(rows[i], frozenset()) | p.filter.attach
            for row in rows:
                key = (fid, part[row])
                moved[key] = max(moved.get(key, -1), int(offset[row]))
        attached = {}
        if wanted and self.lightcurves is not None:
            archive = self.lightcurves
            attached = self.retry("lightcurves",
                                  lambda: attachments(wanted, records, archive()))
        outputs = [(p.filter.topic, filtered_records(p, published[p.filter.filter_id], records,
                                                     now_ms, attached=attached))
                   for p in passed]
        self.retry("kafka", lambda: self._publish(outputs, rejected))
        day = self.filters.day
        self.retry("filters", lambda: self.store.record_batch(day, counts, moved))
        self.filters.counted(counts)
        self.retry("kafka", lambda: self.source.commit(messages))
        self._notify(passed, published, records)
        report = FiltersReport(consumed=len(messages), dead_lettered=len(rejected))
        for fid, (sent, dropped) in counts.items():
            report.published += sent
            report.dropped += dropped
            report.by_filter[fid] = sent
        count_rejections(STAGE, report.reasons, rejected)
        metrics.ALERTS_OUT.labels(STAGE).inc(report.published)
        metrics.BATCH_SECONDS.labels(STAGE).observe(time.monotonic() - started)
        return report

    def _notify(self, passed: list[Passed], published: dict[int, list[int]],
                records: list[dict[str, Any]]) -> None:
        """Queue each filter's webhook summary of the batch, and, once a UTC day is over, the
        digests of the day before (never waiting on either)."""
        if self.notifier is None:
            return
        for p in passed:
            chosen = published.get(p.filter.filter_id) or []
            if not chosen or not p.filter.webhook_url or not p.filter.webhook_secret:
                continue
            rows = p.selection.rows.tolist()
            payload = summary(p.filter, [records[rows[i]] for i in chosen[:LISTED]],
                              len(chosen))
            self.notifier.webhook(p.filter.webhook_url, p.filter.webhook_secret, payload)
        today = self.filters.day
        if today and today != self._digested:
            self._digested = today
            yesterday = (date.fromisoformat(today) - timedelta(days=1)).isoformat()
            self.retry("filters", lambda: self._digests(yesterday))

    def _digests(self, day: str) -> None:
        assert self.notifier is not None
        for found, published, dropped in self.store.digests_due(day):
            if found.email and self.store.claim_digest(found.filter_id, day):
                self.notifier.email(digest(found, day, published, dropped, self.mail.api_url,
                                           self.mail.sender))

    def _split(self, messages: Sequence[Message]) -> tuple[
            list[dict[str, Any]], list[Message], list[Message],
            list[tuple[Message, PermanentError]]]:
        """The batch's enriched records (and their messages), its annotation messages, and
        what goes to the dead-letter topic."""
        records: list[dict[str, Any]] = []
        read: list[Message] = []
        annotated: list[Message] = []
        rejected: list[tuple[Message, PermanentError]] = []
        for message in messages:
            if self.rerun is not None and message.topic == self.rerun.topic:
                annotated.append(message)
                continue
            try:
                records.append(read_enriched(message))
                read.append(message)
            except PermanentError as exc:
                rejected.append((message, exc))
            except Exception as exc:  # a bug must not stop the stream: dead-letter, keep going
                rejected.append((message, unexpected(STAGE, message, exc)))
        return records, read, annotated, rejected

    def _run(self, records: list[dict[str, Any]], *, only: set[int] | None = None,
             first_rerun: int | None = None) -> list[Passed]:
        """Every active filter on the batch's records. With ``first_rerun``, the records from
        that index on are annotated objects' newest alerts, for the filters in ``only`` alone:
        the others' passes there are dropped."""
        if not records:
            return []
        if any(p.annotators for _, p in self.filters.active) and self.rerun is not None:
            store = self.rerun.annotations
            plain = records if first_rerun is None else records[:first_rerun]
            self.retry("stores", lambda: annotate(plain, store))
        passed = self.filters.run(AlertBatch(records))
        if first_rerun is None or only is None:
            return passed
        kept = []
        for p in passed:
            if p.filter.filter_id in only:
                kept.append(p)
                continue
            keep = np.flatnonzero(p.selection.rows < first_rerun)
            if keep.size:
                chosen = pa.array(keep)
                kept.append(Passed(p.filter, p.plan, Selection(
                    p.selection.rows[keep],
                    {n: v.take(chosen) for n, v in p.selection.columns.items()}), p.seconds))
        return kept

    def _publish(self, outputs: list[tuple[str, list[tuple[bytes, bytes]]]],
                 rejected: list[tuple[Message, PermanentError]]) -> None:
        for topic, records in outputs:
            for key, value in records:
                self.publisher.publish(topic, value, key=key)
        self.dead_letter(self.dlq, rejected)
        self.publisher.flush(60.0)
