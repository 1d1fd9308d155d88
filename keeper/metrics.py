"""Prometheus metrics and the health endpoint of a running keeper.

One registry per service (never the process-global one: tests run several keepers in one
process). ``MetricsServer`` serves ``/metrics`` (Prometheus text format) and ``/health`` (JSON,
HTTP 200 when healthy, 503 otherwise) from a daemon thread on ``metrics.bind``.
"""

from __future__ import annotations

import errno
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from keeper.pipeline.types import AccountState

#: Every state an account can be classified in has its ``keeper_accounts`` gauge label (0 when
#: no account is in it), so an alert on a state never reads "no data".
ACCOUNT_STATES: tuple[str, ...] = tuple(s.value for s in AccountState)


class KeeperMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.accounts = Gauge("keeper_accounts", "Accounts by margin state", ["state"], registry=r)
        self.known_accounts = Gauge("keeper_known_accounts", "Accounts indexed", registry=r)
        self.decisions = Counter(
            "keeper_decisions", "Decisions recorded, by action", ["action"], registry=r
        )
        self.assessed = Counter(
            "keeper_accounts_assessed",
            "Accounts re-margined with the exact engine (block loop, sweeps, settlement)",
            registry=r,
        )
        self.skipped = Counter(
            "keeper_actions_skipped", "Actions not sent, by reason", ["reason"], registry=r
        )
        self.transactions = Counter(
            "keeper_transactions", "Transactions sent or settled, by status", ["status"], registry=r
        )
        self.bounty = Counter(
            "keeper_bounty_earned_wad",
            "Liquidation bounty credited to this keeper (asset-0 WAD)",
            registry=r,
        )
        self.gas_spent = Counter(
            "keeper_gas_spent_wei", "Gas fees paid by mined transactions (wei)", registry=r
        )
        self.gas_used = Counter("keeper_gas_used", "Gas used by mined transactions", registry=r)
        self.head = Gauge("keeper_chain_head_block", "Latest block seen on the chain", registry=r)
        self.indexed = Gauge("keeper_indexed_block", "Last block indexed and margined", registry=r)
        self.lag = Gauge("keeper_lag_blocks", "Chain head minus last processed block", registry=r)
        self.rpc_errors = Counter(
            "keeper_rpc_errors",
            "RPC failures seen by the keeper loop, by kind",
            ["kind"],
            registry=r,
        )
        self.oracle_rejections = Counter(
            "keeper_oracle_rejections",
            "Accounts not acted on because an oracle answer was rejected, by the error "
            "(StalePrice, NonPositivePrice, IncompleteRound, UnsupportedFeed, FeedCallFailed)",
            ["reason"],
            registry=r,
        )
        self.block_seconds = Histogram(
            "keeper_block_seconds",
            "Time to process one block (index, margin, decide, submit)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.pending_tx = Gauge("keeper_pending_transactions", "Open transactions", registry=r)
        self.signer_balance = Gauge(
            "keeper_signer_balance_wei",
            "Native balance of the keeper's signer address (pays the gas), read every minute",
            registry=r,
        )
        self.bounty_unclaimed = Gauge(
            "keeper_bounty_unclaimed_wad",
            "Bounty accrued to the keeper's address and not claimed yet (asset-0 WAD, "
            "ClearingHouse bounties(address)), read every minute",
            registry=r,
        )
        self.reorgs = Counter("keeper_reorgs", "Reorganisations rolled back", registry=r)
        self.relay = Counter(
            "keeper_relay",
            "Private relay events: submitted, refused (error or unreachable), fallback (the same "
            "bytes broadcast to the public node), included (mined with no public broadcast)",
            ["event"],
            registry=r,
        )
        self.heads = Counter(
            "keeper_heads",
            "New heads learnt, by source: subscription (eth_subscribe newHeads) or poll",
            ["source"],
            registry=r,
        )
        self.head_subscriptions = Counter(
            "keeper_head_subscriptions",
            "eth_subscribe(newHeads) subscriptions made (the first, then one per reconnect)",
            registry=r,
        )

    def watch_endpoints(self, states: Callable[[], list[Any]]) -> None:
        """Per-endpoint RPC metrics, read from ``states()`` (keeper.chain.fallback's
        ``FallbackProvider.states``) at every scrape: ``keeper_rpc_endpoint_healthy``,
        ``_requests_total``, ``_failures_total`` and ``_head``, labelled by the endpoint's
        index and its redacted URL (host and port only)."""
        self.registry.register(_EndpointCollector(states))

    def watch_cluster(self, member: Any, lag: Callable[[], float]) -> None:
        """Cluster mode's metrics, read from ``member`` (keeper.cluster.ClusterMember) at every
        scrape, labelled by keeper id: leases held, leader, live keepers, seconds without a
        lease, heartbeat and fence events; per shard held, its token and its lag in blocks
        (``lag()``: how far behind the head this keeper's last processed block is)."""
        self.registry.register(_ClusterCollector(member, lag))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ClusterCollector(Collector):
    def __init__(self, member: Any, lag: Callable[[], float]) -> None:
        self._member = member
        self._lag = lag

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        m = self._member
        k = [str(m.keeper_id)]
        held = m.held()
        shards = sorted(s for s in held if s >= 0)
        leases = GaugeMetricFamily(
            "keeper_cluster_shards_held", "Shards this keeper holds a lease on", labels=["keeper"]
        )
        leases.add_metric(k, len(shards))
        leader = GaugeMetricFamily(
            "keeper_cluster_leader", "1 when this keeper holds the leader lease", labels=["keeper"]
        )
        leader.add_metric(k, 1.0 if -1 in held else 0.0)
        live = GaugeMetricFamily(
            "keeper_cluster_live_keepers", "Keepers with a live heartbeat", labels=["keeper"]
        )
        live.add_metric(k, m.live)
        since = m.leaseless_since
        leaseless = GaugeMetricFamily(
            "keeper_cluster_leaseless_seconds",
            "Seconds this keeper has held no lease (0 while it holds one)",
            labels=["keeper"],
        )
        leaseless.add_metric(k, 0.0 if since is None else max(time.monotonic() - since, 0.0))
        events = CounterMetricFamily(
            "keeper_cluster_events",
            "Heartbeats (renewed, renew_failed), leases acquired and released, and what the "
            "fence refused (fenced_decisions, fenced_transactions, fenced_attempts)",
            labels=["keeper", "event"],
        )
        for event, n in sorted(dict(m.counts).items()):
            events.add_metric([*k, event], n)
        token = GaugeMetricFamily(
            "keeper_cluster_shard_token",
            "Fencing token of each shard this keeper holds",
            labels=["keeper", "shard"],
        )
        lag = GaugeMetricFamily(
            "keeper_cluster_shard_lag_blocks",
            "Blocks between the head and the last block processed, per shard this keeper holds",
            labels=["keeper", "shard"],
        )
        behind = self._lag()
        for shard in shards:
            token.add_metric([*k, str(shard)], held[shard])
            lag.add_metric([*k, str(shard)], behind)
        yield from (leases, leader, live, leaseless, events, token, lag)


class _EndpointCollector(Collector):
    def __init__(self, states: Callable[[], list[Any]]) -> None:
        self._states = states

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families appear once the keeper is connected

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "url"]
        healthy = GaugeMetricFamily(
            "keeper_rpc_endpoint_healthy", "1 when the RPC endpoint is healthy", labels=labels
        )
        requests = CounterMetricFamily(
            "keeper_rpc_endpoint_requests",
            "Requests (or batches) sent to the endpoint",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "keeper_rpc_endpoint_failures",
            "Requests the endpoint failed (after which the next endpoint was asked)",
            labels=labels,
        )
        head = GaugeMetricFamily(
            "keeper_rpc_endpoint_head_block", "Latest head seen on the endpoint", labels=labels
        )
        for st in self._states():
            values = [str(st.index), st.endpoint]
            healthy.add_metric(values, 1.0 if st.healthy else 0.0)
            requests.add_metric(values, st.requests)
            failures.add_metric(values, st.failures)
            if st.head is not None:
                head.add_metric(values, st.head)
        yield from (healthy, requests, failures, head)


