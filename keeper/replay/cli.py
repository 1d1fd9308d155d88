"""``keeper replay``: argument handling, progress on stderr, the verdict, the exit status.

Exit status: 0 clean, 1 at least one mismatch, 2 bad input (a named error, nothing written),
70 an internal error (a bug; one line, no traceback). RPC and database URLs appear redacted.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from keeper.chain import ChainError
from keeper.replay.errors import BadBlockRange, ReplayInputError
from keeper.replay.html import write_html
from keeper.replay.report import NdjsonReport
from keeper.replay.run import ReplayOptions, replay
from keeper.secrets import redact_url, register_url, scrub

EXIT_CLEAN, EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_BUG = 0, 1, 2, 70

_LABELS = {
    "logs": "reading logs (blocks)",
    "blocks": "re-deriving decision blocks",
    "claims": "checking liquidations/flags",
    "transactions": "scanning the keeper's transactions (blocks)",
}


def parse_account_arg(text: str) -> int:
    s = text.strip()
    try:
        value = int(s, 16) if s.lower().startswith("0x") else int(s, 10)
    except ValueError:
        raise ReplayInputError(f"--account {text!r} is not a decimal or 0x-hex id") from None
    if not 0 <= value < 2**256:
        raise ReplayInputError(f"--account {text!r} is out of range")
    return value


def parse_address_arg(text: str) -> str:
    s = text.strip().lower()
    if len(s) != 42 or not s.startswith("0x"):
        raise ReplayInputError(f"--keeper {text!r} is not a 0x-prefixed 20-byte address")
    try:
        int(s, 16)
    except ValueError:
        raise ReplayInputError(f"--keeper {text!r} is not a 0x-prefixed 20-byte address") from None
    return s


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int | None], None]]:
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )
    tasks: dict[str, TaskID] = {}

    def update(task: str, advance: int, total: int | None) -> None:
        if task not in tasks:
            tasks[task] = bar.add_task(_LABELS.get(task, task), total=total)
        tid = tasks[task]
        if total is not None:
            bar.update(tid, total=total)
        if advance:
            bar.advance(tid, advance)

    with bar:
        yield update


def run(
    *,
    deployment: Path,
    rpc: str | None,
    state_dump: Path | None,
    first: int | None,
    last: int | None,
    db: str | None,
    json_out: Path | None,
    html_out: Path | None,
    accounts: list[str],
    progress: bool = True,
    keepers: list[str] | None = None,
) -> int:
    for url in (rpc, db):
        if url:
            register_url(url)
    try:
        ids = [parse_account_arg(a) for a in accounts]
        if first is not None and last is not None and last < first:
            raise BadBlockRange(f"--to {last} is before --from {first}")
        keeper_addrs = [parse_address_arg(k) for k in keepers or []]
        opts = ReplayOptions(deployment, rpc, state_dump, first, last, db, ids, keeper_addrs)
    except ReplayInputError as exc:
        return _fail(exc.name, exc.message, EXIT_BAD_INPUT, rpc, db)
    # The NDJSON report is written while the replay runs, to a side file renamed into place
    # at the end: a replay refused or failed leaves nothing behind. Without --json it is a
    # temporary file, if the HTML report needs it.
    tmpdir: tempfile.TemporaryDirectory[str] | None = None
    try:
        if json_out is not None:
            partial = json_out.with_name(json_out.name + ".partial")
        elif html_out is not None:
            tmpdir = tempfile.TemporaryDirectory(prefix="keeper-replay-")
            partial = Path(tmpdir.name) / "replay.ndjson"
        else:
            partial = None
        sink = NdjsonReport(partial) if partial is not None else None
    except OSError as exc:
        return _fail("ReportNotWritable", f"{exc.filename}: {exc.strerror}", EXIT_BAD_INPUT)
    try:
        return _run(opts, sink, partial, json_out, html_out, progress, rpc, db)
    finally:
        if sink is not None:
            sink.close()
        if partial is not None and partial.exists() and json_out is not None:
            partial.unlink()  # only left when the replay did not finish
        if tmpdir is not None:
            tmpdir.cleanup()


def _run(
    opts: ReplayOptions,
    sink: NdjsonReport | None,
    partial: Path | None,
    json_out: Path | None,
    html_out: Path | None,
    progress: bool,
    rpc: str | None,
    db: str | None,
) -> int:
    try:
        with _progress(progress and sys.stderr.isatty()) as update:
            result = replay(opts, update, sink)
    except ReplayInputError as exc:
        return _fail(exc.name, exc.message, EXIT_BAD_INPUT, rpc, db)
    except ChainError as exc:  # the node failed during the replay (not the input)
        return _fail(type(exc).__name__, str(exc), EXIT_BAD_INPUT, rpc, db)
    except Exception as exc:  # a bug: one line, no traceback
        msg = f"{type(exc).__name__}: {exc} (please report this bug)"
        return _fail("InternalError", msg, EXIT_BUG, rpc, db)
    for m in result.mismatches:
        sys.stdout.write(scrub(m.line()) + "\n")
    sys.stdout.write(scrub(result.verdict_line()) + "\n")
    try:
        if sink is not None and partial is not None:
            sink.finish(result)
            if json_out is not None:
                partial.replace(json_out)
                partial = json_out
            if html_out is not None:
                write_html(partial, html_out)
    except OSError as exc:
        return _fail("ReportNotWritable", f"{exc.filename}: {exc.strerror}", EXIT_BAD_INPUT)
    return EXIT_CLEAN if result.clean else EXIT_MISMATCH


def _fail(name: str, message: str, status: int, *urls: str | None) -> int:
    text = scrub(message)
    for url in urls:
        if url:
            text = text.replace(url, redact_url(url))
    sys.stderr.write(f"error: {name}: {text}\n")
    return status
