"""Where seeding time goes: ``seed_market`` (signed-order trades) split by part, next to
``seed_venue`` (the devnet batch seeder) on the same number of accounts.

``seed_market``'s parts are timed by wrapping them (no profiler): exact-engine sizing
(``size_book``), signing the two orders of a trade and building the call
(``OrderMatcher.trade``), submitting the trade transactions and the mint/approve/deposit
transactions (``eth_sendTransaction`` through web3, automine off), and mining with the receipts
(anvil executing every transaction; each ``trade`` runs both sides' full margin check).

    .venv/bin/python -m bench.seed_paths 1000
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from web3 import Web3

import keeper.devnet.market as mk
from keeper.artifacts import ensure_built
from keeper.chain import Chain
from keeper.deployment import deploy_protocol
from keeper.devnet import Anvil
from keeper.devnet.venue import seed_venue
from keeper.orders import OrderMatcher

PARTS: dict[str, float] = defaultdict(float)


def _timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            PARTS[name] += time.perf_counter() - t

    return wrapper


def _instrument() -> None:
    # Timing wrappers patched over the seeder for this bench only: mypy refuses assigning to
    # a method, which is the point here.
    mk.size_book = _timed("exact-engine sizing (size_book)", mk.size_book)
    OrderMatcher.trade = _timed(  # type: ignore[method-assign]  # timing wrapper
        "signing 2 orders per trade + building the call", OrderMatcher.trade
    )
    send = mk._Sender.send

    def timed_send(self: Any, what: str, fn: Any, sender: str, gas: int = 6_000_000) -> None:
        t = time.perf_counter()
        send(self, what, fn, sender, gas)
        part = "submitting trade txs" if what.startswith("trade") else "submitting deposit txs"
        PARTS[part] += time.perf_counter() - t

    mk._Sender.send = timed_send  # type: ignore[method-assign]  # timing wrapper
    mk._Sender.mine = _timed(  # type: ignore[method-assign]  # timing wrapper
        "mining + receipts (anvil executes)", mk._Sender.mine
    )


def main(n: int) -> None:
    ensure_built()
    _instrument()
    for name, seeder in (("seed_market", mk.seed_market), ("seed_venue", seed_venue)):
        with Anvil() as anvil:
            w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 600}))
            d = deploy_protocol(w3)
            chain = Chain.connect(anvil.url, d)
            PARTS.clear()
            t = time.perf_counter()
            m = seeder(w3, d, chain, n, seed=7)
            total = time.perf_counter() - t
            print(f"{name}: {n} accounts, {m.trades} legs in {total:.1f} s")
            parts = dict(PARTS) if name == "seed_market" else m.timings
            for k, v in sorted(parts.items(), key=lambda x: -x[1]):
                print(f"  {k}: {v:.1f} s")
            if name == "seed_market":
                print(f"  other: {total - sum(parts.values()):.1f} s")
            chain.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
