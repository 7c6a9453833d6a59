"""Prometheus metrics of the process (DESIGN §9), exposed on ``/metrics`` by the admin API.

Every metric batcher exports is defined here, in the default registry, with bounded label sets: job
names and rate-limit namespaces, never run ids, URLs or credential discriminators.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# --- HTTP client and rate limits (batcher.http, batcher.ratelimit) -------------------------------------
# The ``namespace`` label is :func:`namespace_label` of the client's namespace: its first two
# ``:``-separated parts ("hubspot:general:"), so credential discriminators never become label values.

HTTP_API_CALLS = Counter(
    "batcher_http_api_calls_total", "HTTP attempts sent upstream (every attempt counts).", ["namespace"])
HTTP_INGRESS_BYTES = Counter(
    "batcher_http_ingress_bytes_total", "Response body bytes received on the wire (before decompression).",
    ["namespace"])
HTTP_RATE_LIMITED = Counter(
    "batcher_http_rate_limited_total", "429 (or rate-limit 403) responses received.", ["namespace"])
HTTP_RETRIES = Counter(
    "batcher_http_retries_total", "Attempts retried after a 5xx, timeout or connection failure.",
    ["namespace"])
RATELIMIT_WAIT = Histogram(
    "batcher_ratelimit_wait_seconds", "Time a request waited for its rate-limit admission.", ["namespace"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0))
RATELIMIT_DEGRADED = Gauge(
    "batcher_ratelimit_degraded", "1 while Redis is unreachable and the local fallback limits requests.")


def namespace_label(namespace: str) -> str:
    """The bounded label for a namespace: ``"provider:endpoint:"`` (its first two ``:`` parts)."""
    parts = namespace.split(":")
    if len(parts) <= 2:
        return namespace[:64]
    return ":".join(parts[:2])[:63] + ":"

# --- Runs, scheduling, workers (batcher.runner, batcher.scheduler; added by the lead) ---------------------
