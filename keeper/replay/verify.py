"""On-chain re-checks at the decision's block (``eth_call`` pinned by block hash).

* ``MarginVerifier.fullCheck(portfolio, market, riskParams)`` with exactly the re-derived
  inputs: must return the engine's result field by field, or revert with the engine's error.
* ``ClearingHouse.marginOf(account)`` (the protocol builds the inputs itself, strict ages):
  must equal the engine's strict result, or revert with the strict market's oracle error.
* Liquidations and margin calls of the range: at the parent block's state (timestamp of the
  block that included them), the witness check under lenient ages must prove the claim, and
  the event's equity / requirement / penalty / bounty must be the ones the engine derives.

The calls go through Multicall3 (one state per eth_call) in JSON-RPC batches; a full check of
a 40-position account costs up to ~12M gas, so few fit in one eth_call under a node's gas cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from web3 import Web3

from keeper.abi import CLEARING_HOUSE_ABIS
from keeper.chain import BlockRef, Chain, OracleError, ProtocolSnapshot
from keeper.chain.multicall import Call, abi_functions, multicall
from keeper.chain.revert import decode_revert
from keeper.replay.derive import Derivation
from keeper.replay.events import Event
from keeper.replay.mismatch import FieldDiff, Mismatch, normalise, result_diffs
from margin.errors import MarginError
from margin.fixed_point import mul_down, mul_up
from margin.portfolio_margin import LIQUIDATABLE, MARGIN_CALL, STATE_NAMES, MarginResult

#: fullCheck / marginOf calls per aggregate3 eth_call: 4 x ~12M gas (40 positions, the
#: largest grid) stays under geth's default 50M eth_call gas cap.
VERIFY_CALLS_PER_MULTICALL = 4


@dataclass
class Verdict:
    """The chain's answers for one derivation."""

    full_check: str = "not run"  # agrees | reverts as expected | disagrees | not run
    margin_of: str = "not run"
    mismatches: list[Mismatch] = field(default_factory=list)


def _verifier(chain: Chain) -> str:
    return Web3.to_checksum_address(chain.deployment.address("MarginVerifier"))


def verify_block(chain: Chain, block: BlockRef, derivations: Sequence[Derivation]) -> list[Verdict]:
    """Re-check every derivation of one block on-chain; one verdict each, in order."""
    vfn = abi_functions("MarginVerifier")["fullCheck"]
    mfn = abi_functions(*CLEARING_HOUSE_ABIS)["marginOf"]
    calls: list[Call] = []
    slots: list[tuple[int, str]] = []
    for i, d in enumerate(derivations):
        if d.market is not None:
            args = (d.portfolio.to_abi(), d.market.to_abi(), d.risk_params)
            calls.append(Call(_verifier(chain), vfn, args, False))
            slots.append((i, "full_check"))
        calls.append(Call(chain.clearing_house, mfn, (d.account,), False))
        slots.append((i, "margin_of"))
    results = multicall(
        chain.rpc,
        chain.multicall_address,
        block,
        calls,
        calls_per_multicall=VERIFY_CALLS_PER_MULTICALL,
        multicalls_per_batch=chain.multicalls_per_batch,
    )
    verdicts = [Verdict() for _ in derivations]
    for (i, what), res in zip(slots, results, strict=True):
        d = derivations[i]
        v = verdicts[i]
        if what == "full_check":
            expect: MarginResult | MarginError | None = d.result or d.engine_error
        elif d.strict_error is not None:
            expect = None  # marginOf must revert with the strict oracle error
        else:
            expect = d.result or d.engine_error
        strict = d.strict_error if what == "margin_of" and expect is None else None
        revert = strict.revert_data() if strict is not None else None
        if isinstance(expect, MarginError):
            revert = expect.revert_data()
        status, mm = _judge(
            what,
            d,
            res.ok,
            res.value[0] if res.ok and res.value else None,
            res.revert,
            expect if isinstance(expect, MarginResult) else None,
            revert,
        )
        setattr(v, what, status)
        if mm is not None:
            v.mismatches.append(mm)
    return verdicts


def _judge(
    what: str,
    d: Derivation,
    ok: bool,
    value: Any,
    revert_data: bytes,
    expect: MarginResult | None,
    expect_revert: bytes | None,
) -> tuple[str, Mismatch | None]:
    kind = "verifier" if what == "full_check" else "marginOf"
    label = "MarginVerifier.fullCheck" if what == "full_check" else "ClearingHouse.marginOf"
    if expect is not None:
        if not ok:
            msg = f"{label} reverted {decode_revert(revert_data)}; the engine computed a result"
            return "disagrees", Mismatch(kind, d.block.number, d.account, msg)
        diffs = result_diffs(expect.to_abi(), value)
        if diffs:
            msg = f"{label} returned a different result"
            return "disagrees", Mismatch(kind, d.block.number, d.account, msg, diffs)
        return "agrees", None
    assert expect_revert is not None
    if ok:
        msg = (
            f"{label} returned a result; the engine expected the revert {d.error or d.strict_error}"
        )
        return "disagrees", Mismatch(kind, d.block.number, d.account, msg)
    if bytes(revert_data) != expect_revert:
        msg = f"{label} reverted differently"
        diff = FieldDiff(
            "revert", str(decode_revert(expect_revert)), str(decode_revert(revert_data))
        )
        return "disagrees", Mismatch(kind, d.block.number, d.account, msg, [diff])
    return "reverts as expected", None


