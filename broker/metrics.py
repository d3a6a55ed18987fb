"""Prometheus metrics of the stages (served at /metrics by the API and `lanner` stages)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ALERTS_IN = Counter("lanner_alerts_in_total", "Packets consumed by a stage.", ["stage", "topic"])
ALERTS_OUT = Counter("lanner_alerts_out_total", "Alerts archived and published by a stage.",
                     ["stage"])
ALERTS_DLQ = Counter("lanner_alerts_dlq_total", "Packets sent to the dead-letter topic.",
                     ["stage", "reason"])
TOMBSTONES_PURGED = Counter(
    "lanner_tombstones_purged_total",
    "Tombstones of deleted reference-catalog rows removed after their grace period.", ["stage"])
PURGE_FAILURES = Counter("lanner_tombstone_purge_failures_total",
                         "Tombstone purges that failed (tried again after the interval).",
                         ["stage"])
RETRIES = Counter("lanner_store_retries_total", "Batches retried because a store failed.",
                  ["stage", "store"])
BATCH_SECONDS = Histogram(
    "lanner_batch_seconds", "Time to process one batch, from poll to commit.", ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LATENCY_SECONDS = Histogram(
    "lanner_alert_latency_seconds",
    "From the packet's Kafka timestamp to its output being acknowledged.", ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
