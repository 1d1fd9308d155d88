"""Structured JSON logs with secret scrubbing.

One JSON object per line: ``ts`` (UTC ISO-8601), ``level``, ``logger``, ``msg``, any ``extra=``
fields, and ``exc`` (the formatted traceback) when an exception is logged. Every string goes
through ``keeper.secrets.scrub`` twice: in ``RedactingFilter`` (so any other handler attached
next to ours also sees scrubbed records) and in ``JsonFormatter`` on the final line (so a value
that reached the record by a path the filter did not see is still masked).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from keeper.secrets import Secret, scrub

#: LogRecord attributes that are not user ``extra=`` fields.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _clean(value: Any) -> Any:
    """A JSON-safe, scrubbed copy of an ``extra`` value. Big ints become strings (exact WADs
    survive JSON readers that parse numbers as doubles)."""
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -(2**53) <= value <= 2**53 else str(value)
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes):
        return scrub("0x" + value.hex())
    if isinstance(value, dict):
        return {scrub(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return scrub(str(value))


class RedactingFilter(logging.Filter):
    """Scrubs the message, its arguments, the traceback and ``extra`` fields of every record.

    Attach it to *handlers*: a filter on a logger does not see records propagated from child
    loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        # The formatter must use exc_text, never re-format the live exception (whose message
        # holds the unscrubbed text): drop exc_info once exc_text is set.
        record.exc_info = None
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS:
                setattr(record, key, _clean(value))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = _clean(value)
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = self.formatException(record.exc_info)
        if exc_text:
            entry["exc"] = scrub(exc_text)
        if record.stack_info:
            entry["stack"] = scrub(record.stack_info)
        # Final pass over the serialised line: catches a secret split across fields' escaping.
        return scrub(json.dumps(entry, ensure_ascii=False, default=str))


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Route the root logger to one JSON handler (replacing earlier handlers of ours)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    handler.set_name("keeper-json")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "keeper-json":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # APScheduler logs every run of every job at INFO ("Running job ...", "executed
    # successfully"): twice per block poll. Only its warnings reach the keeper's log, unless
    # the operator asked for DEBUG.
    debug = logging.getLevelName(level) == "DEBUG" if isinstance(level, str) else level <= 10
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if debug else logging.WARNING)
    return handler
