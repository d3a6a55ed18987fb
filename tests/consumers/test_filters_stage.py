"""The filters stage over each backend: every enabled filter on every enriched alert, exactly
the passing alerts on each filter's topic (Confluent wire format, lanner.filtered), daily caps,
changes picked up by the version poll, and suspension of a filter that overruns or no longer
compiles."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest

from broker.domain.filters import Scope
from broker.domain.watchlists import Cones
from broker.filtering import scope_for
from broker.filterset import FilterSet, utc_day
from broker.streaming import lanner_schemas, wire
from consumers.filters import FiltersStage
from tests.support.alerts import produce_placed, scattered

ALERTS = 40


@pytest.fixture
def enriched(harness) -> list[dict[str, Any]]:
    """40 alerts of distinct objects, ingested and enriched: their internal.enriched records."""
    produce_placed(harness, scattered(ALERTS, 12), first_id=700_000_000_100, seed=5)
    assert harness.ingest_once().archived == ALERTS
    assert harness.enrich_once().enriched == ALERTS
    return [lanner_schemas.decode("enriched", m.value)
            for m in harness.outputs(harness.enriched)]


def _stage(harness, factory, *, time_limit_s: float = 5.0,
           group: str | None = None) -> FiltersStage:
    def scope(owner: str) -> Scope:
        return scope_for(owner, refcats=factory.refcats, watchlists=factory.watchlists,
                         watchmaps=factory.watchmaps)

    return FiltersStage(
        source=harness.source(group or f"filters-{uuid.uuid4().hex[:6]}", [harness.enriched]),
        publisher=harness.publisher(),
        filters=FilterSet(factory.filters, scope, poll_s=0.0, time_limit_s=time_limit_s),
        store=factory.filters, batch_size=15, poll_timeout=0.2,
        lightcurves=lambda: harness.lightcurves)


def _owner(factory) -> str:
    """A user of a name of its own: filter topics are per owner, and Kafka is shared."""
    name = f"u{uuid.uuid4().hex[:10]}"
    factory.accounts.add_user(name)
    return name


def _published(harness, topic: str) -> list[dict[str, Any]]:
    messages = harness.outputs(topic)
    for m in messages:
        assert m.value[0] == 0
        assert wire.read_header(m.value) == lanner_schemas.schema_id("filtered")
    return [lanner_schemas.decode("filtered", m.value) for m in messages]


def test_each_filter_publishes_exactly_what_it_passes(harness, enriched, tmp_path) -> None:
    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    store = factory.filters
    mags = sorted(r["mag"] for r in enriched if r["mag"] is not None)
    cut = round(mags[len(mags) // 2], 3)  # about half pass
    bright = store.create(owner, "bright", f"SELECT mag, band, ndet WHERE mag < {cut}",
                          daily_cap=1000)
    capped = store.create(owner, "capped", "SELECT * WHERE mag IS NOT NULL", daily_cap=3)
    idle = store.create(owner, "idle", "SELECT * WHERE mag IS NOT NULL", daily_cap=1000)
    for made in (bright, capped):
        factory.create_topics([made.topic])
        store.set_state(made.filter_id, "enabled")
    report = _stage(harness, factory).run(once=True, idle_polls=3)
    assert report.consumed == ALERTS

    want = {r["alert_id"]: r for r in enriched if r["mag"] is not None and r["mag"] < cut}
    assert 0 < len(want) < ALERTS
    got = _published(harness, bright.topic)
    assert sorted(r["alert_id"] for r in got) == sorted(want)
    for record in got:
        source = want[record["alert_id"]]
        ndet = source["features"].get("ndet")  # NULL where enrich left no features
        assert record["columns"] == {"mag": source["mag"], "band": source["band"],
                                     "ndet": None if ndet is None else int(ndet)}
        assert (record["object_id"], record["mjd"], record["ra"], record["dec"]) == (
            source["object_id"], source["mjd"], source["ra"], source["dec"])
        assert (record["filter_id"], record["filter_version"], record["backfill"]) == (
            bright.filter_id, 1, False)
    # The capped filter published its first 3 alerts of the day and counted the rest.
    with_mag = sum(r["mag"] is not None for r in enriched)
    assert len(_published(harness, capped.topic)) == 3
    counts = store.day_counts(utc_day(time.time()))
    assert counts[capped.filter_id] == (3, with_mag - 3)
    assert counts[bright.filter_id] == (len(want), 0)
    assert idle.filter_id not in report.by_filter
    assert report.published == len(want) + 3


def test_a_batch_delivered_again_publishes_and_counts_nothing_twice(harness, enriched,
                                                                    tmp_path) -> None:
    """A filters process that dies after publishing and recording a batch but before
    committing its offsets: the next member of the group reads the batch again, and publishes
    and counts none of it again."""
    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    made = factory.filters.create(owner, "some", "SELECT mag WHERE mag IS NOT NULL",
                                  daily_cap=1000)
    factory.create_topics([made.topic])
    factory.filters.set_state(made.filter_id, "enabled")
    group = f"filters-{uuid.uuid4().hex[:6]}"
    first = _stage(harness, factory, group=group)
    first.source.commit = lambda messages: None  # dies before every commit
    report = first.run(once=True, idle_polls=3)
    first.source.close()
    with_mag = sum(r["mag"] is not None for r in enriched)
    assert report.published == with_mag > 0
    again = _stage(harness, factory, group=group).run(once=True, idle_polls=3)
    assert (again.consumed, again.published) == (ALERTS, 0)
    published = _published(harness, made.topic)
    assert len(published) == len({r["alert_id"] for r in published}) == with_mag
    day = factory.filters.day_counts(utc_day(time.time()))
    assert day[made.filter_id] == (with_mag, 0)


def test_records_carry_the_light_curve_and_cutouts_a_filter_attaches(harness,
                                                                       tmp_path) -> None:
    """A filter that attaches the light curve and the cutouts publishes, with each alert, its
    object's archived detections and forced photometry (oldest first) and the alert's three
    cutouts, as the archive holds them; a filter that attaches nothing publishes nulls."""
    produce_placed(harness, scattered(12, 14), first_id=720_000_000_100, seed=9, cutouts=True)
    assert harness.ingest_once().archived == 12
    assert harness.enrich_once().enriched == 12
    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    store = factory.filters
    full = store.create(owner, "full", "SELECT mag WHERE mag IS NOT NULL", daily_cap=1000,
                        attach=["cutouts", "lightcurve"])
    bare = store.create(owner, "bare", "SELECT mag WHERE mag IS NOT NULL", daily_cap=1000)
    assert (full.attach, bare.attach) == ({"lightcurve", "cutouts"}, frozenset())
    with pytest.raises(ValueError, match="attaches lightcurve or cutouts"):
        store.change(bare.filter_id, owner, attach=["packet"])
    for made in (full, bare):
        factory.create_topics([made.topic])
        store.set_state(made.filter_id, "enabled")
    _stage(harness, factory).run(once=True, idle_polls=3)

    got = _published(harness, full.topic)
    assert len(got) == len(_published(harness, bare.topic)) > 0
    assert any(len(r["lightcurve"]) > 1 for r in got)  # some packets carry a history
    for record in got:
        detections = sorted(harness.lightcurves.lightcurve(record["object_id"]),
                            key=lambda r: (r["mjd"], r["source_id"]))
        assert [(d["source_id"], d["mjd"], d["band"], d["psf_flux"])
                for d in record["lightcurve"]] == [
            (d["source_id"], d["mjd"], d["band"], d["psf_flux"]) for d in detections]
        forced = sorted(harness.lightcurves.forced_photometry(record["object_id"]),
                        key=lambda r: (r["mjd"], r["forced_id"]))
        assert [(f["forced_id"], f["psf_flux"]) for f in record["forced"]] == [
            (f["forced_id"], f["psf_flux"]) for f in forced]
        for kind in ("science", "template", "difference"):
            stored = harness.lightcurves.cutout(record["alert_id"], kind)
            assert stored is not None
            assert record["cutouts"][kind] == stored
    for record in _published(harness, bare.topic):
        assert (record["lightcurve"], record["forced"], record["cutouts"]) == (None, None, None)


def test_changes_are_picked_up_and_bad_filters_are_suspended(harness, enriched,
                                                             tmp_path) -> None:
    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    store = factory.filters
    listed = factory.watchlists.create(owner, "targets", Cones(
        ["t"], np.array([1.0]), np.array([1.0]), np.array([2.0])))
    watching = store.create(owner, "watching",
                            f"SELECT * WHERE in_watchlist({listed.watchlist_id})", daily_cap=10)
    slow = store.create(owner, "slow", "SELECT * WHERE mag < 99", daily_cap=1000)
    for made in (watching, slow):
        store.set_state(made.filter_id, "enabled")

    def scope(who: str) -> Scope:
        return scope_for(who, refcats=factory.refcats, watchlists=factory.watchlists,
                         watchmaps=factory.watchmaps)

    filters = FilterSet(store, scope, poll_s=0.0, time_limit_s=5.0,
                        scopes_changed=factory.watchlists.signature)
    assert filters.refresh(force=True)
    assert {f.name for f, _ in filters.active} == {"watching", "slow"}
    # A new text is picked up at the next poll, at its new version.
    store.change(slow.filter_id, owner, text="SELECT * WHERE mag < 98")
    assert filters.refresh()
    assert [(f.version, f.text) for f, _ in filters.active if f.name == "slow"] == [
        (2, "SELECT * WHERE mag < 98")]
    # The watchlist it names goes: the filter no longer compiles and is suspended.
    assert not filters.refresh()  # nothing changed
    factory.watchlists.delete(listed.watchlist_id, owner)
    assert filters.refresh()
    suspended = store.get(watching.filter_id, owner)
    assert suspended.state == "suspended"
    assert f"no watchlist {listed.watchlist_id}" in (suspended.reason or "")
    # Over its time bound, a filter is suspended (its batch still published).
    stage = _stage(harness, factory, time_limit_s=1e-9)
    factory.create_topics([slow.topic])
    report = stage.run(once=True, idle_polls=3)
    overran = store.get(slow.filter_id, owner)
    assert overran.state == "suspended"
    assert "ms a filter may take" in (overran.reason or "")
    assert report.published == len(_published(harness, slow.topic)) > 0
    assert report.published < ALERTS  # only the first batch: then it was suspended


@pytest.mark.parametrize("harness", ["services"], indirect=True)
def test_a_plain_confluent_consumer_reads_a_filter_topic_through_the_registry(
        harness, enriched, tmp_path) -> None:
    """A subscriber with nothing but confluent-kafka: DeserializingConsumer, AvroDeserializer
    and SchemaRegistryClient pointed at Lanner's /registry, on a filter's topic and on
    internal.enriched."""
    from confluent_kafka import DeserializingConsumer
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer

    from api.app import create_app
    from tests.support.server import served

    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    made = factory.filters.create(owner, "all", "SELECT mag WHERE mag IS NOT NULL",
                                  daily_cap=1000)
    factory.create_topics([made.topic])
    factory.filters.set_state(made.filter_id, "enabled")
    report = _stage(harness, factory).run(once=True, idle_polls=3)
    assert report.published == sum(r["mag"] is not None for r in enriched) > 0
    with served(create_app(factory)) as url:
        registry = SchemaRegistryClient({"url": f"{url}/registry"})
        for topic, count in ((made.topic, report.published), (harness.enriched, ALERTS)):
            consumer = DeserializingConsumer({
                "bootstrap.servers": harness.stack.kafka.bootstrap,
                "group.id": f"subscriber-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "value.deserializer": AvroDeserializer(registry)})
            consumer.subscribe([topic])
            values = []
            deadline = time.monotonic() + 60
            while len(values) < count and time.monotonic() < deadline:
                message = consumer.poll(1.0)
                if message is not None and message.error() is None:
                    values.append(message.value())
            consumer.close()
            assert len(values) == count, topic
            if topic == made.topic:
                by_alert = {r["alert_id"]: r for r in enriched}
                for value in values:
                    assert value["columns"]["mag"] == by_alert[value["alert_id"]]["mag"]
                    assert value["filter_id"] == made.filter_id
            else:
                assert {v["alert_id"] for v in values} == {r["alert_id"] for r in enriched}


def test_an_annotation_runs_the_filters_that_use_annotations_again(harness, enriched,
                                                                    tmp_path) -> None:
    """A filter on an annotator's class passes nothing until the object is annotated; the
    annotation (on the annotations topic) makes the stage run it on the object's newest alert,
    once; filters that do not use annotations are not run again."""
    from consumers.filters import Rerun

    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    topic = f"internal.annotations.{uuid.uuid4().hex[:8]}"
    if harness.name != "embedded":
        factory.create_topics([topic])
    object_id = enriched[5]["object_id"]
    factory.annotations.add("700000000999", "classifier", "warm-up")  # a known annotator
    typed = factory.filters.create(owner, "typed", "SELECT annotation_class('classifier') AS "
                                   "cls WHERE annotation_class('classifier') = 'SN Ia'",
                                   daily_cap=100)
    plain = factory.filters.create(owner, "plain", "SELECT * WHERE mag IS NOT NULL",
                                   daily_cap=1000)
    for made in (typed, plain):
        factory.create_topics([made.topic])
        factory.filters.set_state(made.filter_id, "enabled")

    def stage() -> FiltersStage:
        def scope(who: str) -> Scope:
            return scope_for(who, refcats=factory.refcats, watchlists=factory.watchlists,
                             watchmaps=factory.watchmaps, annotations=factory.annotations)

        return FiltersStage(
            source=harness.source(group, [harness.enriched, topic]),
            publisher=harness.publisher(),
            filters=FilterSet(factory.filters, scope, poll_s=0.0),
            store=factory.filters, batch_size=15, poll_timeout=0.2,
            rerun=Rerun(topic, harness.catalog, factory.watchlists, factory.watchmaps,
                        factory.annotations))

    def run_once() -> Any:
        running = stage()
        try:
            return running.run(once=True, idle_polls=3)
        finally:
            running.source.close()  # leave the group: the next run takes the partitions

    group = f"filters-{uuid.uuid4().hex[:6]}"
    first = run_once()
    assert first.by_filter.get(typed.filter_id, 0) == 0
    plain_count = len(_published(harness, plain.topic))
    made = factory.annotations.add(object_id, "classifier", "SN Ia", 0.8)
    harness.produce(topic, lanner_schemas.encode("annotation", {
        "annotation_id": made.annotation_id, "object_id": object_id,
        "annotator": "classifier", "version": made.version, "class": "SN Ia", "score": 0.8,
        "created_ms": 0}), key=object_id.encode())
    second = run_once()
    assert second.by_filter == {typed.filter_id: 1}
    [published] = _published(harness, typed.topic)
    # The object's newest alert as the archive holds it. (Not as internal.enriched has it:
    # the simulated packets, moved to new objects, share detection ids, and the archive keeps
    # each detection under the object that was written first.)
    stored = harness.catalog.alert_rows(object_id)
    newest = max(stored, key=lambda r: (r["mjd"], r["source_id"]))
    assert (published["object_id"], published["columns"]) == (object_id, {"cls": "SN Ia"})
    assert (published["alert_id"], published["mjd"]) == (newest["source_id"], newest["mjd"])
    assert len(_published(harness, plain.topic)) == plain_count  # not run again
    # Read again by the group (nothing new): nothing published twice.
    assert run_once().published == 0
