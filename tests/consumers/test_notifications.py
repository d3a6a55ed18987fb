"""Notifications of filters: a signed webhook per batch (retried with back-off, never blocking
the stream) and a daily email digest through an SMTP server (a local aiosmtpd sink), sent once
whatever the number of filters processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.filtering import scope_for
from broker.filterset import FilterSet
from broker.notify import Notifier, check_webhook
from consumers.filters import FiltersStage, Mail
from tests.consumers.test_filters_stage import _owner, _published, enriched  # noqa: F401


class _Hook:
    """A webhook receiver on loopback that fails its first ``failures`` requests."""

    def __init__(self, failures: int) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.failures = failures
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.failures > 0:
                    hook.failures -= 1
                    self.send_response(503)
                else:
                    hook.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


def _stage(harness, factory, notifier: Notifier) -> FiltersStage:
    def scope(who: str) -> Any:
        return scope_for(who, refcats=factory.refcats, watchlists=factory.watchlists,
                         watchmaps=factory.watchmaps)

    return FiltersStage(
        source=harness.source(f"filters-{uuid.uuid4().hex[:6]}", [harness.enriched]),
        publisher=harness.publisher(),
        filters=FilterSet(factory.filters, scope, poll_s=0.0), store=factory.filters,
        batch_size=15, poll_timeout=0.2, notifier=notifier,
        mail=Mail("lanner@example.org", "https://lanner.example.org"))


def test_webhooks_get_signed_summaries_retried_with_back_off(harness, enriched,  # noqa: F811
                                                             tmp_path) -> None:
    factory = harness.factory(tmp_path)
    owner = _owner(factory)
    made = factory.filters.create(owner, "hooked", "SELECT mag WHERE mag IS NOT NULL",
                                  daily_cap=1000)
    factory.create_topics([made.topic])
    hook = _Hook(failures=2)
    try:
        secret = factory.filters.set_notifications(made.filter_id, owner, webhook_url=hook.url,
                                                   email=None).webhook_secret
        assert secret is not None
        factory.filters.set_state(made.filter_id, "enabled")
        notifier = Notifier(first_delay_s=0.05, attempts=5)
        report = _stage(harness, factory, notifier).run(once=True, idle_polls=3)
        assert notifier.drain(30)
        notifier.close()
        published = {p["alert_id"] for p in _published(harness, made.topic)}
        assert report.published == len(published) > 0
        summaries = []
        for headers, body in hook.received:
            want = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Lanner-Signature"] == want
            summaries.append(json.loads(body))
        # One summary per batch that published (batches of 15), the two failures retried.
        assert sum(s["count"] for s in summaries) == len(published)
        assert {a["alert_id"] for s in summaries for a in s["alerts"]} <= published
        assert {(s["filter_id"], s["topic"], s["version"]) for s in summaries} == {
            (made.filter_id, made.topic, 1)}
        assert (notifier.stats.delivered, notifier.stats.failed) == (len(summaries), 0)
    finally:
        hook.close()


def test_a_dead_webhook_is_given_up_and_never_holds_the_stream() -> None:
    calls = []

    def refuse(request: Any, timeout: float) -> Any:
        calls.append(time.monotonic())
        raise OSError("connection refused")

    notifier = Notifier(first_delay_s=0.01, attempts=3, capacity=2, opener=refuse)
    started = time.monotonic()
    for i in range(10):  # queueing never waits, however many are waiting
        notifier.webhook("http://192.0.2.1/hook", "s", {"n": i})
    assert time.monotonic() - started < 1.0
    assert notifier.drain(10)
    notifier.close()
    assert notifier.stats.failed >= 1
    assert notifier.stats.dropped >= 1
    assert notifier.stats.failed * 3 == len(calls)


def test_webhooks_into_private_networks_are_refused() -> None:
    for url in ("http://127.0.0.1:8000/x", "http://10.1.2.3/x", "http://[::1]/x",
                "ftp://example.org/x", "file:///etc/passwd", "http:///nohost"):
        with pytest.raises(ValueError, match="webhook"):
            check_webhook(url)
    assert check_webhook("http://127.0.0.1:9/x", allow_private=True)


def test_the_daily_digest_is_mailed_once(harness, enriched, tmp_path) -> None:  # noqa: F811
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self) -> None:
            self.messages: list[Any] = []

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            self.messages.append(envelope)
            return "250 OK"

    sink = Sink()
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        factory = harness.factory(tmp_path)
        owner = _owner(factory)
        made = factory.filters.create(owner, "daily", "SELECT * WHERE mag IS NOT NULL",
                                      daily_cap=5)
        factory.filters.set_notifications(made.filter_id, owner, webhook_url=None,
                                          email="astro@example.org")
        yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        factory.filters.record_batch(yesterday, {made.filter_id: (5, 17)}, {})
        for _ in range(2):  # two filters processes: one mail
            notifier = Notifier(smtp=("127.0.0.1", port))
            _stage(harness, factory, notifier).run(once=True, idle_polls=3)
            assert notifier.drain(30)
            notifier.close()
        assert len(sink.messages) == 1
        [mail] = sink.messages
        assert mail.rcpt_tos == ["astro@example.org"]
        text = mail.content.decode()
        assert f"Subject: Lanner: filter daily published 5 alerts on {yesterday}" in text
        assert "17 more passed after it reached its daily cap of 5" in text
        assert f"https://lanner.example.org/api/v1/filters/{made.filter_id}" in text
    finally:
        controller.stop()