@dataclass
class Health:
    """What /health reports; updated by the service loop, read by the HTTP thread."""

    started_at: float = field(default_factory=time.time)
    last_block: int | None = None
    last_block_at: float | None = None
    lag_blocks: int = 0
    last_error: str | None = None
    stalled: bool = False
    stopping: bool = False
    max_block_age: float = 60.0
    #: Cluster mode: unhealthy when no lease was held for longer than ``max_leaseless``
    #: seconds (``leaseless_since``: a monotonic time, None while a lease is held).
    max_leaseless: float | None = None
    leaseless_since: Callable[[], float | None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def block(self, number: int, lag: int) -> None:
        with self._lock:
            if number != self.last_block:
                self.last_block_at = time.time()
            self.last_block = number
            self.lag_blocks = lag
            self.last_error = None

    def behind(self, lag: int) -> None:
        """The keeper is ``lag`` blocks behind the head (it is processing a newer block)."""
        with self._lock:
            self.lag_blocks = lag

    def error(self, message: str) -> None:
        with self._lock:
            self.last_error = message

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            now = time.time()
            since = None if self.last_block_at is None else now - self.last_block_at
            leaseless = None
            if self.leaseless_since is not None:
                began = self.leaseless_since()
                leaseless = None if began is None else time.monotonic() - began
            ok = (
                not self.stalled
                and not self.stopping
                and self.last_block is not None
                and (since is None or since <= self.max_block_age)
                and (
                    leaseless is None
                    or self.max_leaseless is None
                    or leaseless <= self.max_leaseless
                )
            )
            extra = (
                {}
                if self.leaseless_since is None
                else {"seconds_without_lease": None if leaseless is None else round(leaseless, 3)}
            )
            return ok, {
                **extra,
                "status": "ok" if ok else "unhealthy",
                "last_block": self.last_block,
                "seconds_since_new_block": None if since is None else round(since, 3),
                "lag_blocks": self.lag_blocks,
                "last_error": self.last_error,
                "stalled": self.stalled,
                "stopping": self.stopping,
                "uptime_seconds": round(now - self.started_at, 3),
            }


class MetricsBindError(RuntimeError):
    """``metrics.bind`` cannot be listened on (no such local address, no permission)."""


class MetricsPortInUse(MetricsBindError):
    """Another process (often a second keeper) already listens on ``metrics.bind``."""


class MetricsServer:
    """``/metrics`` and ``/health`` on a daemon thread; ``port`` 0 picks a free port.

    A bind failure raises ``MetricsPortInUse`` or ``MetricsBindError`` (one line, naming the
    address and the ``[metrics]`` keys to change), never a bare ``OSError``."""

    def __init__(
        self, metrics: KeeperMetrics, health: Health | Callable[[], Health], host: str, port: int
    ) -> None:
        get_health = health if callable(health) else (lambda: health)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, CONTENT_TYPE_LATEST, metrics.render())
                elif path in ("/health", "/healthz"):
                    ok, body = get_health().snapshot()
                    self._reply(200 if ok else 503, "application/json", json.dumps(body).encode())
                else:
                    self._reply(404, "text/plain", b"not found\n")

            def _reply(self, status: int, ctype: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # keep scrapes out of the logs
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            where = f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                raise MetricsPortInUse(
                    f"metrics.bind {where}: address already in use (is another keeper running? "
                    "set [metrics] bind to a free port, or enabled = false)"
                ) from None
            raise MetricsBindError(
                f"metrics.bind {where}: cannot listen: {exc.strerror or exc}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="keeper-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
