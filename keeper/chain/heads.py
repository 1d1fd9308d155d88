"""New heads by subscription: ``eth_subscribe("newHeads")`` over a WebSocket of its own.

Polling the head costs one request per poll and reacts up to one poll interval late; a
subscription costs nothing between blocks and hands each new head over as the node learns it.
``HeadSubscription`` runs in a daemon thread on its own connection (the request connection of
``keeper.chain.rpc.SyncWebSocketProvider`` stays request/answer only):

- it subscribes and keeps the latest head (number, hash, timestamp, parent hash: the block
  loop's ``BlockRef``), calling ``on_head`` for each one;
- a dropped connection is reopened with bounded back-off and the subscription made again (the
  node gives a new id; notifications for any other id are ignored);
- a node that refuses ``eth_subscribe`` (an HTTP-only gateway behind a WebSocket, a provider
  without subscriptions) ends the thread with ``state == "unsupported"``.

The subscription is only ever a faster way to learn heads: while it is not ``live`` (not yet
subscribed, reconnecting, unsupported), or its latest head is older than the caller accepts,
the block loop polls the head as it does without a WebSocket (keeper.service).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from keeper.chain.rpc import BlockRef, _block_ref
from keeper.chain.transport import RetryPolicy
from keeper.secrets import redact_url, register_url, scrub

log = logging.getLogger(__name__)

CONNECTING = "connecting"
LIVE = "live"
RECONNECTING = "reconnecting"
UNSUPPORTED = "unsupported"
STOPPED = "stopped"


class SubscriptionRefused(RuntimeError):
    """The node answered ``eth_subscribe`` with an error."""


class HeadSubscription:
    def __init__(
        self,
        url: str,
        *,
        on_head: Callable[[BlockRef], None] | None = None,
        on_subscribed: Callable[[str], None] | None = None,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        register_url(url)
        self.url = url
        self.redacted = redact_url(url)
        self.on_head = on_head or (lambda head: None)
        self.on_subscribed = on_subscribed or (lambda sub_id: None)
        self.timeout = timeout
        #: Back-off between reconnects (its ``max_retries`` is not a limit here: the thread
        #: keeps trying until stopped, the block loop polling meanwhile).
        self.policy = policy or RetryPolicy(base_delay=0.2, max_delay=5.0)
        self.state = CONNECTING
        self.subscription_id: str | None = None
        #: Subscriptions made (1, then one more per reconnect) and heads received.
        self.subscriptions = 0
        self.heads = 0
        self.latest: BlockRef | None = None
        self._latest_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ws: Any = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"HeadSubscription({self.redacted}, {self.state})"

    @property
    def live(self) -> bool:
        return self.state == LIVE

    def fresh_head(self, max_age: float) -> BlockRef | None:
        """The latest head when the subscription is live and delivered it less than
        ``max_age`` seconds ago; None tells the caller to poll."""
        with self._lock:
            if self.state != LIVE or self.latest is None:
                return None
            if time.monotonic() - self._latest_at > max_age:
                return None
            return self.latest

    # --- running ----------------------------------------------------------------------------

    def start(self) -> HeadSubscription:
        self._thread = threading.Thread(target=self._run, daemon=True, name="head-subscription")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._close()  # wakes the thread out of recv()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 5)
        self.state = STOPPED

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._follow()
                failures = 0
            except SubscriptionRefused as exc:
                self.state = UNSUPPORTED
                log.warning(
                    "newHeads subscription refused: polling the head instead",
                    extra={"endpoint": self.redacted, "error": scrub(str(exc))},
                )
                return
            except Exception as exc:  # the connection broke (or never opened): reconnect
                if self._stop.is_set():
                    break
                self.state = RECONNECTING
                failures += 1
                log.warning(
                    "newHeads subscription lost: polling until it is back",
                    extra={"endpoint": self.redacted, "error": f"{type(exc).__name__}",
                           "attempt": failures},
                )  # fmt: skip
            finally:
                self._close()
            self._stop.wait(self.policy.delay(min(failures, 16) or 1))
        self.state = STOPPED

    def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close cleanly
                ws.close()

    def _follow(self) -> None:
        from websockets.sync.client import connect as ws_connect

        self._ws = ws = ws_connect(self.url, open_timeout=self.timeout, max_size=2**24, legacy=True)
        ws.send(json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
        ))  # fmt: skip
        deadline = time.monotonic() + self.timeout
        sub_id = None
        while sub_id is None:
            msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if isinstance(msg, dict) and msg.get("id") == 1:
                if "error" in msg or not isinstance(msg.get("result"), str):
                    raise SubscriptionRefused(str(msg.get("error", msg)))
                sub_id = msg["result"]
        with self._lock:
            self.subscription_id = sub_id
            self.subscriptions += 1
            # A head from before a reconnect is older than what polling found meanwhile: none
            # until the new subscription delivers one (the caller polls until then).
            self.latest = None
            self.state = LIVE
        log.info(
            "newHeads subscribed",
            extra={"endpoint": self.redacted, "subscriptions": self.subscriptions},
        )
        self.on_subscribed(sub_id)
        while not self._stop.is_set():
            try:
                raw = ws.recv(timeout=0.5)
            except TimeoutError:
                continue  # no block yet: look at the stop flag again
            msg = json.loads(raw)
            params = msg.get("params") if isinstance(msg, dict) else None
            if msg.get("method") != "eth_subscription" or not isinstance(params, dict):
                continue
            if params.get("subscription") != sub_id:
                continue  # a stale subscription's notification: not ours any more
            head = _block_ref(params["result"])
            with self._lock:
                self.latest = head
                self._latest_at = time.monotonic()
                self.heads += 1
            self.on_head(head)
