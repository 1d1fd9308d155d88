"""Audit replay at demo size, measured as the auditor meets it: output sizes, the replay
process's peak memory, and how long the HTML report takes to open in a real browser.

1. The demo (``python -m keeper demo --no-live``: 200 accounts, ~2 minutes), or the output
   folder of an earlier demo (``--reuse DIR``: its state.json, deployment.json, keeper.db).
2. ``keeper replay --state-dump ... --db ... --json replay.ndjson --html html/`` as a child
   process; its own peak RSS (``getrusage(RUSAGE_SELF)`` in that process, written at exit: the
   anvil it starts is not counted) and wall time.
3. Sizes: the NDJSON report, the HTML directory (every file), its index page and its largest
   account page.
4. Headless Chromium (Debian's ``chromium``; installed with apt-get when missing and the
   machine allows it, as scripts/bootstrap.sh does for promtool) driven over the DevTools
   protocol (a websocket, the ``websockets`` package): each page is opened in a fresh tab at a
   1280 px wide viewport, and the load time is the Navigation Timing entry's
   ``loadEventEnd`` (navigation start = 0). Also read: whether the page is wider than the
   viewport (a horizontal scrollbar) and the number of table rows.

Prints the figures (and ``--json FILE`` writes them); nothing is asserted.

    .venv/bin/python -m bench.replay_browser [--reuse DIR] [--out DIR] [--accounts 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

REPO = Path(__file__).resolve().parents[1]

#: Runs the keeper CLI and writes its own peak RSS (KiB, Linux) to the file named by argv[1].
_CHILD = (
    "import atexit, resource, sys\n"
    "out = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(out, 'w').write("
    "str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
    "from keeper.cli import app\n"
    "sys.argv[0] = 'keeper'\n"
    "app()\n"
)


def run_demo(out: Path, accounts: int) -> float:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "keeper", "demo", "--no-live", "--out", str(out)]
    cmd += ["--accounts", str(accounts)]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def run_replay(demo: Path, report: Path) -> dict[str, Any]:
    if report.exists():
        shutil.rmtree(report)
    report.mkdir(parents=True)
    rss_file = report / "replay.maxrss"
    args = [
        "replay",
        "--state-dump", str(demo / "state.json"),
        "--deployment", str(demo / "deployment.json"),
        "--db", f"sqlite:///{demo / 'keeper.db'}",
        "--json", str(report / "replay.ndjson"),
        "--html", str(report / "html"),
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(rss_file), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"replay failed ({proc.returncode}): {proc.stderr.strip()}")
    html = report / "html"
    files = [p for p in html.rglob("*") if p.is_file()]
    pages = sorted((html / "accounts").glob("*.html"), key=lambda p: p.stat().st_size)
    ndjson = (report / "replay.ndjson").stat().st_size
    html_bytes = sum(p.stat().st_size for p in files)
    return {
        "verdict": proc.stdout.strip().splitlines()[-1],
        "exit_status": proc.returncode,
        "replay_seconds": round(wall, 1),
        "replay_peak_rss_mib": round(int(rss_file.read_text()) / 1024, 1),
        "ndjson_bytes": ndjson,
        "ndjson_lines": sum(1 for _ in (report / "replay.ndjson").open()),
        "html_bytes": html_bytes,
        "html_files": len(files),
        "total_output_bytes": ndjson + html_bytes,
        "index_bytes": (html / "index.html").stat().st_size,
        "largest_account_page": str(pages[-1]) if pages else None,
        "largest_account_page_bytes": pages[-1].stat().st_size if pages else 0,
    }


def ensure_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("installing chromium (Debian package) ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
            check=True,
            env=env,
        )
        found = shutil.which("chromium")
        if found:
            return found
    raise SystemExit("chromium not found (Debian: apt-get install chromium)")


class Browser:
    """Headless Chromium and a minimal DevTools-protocol client (one websocket per tab)."""

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="replay-bench-chromium-")
        self.proc = subprocess.Popen(
            [
                exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}", "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])

    def load(self, path: Path) -> dict[str, Any]:
        """Open ``path`` in a fresh tab; Navigation Timing and layout facts of the page."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT"
        )
        target = json.loads(urllib.request.urlopen(req, timeout=10).read())
        try:
            with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
                return self._load(ws, path)
        finally:
            urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/json/close/{target['id']}", timeout=10
            ).read()

    def _load(self, ws: Any, path: Path) -> dict[str, Any]:
        ids = iter(range(1, 10**6))

        def call(method: str, **params: Any) -> dict[str, Any]:
            n = next(ids)
            ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv(timeout=120))
                if msg.get("id") == n:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return dict(msg.get("result", {}))

        call("Page.enable")
        call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
             deviceScaleFactor=1, mobile=False)  # fmt: skip
        wall0 = time.monotonic()
        call("Page.navigate", url=path.resolve().as_uri())
        while True:
            msg = json.loads(ws.recv(timeout=120))
            if msg.get("method") == "Page.loadEventFired":
                break
        wall = time.monotonic() - wall0
        expr = (
            "JSON.stringify({nav: performance.getEntriesByType('navigation')[0].toJSON(),"
            " scrollWidth: document.documentElement.scrollWidth,"
            " clientWidth: document.documentElement.clientWidth,"
            " rows: document.querySelectorAll('tr').length,"
            " firstHeading: (document.querySelector('h1') || {}).textContent,"
            " firstBlock: (document.querySelector('h1 + p, .verdict') || {}).className})"
        )
        res = call("Runtime.evaluate", expression=expr, returnByValue=True)
        facts = json.loads(res["result"]["value"])
        nav = facts["nav"]
        return {
            "load_event_ms": round(nav["loadEventEnd"], 1),
            "dom_content_loaded_ms": round(nav["domContentLoadedEventEnd"], 1),
            "wall_to_load_event_ms": round(wall * 1000, 1),
            "horizontal_overflow": facts["scrollWidth"] > facts["clientWidth"],
            "table_rows": facts["rows"],
        }

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse", type=Path, help="an earlier demo's output folder")
    ap.add_argument("--out", type=Path, default=REPO / "var" / "bench-replay")
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {}
    demo = args.reuse
    if demo is None:
        demo = args.out / "demo"
        if demo.exists():
            shutil.rmtree(demo)
        figures["demo_seconds"] = round(run_demo(demo, args.accounts), 1)
    figures.update(run_replay(demo, args.out / "report"))
    browser = Browser(ensure_chromium())
    try:
        index = args.out / "report" / "html" / "index.html"
        browser.load(index)  # a first load warms the browser's own start-up; not counted
        figures["index"] = browser.load(index)
        page = figures.get("largest_account_page")
        if page:
            figures["largest_account"] = browser.load(Path(page))
    finally:
        browser.close()
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
