"""What passes between the stages of the per-block step (keeper.pipeline).

* read -> assess: the snapshot, ``keeper.chain.view.ProtocolSnapshot`` (one block, every
  account read at it), and the accounts to assess;
* assess -> execute: one ``Assessment`` per account (its ``AccountState`` and the ``Action``
  chosen, if any: an ``ActionKind`` and its arguments), under the ``DecisionPolicy``;
* inside execute: a ``Candidate`` (an action past its gates, with its calldata), then
  ``Simulated`` (what its simulation said);
* out of the step: the ``BlockReport`` (what was assessed, recorded, sent, and each
  ``SkipReason``).

Plain data and enums: nothing here reads the chain or the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from margin.portfolio_margin import MarginResult

if TYPE_CHECKING:  # types only: the configuration module reads files, the rpc one the chain
    from keeper.chain.rpc import BlockRef
    from keeper.config import DecisionsConfig


class AccountState(StrEnum):
    """An account's state as the keeper classifies it (recorded on every decision)."""

    HEALTHY = "healthy"
    MARGIN_CALL = "margin_call"
    LIQUIDATABLE = "liquidatable"
    FLAGGED_GRACE = "flagged_grace"
    SETTLEABLE = "settleable"
    BAD_DEBT = "bad_debt"
    NO_PRICE = "no_price"
    EMPTY = "empty"
    INVALID = "invalid"  # the engine refused the inputs (a MarginError other than an oracle's)


class ActionKind(StrEnum):
    """What the keeper may send: one clearing-house function each (``Action.call``)."""

    FLAG = "flag"
    LIQUIDATE = "liquidate"
    SETTLE_ACCOUNT = "settle_account"
    RESOLVE_BAD_DEBT = "resolve_bad_debt"
    SETTLE_INSTRUMENT = "settle_instrument"
    CLEAR_FLAG = "clear_flag"
    POKE_FUNDING = "poke_funding"


STATES = tuple(s.value for s in AccountState)
#: Actions that pay no bounty: allowed by policy flags instead of the profitability rule.
MAINTENANCE = frozenset(
    {
        ActionKind.FLAG,
        ActionKind.SETTLE_ACCOUNT,
        ActionKind.RESOLVE_BAD_DEBT,
        ActionKind.SETTLE_INSTRUMENT,
        ActionKind.CLEAR_FLAG,
        ActionKind.POKE_FUNDING,
    }
)


@dataclass(frozen=True)
class DecisionPolicy:
    """How the keeper chooses and filters actions (mapped from ``config.decisions``).

    Profit is measured in asset-0 WAD (the unit the protocol credits bounties in):
    ``expected_bounty - gas_cost >= min_profit``, the gas cost (wei of the native coin)
    converted with ``native_price`` (asset-0 WAD per 1e18 wei) when set, else with the spot of
    underlying ``gas_price_underlying`` read from the same snapshot (ETH/USD on the devnet).
    """

    min_profit: int = 0  # asset-0 WAD
    allow_flags: bool = True
    allow_settlement: bool = True
    allow_bad_debt: bool = True
    clear_cured_flags: bool = True  # clearFlag of a flagged account back above IM (no bounty)
    liquidate_insolvent: bool = True  # liquidate books under water although they pay no bounty
    gas_margin_percent: int = 20  # gas limit = estimate * (100 + this) / 100
    backoff_blocks: int = 2  # first back-off after a simulation revert; doubles each time
    max_backoff_blocks: int = 256
    fraction_steps: int = 100  # liquidation fractions searched on a grid of 1/steps
    gas_price_underlying: int | None = 0
    native_price: int | None = None

    @classmethod
    def from_config(cls, cfg: DecisionsConfig) -> DecisionPolicy:
        """``config.decisions`` -> DecisionPolicy (``min_profit`` read in asset-0 WAD)."""
        return policy_from_config(cfg)


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    account: int | None
    instrument: int | None
    nonce: int | None
    witness: tuple[int, ...] | None
    fraction: int | None  # WAD
    expected_bounty: int  # asset-0 WAD, as the contract would credit it
    key: str  # idempotency key: one transaction per key, ever
    round_id: int | None = None  # settle_instrument: the price-feed round named
    #: Sent whatever the bounty (the profitability rule does not apply): the full close of a
    #: book under water, which pays no penalty and so no bounty (``liquidate_insolvent``).
    maintenance: bool = False

    def call(self) -> tuple[str, tuple[object, ...]]:
        """The clearing-house function and its arguments."""
        if self.kind == ActionKind.FLAG:
            return "flag", (self.account, self.nonce, list(self.witness or ()))
        if self.kind == ActionKind.LIQUIDATE:
            return "liquidate", (self.account, self.nonce, list(self.witness or ()), self.fraction)
        if self.kind == ActionKind.SETTLE_ACCOUNT:
            return "settleAccount", (self.account,)
        if self.kind == ActionKind.RESOLVE_BAD_DEBT:
            return "resolveBadDebt", (self.account,)
        if self.kind == ActionKind.CLEAR_FLAG:
            return "clearFlag", (self.account,)
        if self.kind == ActionKind.SETTLE_INSTRUMENT:
            return "settleInstrument", (self.instrument, self.round_id)
        if self.kind == ActionKind.POKE_FUNDING:
            return "pokeFunding", (self.instrument,)
        raise ValueError(f"unknown action kind {self.kind}")