# --- liquidations and margin calls ---------------------------------------------------------


@dataclass
class ClaimCheck:
    """A liquidation or margin call of the range, re-derived at its parent block."""

    kind: str  # liquidation | margin_call
    event: Event
    account: int
    witness: list[int] | None
    witness_source: str  # calldata (sent by the caller) | decision <id> | full check | none
    state: str | None = None  # the witness check's state
    proven: bool = False
    equity: int | None = None
    requirement: int | None = None
    initial_margin: int | None = None
    penalty: int | None = None
    bounty: int | None = None
    to_insurance: int | None = None
    taken_over: list[dict[str, int]] = field(default_factory=list)
    bounty_credited: int | None = None
    notes: list[str] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)


def penalty_and_bounty(
    requirement: int, equity: int, fraction: int, config: tuple[int, int, int, int, int]
) -> tuple[int, int, int]:
    """ClearingHouse's penalty split (docs/protocol.md, Liquidation step 3): (penalty, bounty,
    to insurance). The bounty only ever comes out of the penalty."""
    penalty_rate, bounty_share, _grace, min_bounty, max_bounty = config
    penalty = mul_up(mul_up(requirement, fraction), penalty_rate)
    if penalty > equity:
        penalty = max(equity, 0)
    bounty = min(max(mul_down(penalty, bounty_share), min_bounty), max_bounty, penalty)
    return penalty, bounty, penalty - bounty


def check_claim(
    kind: str,
    event: Event,
    parent: ProtocolSnapshot,
    timestamp: int,
    witness: list[int] | None,
    witness_source: str,
    same_tx: Sequence[Event],
) -> ClaimCheck:
    """Re-derive a flag (``MarginCall``) or ``Liquidation`` on the parent block's state, at the
    including block's timestamp (what the transaction saw, when it was first in its block)."""
    account = int(event.args["account"])
    c = ClaimCheck(kind, event, account, witness, witness_source)
    if kind == "liquidation":
        c.bounty_credited = 0  # BountyCredited is only emitted for a bounty above zero
        # The positions handed to the backstop, packed as the position slots are:
        # (instrument << 128) | uint128(int128(quantity)).
        for word, price in zip(event.args["taken"], event.args["prices"], strict=True):
            low = int(word) & (2**128 - 1)
            c.taken_over.append(
                {
                    "instrument": int(word) >> 128,
                    "quantity": low - 2**128 if low >= 2**127 else low,
                    "price": int(price),
                }
            )
    block = event.block
    for e in same_tx:
        if e.name == "BountyCredited":
            c.bounty_credited = int(e.args["amount"])
    snap = replace(parent, timestamp=timestamp, _tables={})
    acc = snap.accounts[account]
    try:
        inp = snap.inputs(account, lenient=True)
        table = snap.table(inp.market)
        if c.witness is None:
            c.witness = list(table.full_check(inp.portfolio).witness)
            c.witness_source = "full check"
        res = table.witness_check(inp.portfolio, c.witness)
    except (OracleError, MarginError) as exc:
        c.mismatches.append(
            Mismatch(kind, block, account, f"cannot re-derive the witness check: {exc}")
        )
        return c
    c.state = STATE_NAMES[res.state]
    c.equity, c.requirement, c.initial_margin = res.equity, res.requirement, res.initial_margin
    grace = snap.liquidation_config[2]
    if kind == "liquidation":
        grace_over = acc.flagged_at != 0 and timestamp >= acc.flagged_at + grace
        c.proven = res.state == LIQUIDATABLE or (res.state == MARGIN_CALL and grace_over)
        fraction = int(event.args["fraction"])
        c.penalty, c.bounty, c.to_insurance = penalty_and_bounty(
            res.requirement, res.equity, fraction, snap.liquidation_config
        )
        checked = {
            "equity": res.equity,
            "requirement": res.requirement,
            "penalty": c.penalty,
            "bounty": c.bounty,
            "toInsurance": c.to_insurance,
        }
        what = "not liquidatable under the witness"
    else:
        c.proven = res.state >= MARGIN_CALL and acc.flagged_at == 0
        checked = {"equity": res.equity, "initialMargin": res.initial_margin}
        what = "not flaggable under the witness"
    if not c.proven:
        c.mismatches.append(Mismatch(kind, block, account, f"{what} {c.witness} ({c.state})"))
    diffs = [
        FieldDiff(k, v, int(event.args[k]))
        for k, v in checked.items()
        if normalise(v) != int(event.args[k])
    ]
    if diffs and witness_source == "full check" and all(d.field != "equity" for d in diffs):
        # The liquidator's witness is not in the event: only the equity is witness-free.
        c.notes.append(
            "the event's figures differ from the full check's witness: the caller used "
            "another witness (give --db to check the keeper's)"
        )
    elif diffs:
        c.mismatches.append(
            Mismatch(kind, block, account, "the event disagrees with the re-derivation", diffs)
        )
    return c


__all__ = ["ClaimCheck", "Verdict", "check_claim", "penalty_and_bounty", "verify_block"]
