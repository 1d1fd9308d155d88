"""A job that keeps failing the same way logs its traceback once per REPEAT_LOG_SECONDS.

During a database or node outage every job fails several times a second; the log keeps one
traceback per job and error type per window and counts the rest (``repeats_not_logged``).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from keeper.service import REPEAT_LOG_SECONDS, KeeperService


def test_repeated_failures_log_one_traceback_per_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = [1000.0]
    keeper = SimpleNamespace(_failing={})
    caplog.set_level(logging.ERROR, logger="keeper.service")

    def fail(job: str, exc: Exception) -> None:
        KeeperService._log_failure(keeper, job, exc, clock[0])  # type: ignore[arg-type]

    for _ in range(100):
        fail("block", ConnectionError("server closed the connection"))
        clock[0] += 0.2  # 20 s of an outage at five failures a second
    fail("block", ValueError("another fault"))  # another error type: logged at once
    fail("settle", ConnectionError("server closed the connection"))  # another job: at once
    records = [r for r in caplog.records if r.getMessage() == "job failed"]
    assert [(r.job, r.exc_info[1].__class__.__name__) for r in records] == [  # type: ignore[attr-defined,index]
        ("block", "ConnectionError"),
        ("block", "ValueError"),
        ("settle", "ConnectionError"),
    ]
    assert all(r.exc_info for r in records)

    clock[0] += REPEAT_LOG_SECONDS  # the window is over: the next one logs with the count
    fail("block", ConnectionError("server closed the connection"))
    last = caplog.records[-1]
    assert last.getMessage() == "job failed"
    assert last.repeats_not_logged == 99  # type: ignore[attr-defined]
