"""Notifications of filters: a signed webhook per batch, and a daily email digest.

`Notifier` is a thread of the filters process with a bounded queue, so that the stream never
waits on a subscriber's server: `webhook` and `email` only queue. When the queue is full the
oldest waiting notification is dropped (and counted), not the stream slowed.

- A filter's webhook gets, for each batch in which the filter published alerts, a POST of a
  JSON summary (filter, version, topic, count, the first alerts' ids, times and positions),
  signed with the filter's secret: header ``X-Lanner-Signature: sha256=<hex HMAC-SHA256 of the
  body>``, and ``X-Lanner-Timestamp`` (ms) inside the signed body as ``sent_ms``. A failure (a
  network error or a status other than 2xx) is retried with back-off (1, 2, 4 ... s) up to
  ``attempts`` times, then dropped and counted.
- A filter's email gets, once a UTC day is over, a digest of that day (what it published and
  dropped past its cap, its topic and where to read it), sent through the configured SMTP
  server (`Settings.smtp_host`). The filters processes claim each digest in the store first
  (`FilterStore.claim_digest`), so exactly one of them sends it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import smtplib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import structlog

from broker.storage.filters import Filter

log = structlog.get_logger(__name__)

#: Alerts listed in a webhook summary (the count covers them all).
LISTED = 20
#: The fields of each alert a summary lists.
SUMMARISED = ("alert_id", "object_id", "mjd", "ra", "dec")


def sign(secret: str, body: bytes) -> str:
    """The signature header's value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def summary(found: Filter, alerts: Sequence[Mapping[str, Any]], count: int) -> dict[str, Any]:
    """A webhook's JSON summary of one batch of a filter's published alerts: how many
    (``count``) and the first `LISTED` of ``alerts`` (their ids, time and position)."""
    return {"filter_id": found.filter_id, "name": found.name, "owner": found.owner,
            "version": found.version, "topic": found.topic, "count": count,
            "alerts": [{k: alert[k] for k in SUMMARISED} for alert in alerts[:LISTED]],
            "sent_ms": int(time.time() * 1000)}


def digest(found: Filter, day: str, published: int, dropped: int, api_url: str,
           sender: str) -> EmailMessage:
    """A filter's daily digest as an email to its address."""
    name, owner, topic, cap = found.name, found.owner, found.topic, found.daily_cap
    message = EmailMessage()
    message["From"] = sender
    message["To"] = found.email or ""
    message["Subject"] = f"Lanner: filter {name} published {published:,} alerts on {day}"
    capped = (f"\n{dropped:,} more passed after it reached its daily cap of {cap:,} and were "
              "not published." if dropped else "")
    message.set_content(
        f"Filter {name} of {owner} published {published:,} alerts on {day} (UTC) on the topic "
        f"{topic}.{capped}\n\nThe filter: {api_url}/api/v1/filters/{found.filter_id}\n"
        f"Read the topic with any Kafka client; its schema is served at {api_url}/registry.\n")
    return message


@dataclass
class _Stats:
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    emails: int = 0
    errors: list[str] = field(default_factory=list)


class Notifier:
    """Sends webhooks and emails on a thread of its own (see the module docstring)."""

    def __init__(self, *, attempts: int = 5, first_delay_s: float = 1.0,
                 timeout_s: float = 10.0, capacity: int = 1000,
                 smtp: tuple[str, int] | None = None,
                 opener: Callable[..., Any] = urllib.request.urlopen) -> None:
        self.attempts = attempts
        self.first_delay_s = first_delay_s
        self.timeout_s = timeout_s
        self.smtp = smtp
        self.opener = opener
        self.stats = _Stats()
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=capacity)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lanner-notify", daemon=True)
        self._started = threading.Lock()

    def webhook(self, url: str, secret: str, payload: dict[str, Any]) -> None:
        self._put(("webhook", (url, secret, payload)))

    def email(self, message: EmailMessage) -> None:
        self._put(("email", message))

    def _put(self, item: tuple[str, Any]) -> None:
        with self._started:  # the thread starts with the first notification
            if not self._thread.is_alive() and not self._stopping.is_set():
                self._thread.start()
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._queue.task_done()
                    self.stats.dropped += 1
                except queue.Empty:
                    pass

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued was sent or given up; whether it was."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                kind, item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if kind == "webhook":
                    self._post(*item)
                else:
                    self._mail(item)
            except Exception as exc:  # a notification must never take the thread down
                self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                log.warning("notification failed", kind=kind, error=str(exc))
            finally:
                self._queue.task_done()

    def _post(self, url: str, secret: str, payload: dict[str, Any]) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            msg = f"a webhook is an http or https address, not {url!r}"
            raise ValueError(msg)
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "X-Lanner-Signature": sign(secret, body),
                   "User-Agent": "lanner-webhook/1"}
        delay = self.first_delay_s
        for attempt in range(1, self.attempts + 1):
            try:
                request = urllib.request.Request(  # noqa: S310 - http(s) only, checked above
                    url, data=body, headers=headers, method="POST")
                with self.opener(request, timeout=self.timeout_s) as answer:
                    if 200 <= answer.status < 300:
                        self.stats.delivered += 1
                        return
                    error = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                error = str(exc)
            if attempt == self.attempts or self._stopping.is_set():
                break
            log.info("webhook failed, retrying", url=url, attempt=attempt, error=error,
                     retry_in_s=delay)
            self._stopping.wait(delay)
            delay *= 2
        self.stats.failed += 1
        log.warning("webhook given up", url=url, attempts=self.attempts)

    def _mail(self, message: EmailMessage) -> None:
        if self.smtp is None:
            return
        host, port = self.smtp
        with smtplib.SMTP(host, port, timeout=self.timeout_s) as server:
            server.send_message(message)
        self.stats.emails += 1


def check_webhook(url: str, *, allow_private: bool = False) -> str:
    """Refuse (ValueError) a webhook address that is not http(s), or (unless allowed) one whose
    host resolves to a loopback, private or link-local address: the broker must not be made to
    POST into the network it runs in."""
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 512:
        msg = "a webhook is an http or https address of at most 512 characters"
        raise ValueError(msg)
    if allow_private:
        return url
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError:
        msg = f"the webhook's host {parts.hostname} does not resolve"
        raise ValueError(msg) from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private or address.is_loopback or address.is_link_local \
                or address.is_reserved or address.is_multicast:
            msg = (f"the webhook's host {parts.hostname} is {address}, an address inside a "
                   "private network: give a public one")
            raise ValueError(msg)
    return url
