"""The demo's recalibration: its settings (a devnet rule for a market whose seconds stand for
hours) and its part of the summary — what was queued and executed, the grid before and after,
and a counterfactual of the crash.

The counterfactual is evaluated, not re-run: the books of the seeded accounts as they stood
at the first crash block (the state the crash's liquidations start from) are margined with the
margin engine twice, under the grid on chain then (recalibrated) and under the grid the demo
deployed with. An account liquidatable (equity below the maintenance requirement) under one
grid and not the other is a liquidation the recalibration caused (earlier: the books are the
same, the requirement higher) or prevented. The demo's accounts never add collateral after a
margin call, so the count is mechanical: it does not include a trader who would have cured
because the call came earlier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from web3 import Web3

from keeper.chain import Chain
from keeper.deployment import Deployment, bind, decode_risk_params
from margin.params import WAD, RiskParams
from margin.portfolio_margin import LIQUIDATABLE, MARGIN_CALL, full_check

#: keeper config for the demo: the job every 2 s (wall clock, 1 block a second); the last 25
#: rounds of each feed (one a block from the drift on: the job starts once 25 have been
#: published, so the pre-market deployment rounds are out of the window) sampled every
#: second; H = 300 s, the demo's "close-out time", and k chosen so that the drift's
#: volatility gives about the deployed grid (0.15): the drift's proposals move less than
#: min_change and are not queued, the vol spike's are; the vol shift per (annualised,
#: per-second-sampled) vol point scaled down to match.
RECALIBRATION = {
    "rounds": 25,
    "sample_seconds": 1,
    "k_sigma": 3.6,
    "horizon_seconds": 300,
    "vol_shift_per_vol": 0.0055,
    "min_change": 0.05,
}
RECALIBRATE_EVERY = 2.0
#: The timelock on the demo's devnet (the contract's floor): seconds of chain time.
DEMO_DELAY = 10


@dataclass
class CrashCounterfactual:
    block: int
    accounts: int  # seeded accounts with positions at that block
    liquidatable_recalibrated: int
    liquidatable_original: int
    caused: int  # liquidatable only under the recalibrated grid
    prevented: int  # liquidatable only under the original grid
    #: The block before the crash: accounts below initial margin (margin called: a flag and
    #: its grace period start) under each grid -- the warning the recalibration gave.
    below_im_before_recalibrated: int = 0
    below_im_before_original: int = 0


@dataclass
class RecalibrationSummary:
    queued: int = 0
    executed: int = 0
    cancelled: int = 0
    #: Per underlying symbol: price range and vol shift base, deployed -> at the crash -> end.
    grid: dict[str, dict[str, str]] = field(default_factory=dict)
    crash: CrashCounterfactual | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grid(p: RiskParams, u: int) -> str:
    x = p.underlyings[u]
    return f"{x.price_range / WAD:.4f}/{x.vol_shift_base / WAD:.4f}"


def summarise(
    w3: Web3,
    chain: Chain,
    d: Deployment,
    original: bytes,
    accounts: list[int],
    first_block: int,
    crash_block: int | None,
) -> RecalibrationSummary:
    ch = bind(w3, d, "ClearingHouse")
    last = w3.eth.block_number
    out = RecalibrationSummary()
    for name in ("RecalibrationQueued", "RecalibrationExecuted", "RecalibrationCancelled"):
        n = len(getattr(ch.events, name)().get_logs(from_block=first_block, to_block=last))
        setattr(out, name.removeprefix("Recalibration").lower(), n)
    orig = decode_risk_params(original)
    end = decode_risk_params(bytes(ch.functions.riskParams().call()))
    at_crash = (
        decode_risk_params(bytes(ch.functions.riskParams().call(block_identifier=crash_block)))
        if crash_block is not None
        else end
    )
    for u, info in enumerate(sorted(d.underlyings, key=lambda x: x["index"])):
        out.grid[str(info["symbol"])] = {
            "deployed": _grid(orig, u),
            "at_crash": _grid(at_crash, u),
            "end": _grid(end, u),
        }
    if crash_block is not None:
        out.crash = _counterfactual(chain, orig, accounts, crash_block)
    return out


def _states(
    chain: Chain, original: RiskParams, accounts: list[int], block: int, at_least: int
) -> tuple[set[int], set[int], int]:
    """Accounts in state >= ``at_least`` at ``block`` under the grid on chain and under
    ``original``, and how many had positions."""
    snap = chain.view(chain.rpc.block(block)).snapshot(accounts)
    with_, without, n = set(), set(), 0
    for a in accounts:
        if a not in snap.accounts or not snap.accounts[a].positions:
            continue
        n += 1
        inp = snap.inputs(a, lenient=True)
        if full_check(inp.portfolio, inp.market, snap.risk_params).state >= at_least:
            with_.add(a)
        if full_check(inp.portfolio, inp.market, original).state >= at_least:
            without.add(a)
    return with_, without, n


def _counterfactual(
    chain: Chain, original: RiskParams, accounts: list[int], block: int
) -> CrashCounterfactual:
    with_, without, n = _states(chain, original, accounts, block, LIQUIDATABLE)
    im_with, im_without, _ = _states(chain, original, accounts, block - 1, MARGIN_CALL)
    return CrashCounterfactual(
        block,
        n,
        len(with_),
        len(without),
        len(with_ - without),
        len(without - with_),
        len(im_with),
        len(im_without),
    )