@dataclass(frozen=True)
class Assessment:
    account: int
    block: BlockRef
    nonce: int
    state: AccountState
    result: MarginResult | None
    lenient: bool
    #: The inputs digest, or how to compute it: most assessments are never recorded (a healthy
    #: account whose book did not change), so the hash is computed on first use.
    digest_source: str | Callable[[], str]
    action: Action | None
    flagged_at: int = 0
    note: str | None = None  # why no action where one might be expected (kept on the record)
    #: ``inputs_digest`` of the account's own inputs with an empty market: what decides
    #: whether a new record is due (prices and time move every block; the book does not).
    change_digest: str = ""
    #: ``no_price``: the name of the oracle check that failed (``StalePrice``, ...).
    oracle_error: str | None = None
    #: The state was proven by the bounded float pass (keeper.book_engine) and equals the
    #: exact one; ``result`` is None. Only quiet healthy books are assessed this way.
    bounded: bool = False

    @property
    def inputs_digest(self) -> str:
        d = self.digest_source
        if not isinstance(d, str):
            d = d()
            object.__setattr__(self, "digest_source", d)  # computed once
        return d


def policy_from_config(cfg: DecisionsConfig) -> DecisionPolicy:
    """``config.decisions`` -> DecisionPolicy (``min_profit`` in asset-0 WAD)."""
    return DecisionPolicy(
        min_profit=int(cfg.min_profit),
        allow_flags=cfg.allow_flags,
        allow_settlement=cfg.allow_settlement,
        allow_bad_debt=cfg.allow_bad_debt,
        clear_cured_flags=cfg.clear_cured_flags,
        liquidate_insolvent=cfg.liquidate_insolvent,
        gas_margin_percent=cfg.gas_margin_percent,
        backoff_blocks=cfg.backoff_blocks,
        max_backoff_blocks=cfg.max_backoff_blocks,
        fraction_steps=cfg.fraction_steps,
        gas_price_underlying=cfg.gas_price_underlying,
        native_price=None if cfg.native_price is None else int(cfg.native_price),
    )


class SkipReason(StrEnum):
    """Why an action the assessment chose was not sent (``BlockReport.skipped``, metrics)."""

    UNPROFITABLE = "unprofitable"
    BACKOFF = "backoff"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"
    SIMULATION_REVERTED = "simulation_reverted"
    SEND_FAILED = "send_failed"


@dataclass(frozen=True)
class Simulated:
    """An action's calldata, what its ``eth_call`` returned, its gas limit and gas cost."""

    data: str
    returned: bytes
    gas_limit: int
    gas_cost: int | None  # asset-0 WAD at the initial max fee; None: no gas price
    base_fee: int  # of the latest block when simulated: the send's fees start from it


@dataclass
class BlockReport:
    block: int
    accounts_assessed: int = 0
    accounts_reused: int = 0  # books not re-read (nonce and flag unchanged since last read)
    by_state: dict[str, int] = field(default_factory=dict)
    decisions_recorded: int = 0
    actions_sent: list[str] = field(default_factory=list)  # their idempotency keys
    kinds_sent: list[ActionKind] = field(default_factory=list)  # and their kinds, in order
    skipped: dict[str, int] = field(default_factory=dict)
    rpc_round_trips: int = 0
    accounts_bounded: int = 0  # assessed by the bounded float pass alone (proven healthy)
    accounts_exact: int = 0  # assessed by the exact engine
    book_rebuilt: bool = False  # the engine rebuilt its columnar book for this block
    states: dict[int, str] = field(default_factory=dict)  # account -> state, assessed ones
    #: Accounts not acted on because an oracle answer was rejected, by the error's name.
    oracle_rejections: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: SkipReason) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def count(self, a: Assessment) -> None:
        """One account assessed, in its state."""
        self.accounts_assessed += 1
        self.by_state[a.state] = self.by_state.get(a.state, 0) + 1
        self.states[a.account] = a.state


@dataclass(frozen=True)
class Candidate:
    """An action that passed its gates, with its calldata: next, the simulation."""

    action: Action
    a: Assessment | None
    target: str
    changed: bool
    data: str
