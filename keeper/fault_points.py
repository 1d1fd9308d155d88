"""Test-only crash points: a real ``keeper run`` process killed at an exact step.

``KEEPER_FAULT_KILL_AT=<point>`` makes the process kill itself with SIGKILL (no clean-up, no
flush, no ``finally``: what a power cut or the OOM killer does) the first time it reaches
``<point>``; ``<point>:<n>`` the n-th time. Used by tests/test_faults_keeper.py to prove that a
crash at any of these steps loses no record and sends nothing twice. **Inert unless the
variable is set**: one environment lookup per call, nothing else. ``KEEPER_FAULT_SIGNAL=STOP``
pauses the process (SIGSTOP) at the point instead of killing it: a keeper frozen mid-step,
resumed later by SIGCONT (tests/test_cluster_e2e.py: a paused keeper whose leases were taken
over).

The points, in the order a decision goes through them:

- ``after_decision``: the decision row holds the action key; no transaction row yet
  (``keeper.pipeline.execute``);
- ``before_sign``: the transaction row and its nonce are stored; nothing signed yet
  (``keeper.transactions``);
- ``after_send``: the node accepted the signed bytes; the call has not returned;
- ``before_receipt``: an open transaction is about to be looked up for its receipt.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter

ENV = "KEEPER_FAULT_KILL_AT"
SIGNAL_ENV = "KEEPER_FAULT_SIGNAL"
POINTS = ("after_decision", "before_sign", "after_send", "before_receipt")

log = logging.getLogger(__name__)
_hits: Counter[str] = Counter()


def crash_point(point: str) -> None:
    """SIGKILL this process if ``KEEPER_FAULT_KILL_AT`` names ``point`` (and its count is due)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name not in POINTS or (nth and not nth.isdigit()):
        raise ValueError(f"{ENV}={spec!r}: expected one of {', '.join(POINTS)}, optionally :<n>")
    if name != point:
        return
    _hits[point] += 1
    if _hits[point] < int(nth or 1):
        return
    if os.environ.get(SIGNAL_ENV) == "STOP":
        log.warning("fault point reached: pausing the process", extra={"point": point})
        os.kill(os.getpid(), signal.SIGSTOP)
        return
    # The log handler writes and flushes each record: the line is out before the kill.
    log.warning("fault point reached: killing the process", extra={"point": point})
    os.kill(os.getpid(), signal.SIGKILL)
