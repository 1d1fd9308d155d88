"""The scripted devnet market of the demo and the soak run: oracle feeds moved one block at a
time through drift, a volatility spike, a crash, a recovery and the expiry of the dated
instruments."""

from __future__ import annotations

import random

from web3 import Web3
from web3.types import RPCEndpoint

from keeper.deployment import Deployment, bind

#: (name, share of the duration)
PHASES: tuple[tuple[str, float], ...] = (
    ("drift", 0.15),
    ("vol spike", 0.25),
    ("crash", 0.2),
    ("recovery", 0.2),
    ("expiry", 0.2),
)


class ScriptedFeeds:
    """The scripted oracle: spot and implied-vol answers per underlying (8 decimals)."""

    def __init__(self, w3: Web3, deployment: Deployment, sender: str) -> None:
        self.w3 = w3
        self.sender = sender
        self.price = []
        self.vol = []
        for u in deployment.underlyings:
            sym = u["symbol"]
            self.price.append(bind(w3, deployment, f"MockAggregator:{sym}/USD"))
            self.vol.append(bind(w3, deployment, f"MockAggregator:{sym}/IV"))
        self.spot = [int(c.functions.answer().call()) for c in self.price]
        self.iv = [int(c.functions.answer().call()) for c in self.vol]
        self.base_spot = list(self.spot)
        self.base_iv = list(self.iv)

    def push(self) -> None:
        """One new round for every feed (fresh updatedAt), mined in the next block."""
        for c, v in zip(self.price, self.spot, strict=True):
            c.functions.setAnswer(v).transact({"from": self.sender, "gas": 200_000})
        for c, v in zip(self.vol, self.iv, strict=True):
            c.functions.setAnswer(v).transact({"from": self.sender, "gas": 200_000})


def phase_plan(steps: int) -> list[str]:
    """One phase name per block: each phase gets its share of ``steps`` (at least one)."""
    plan: list[str] = []
    for name, share in PHASES:
        plan += [name] * max(1, round(steps * share))
    return plan


def apply_phase(
    phase: str,
    first: bool,
    feeds: ScriptedFeeds,
    rng: random.Random,
    *,
    crash: float,
    expiry: int,
) -> None:
    """Move the feeds as one block of ``phase`` says (``first``: its first block), then push a
    new round of every feed. ``crash``: ETH falls this much in one block (BTC 5/6 of it);
    ``expiry``: the dated instruments' expiry, passed in the first block of "expiry"."""
    if phase == "drift":
        feeds.spot = [max(1, round(s * (1 + rng.gauss(0, 0.003)))) for s in feeds.spot]
    elif phase == "vol spike":
        # Implied vol jumps at once; spot swings four times the drift's size meanwhile (what the
        # keeper's recalibration measures from the price rounds).
        if first:
            feeds.iv = [round(v * 1.6) for v in feeds.iv]
        feeds.spot = [max(1, round(s * (1 + rng.gauss(0, 0.012)))) for s in feeds.spot]
    elif phase == "crash" and first:
        feeds.spot = [
            round(s * (1 - crash * (1 if i == 0 else 5 / 6))) for i, s in enumerate(feeds.spot)
        ]
    elif phase == "recovery":
        feeds.spot = [round(s * 1.006) for s in feeds.spot]
        feeds.iv = [max(1, round(v * 0.99)) for v in feeds.iv]
    elif phase == "expiry" and first:
        # Jump past the dated instruments' expiry: the next block carries fresh rounds.
        feeds.w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [expiry + 60])
    feeds.push()


def set_block_time(w3: Web3, seconds: float) -> None:
    """Interval mining every ``seconds`` (anvil takes whole seconds; 0 stops it): anvil
    refuses a float with an error answer, which ``make_request`` does not raise."""
    reply = w3.provider.make_request(RPCEndpoint("evm_setIntervalMining"), [round(seconds)])
    if "error" in reply:
        raise RuntimeError(f"evm_setIntervalMining refused: {reply['error']}")
