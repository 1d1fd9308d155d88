"""The execute stage: gates, simulation, profitability, sending and recording.

``Executor.run`` takes a block's assessments, most urgent first (keeper.pipeline.assess), and
for each: a ``Decision`` row whenever the account's state or inputs digest changed (and for
every action), then for each action, in named steps:

1. ``_gates_pass``: back-off, idempotency and in-flight gates (store reads only);
2. ``_simulations``: a simulation against the latest block from the liquidator's address
   (``keeper.simulation``: the call's verdict, the gas it uses and the limit to send it with);
3. ``_profitable``: the profitability rule (maintenance actions are exempt);
4. ``_send``: the decisions recorded with their keys, then submitted (a dry run records only).

Actions go out in chunks of ``SIMULATION_CHUNK``, most urgent first: one JSON-RPC batch
simulates a chunk, one database transaction records its decisions, ``TxManager.submit_many``
stores, signs and broadcasts it in one batch (a crash's thousands of actions cost a few round
trips each block).

Never twice (why two locks): the action's idempotency key (``flag:<account>:<nonce>``...) is a
unique column of ``decision`` (the database refuses a second row, whichever process inserts it)
and ``TxManager`` refuses a second transaction for one decision id. A key contains the
account's state nonce. A simulation revert is recorded with its decoded reason and backs the
account off exponentially (in blocks; the end block is recorded, so a restart keeps it).

A key is given back (the decision keeps its row, its outcome says why) in two cases, both
found by the keeper-level fault tests (tests/test_faults_keeper.py):
- its transaction reverted on-chain (``release_reverted``, with a back-off): the account may
  still need the same action at the same nonce (the price moved back between simulation and
  block, or the block the action was decided on was reorged away); a kept key would block it
  until the owner touches the account. Simulation before every send and the back-off keep this
  from becoming a retry storm; the contract's nonce check makes a second success impossible;
- it never got a transaction (``_abandoned``): the process died, or the store refused the
  row, between recording the decision and submitting it. A live submitter takes milliseconds
  between the two; a decision at least ``ABANDONED_AFTER_BLOCKS`` old without a transaction
  has none coming.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict, Unpack

from eth_typing import HexStr
from web3 import Web3
from web3.exceptions import TransactionNotFound

from keeper.chain.revert import decode_revert
from keeper.chain.view import Chain, ProtocolSnapshot
from keeper.deployment import clearing_house_abi
from keeper.fault_points import crash_point
from keeper.pipeline.assess import assess_account, gas_cost_in_asset0
from keeper.pipeline.types import (
    MAINTENANCE,
    Action,
    ActionKind,
    Assessment,
    BlockReport,
    Candidate,
    DecisionPolicy,
    Simulated,
    SkipReason,
)
from keeper.protocol.funding import realisation_headroom
from keeper.protocol.settlement import settling_allowance
from keeper.secrets import scrub
from keeper.simulation import Simulator
from keeper.store import Decision, DecisionOutcome, Store, Transaction, TxStatus
from keeper.transactions import SendError, Submission, TxManager

log = logging.getLogger(__name__)

#: A decision this many blocks old without a transaction lost its submitter (``_abandoned``).
ABANDONED_AFTER_BLOCKS = 2
#: Actions simulated per JSON-RPC batch (keeper.simulation) before they
#: are sent: large enough that a crash's hundreds of actions cost a few round trips, small
#: enough that the most valuable ones are sent within a block.
SIMULATION_CHUNK = 32


class _RowFields(TypedDict, total=False):
    """A decision row's optional fields (``Executor._decision_row``)."""

    backoff_until: int | None
    gas_cost: int | None
    key: str | None  # the action's idempotency key: the row takes it, or is refused
    target: str | None  # the account column, when not the assessment's account


def _market_state(action: Action | None) -> str:
    """The state column of a decision about an instrument: "funding" for a funding poke,
    "expired" for a settlement."""
    if action is not None and action.kind == ActionKind.POKE_FUNDING:
        return "funding"
    return "expired"


def _target(action: Action) -> str:
    """The ``decision.account`` value an action is recorded (and backed off) under."""
    if action.account is not None:
        return str(action.account)
    return f"instrument:{action.instrument}"


class Executor:
    """The execute stage's state across blocks: what was last recorded per account (restored
    from the store), the back-offs, and the block's no-action rows waiting for ``flush``."""

    def __init__(
        self,
        chain: Chain,
        store: Store,
        txm: TxManager | None,
        policy: DecisionPolicy,
        *,
        liquidator: str,
    ) -> None:
        self.chain = chain
        self.store = store
        self.txm = txm  # None: dry run (decide, simulate and record; never send)
        self.policy = policy
        self.liquidator = Web3.to_checksum_address(liquidator)
        self._ch = chain.w3.eth.contract(address=chain.clearing_house, abi=clearing_house_abi())
        self._batch: list[Decision] = []  # no-action rows of the block in progress
        # What was last recorded per account, and back-offs: restored from the store.
        self._last: dict[str, tuple[str, str, str | None]] = {
            a: (d.change_digest or d.inputs_digest, d.state, d.outcome)
            for a, d in store.latest_decisions().items()
        }
        self._backoff_until: dict[str, int] = store.backoffs(0)
        self._backoff_level: dict[str, int] = {}
        #: JSON-RPC round trips outside the view's reads (simulations, receipts), counted by
        #: the caller's block report.
        self.extra_trips = 0
        #: While a block's actions pass their gates: the action keys already recorded and the
        #: targets with a transaction in flight, read once for the block (None: ask the store
        #: per action). A block decides at most one action per target, so they stay true.
        self._known_keys: set[str] | None = None
        self._busy_targets: set[str] | None = None
        self.simulator = Simulator(chain.rpc, gas_margin_percent=policy.gas_margin_percent)

    def run(self, snap: ProtocolSnapshot, urgent: list[Assessment], report: BlockReport) -> None:
        """A block's assessments, most urgent first: each recorded when it changed, each action
        gated. Actions that pass their gates are simulated SIMULATION_CHUNK at a time, each
        chunk in one JSON-RPC batch and sent before the next is simulated: the first sends
        leave early in a crash. Two queries answer the gates of every action at once: which
        keys have a row, which targets a transaction without a receipt; a row is read only for
        a hit. The no-action rows wait for ``flush``."""
        keys = [one.action.key for one in urgent if one.action is not None]
        self._known_keys = self.store.taken_keys(keys)
        self._busy_targets = self.store.in_flight_targets()
        try:
            due: list[Candidate] = []
            for one in urgent:
                if (candidate := self.handle(snap, one, report)) is not None:
                    due.append(candidate)
                if len(due) == SIMULATION_CHUNK:
                    self.execute(snap, due, report)
                    due = []
            self.execute(snap, due, report)
        finally:
            self._known_keys = self._busy_targets = None

    def handle(
        self, snap: ProtocolSnapshot, a: Assessment, report: BlockReport
    ) -> Candidate | None:
        """Record what an assessment says; its action when it passes the gates."""
        acct = str(a.account)
        changed = self._last.get(acct, (None, None, None))[:2] != (a.change_digest, a.state)
        if changed and a.bounded:
            # A record is due (e.g. the store was restored from elsewhere): records carry the
            # exact result, so the account is assessed again by the exact engine.
            a = assess_account(snap, a.account, self.policy)
            changed = self._last.get(acct, (None, None, None))[:2] != (a.change_digest, a.state)
        if a.state == "no_price":
            # The same checks as OracleLib: the contract would revert with this error too.
            name = a.oracle_error or "unknown"
            report.oracle_rejections[name] = report.oracle_rejections.get(name, 0) + 1
            if changed:
                log.warning(
                    "oracle answer rejected: not acting on the account",
                    extra={"account": acct, "error": a.note},
                )
        if a.action is None:
            if changed:
                outcome = DecisionOutcome.NO_ACTION if a.note is not None else None
                self._record(snap, a, None, report, outcome, a.note, batch=True)
            return None
        return self.candidate(snap, a.action, a, report, changed)

    def candidate(
        self,
        snap: ProtocolSnapshot,
        action: Action,
        a: Assessment | None,
        report: BlockReport,
        changed: bool,
    ) -> Candidate | None:
        target = _target(action)
        if not self._gates_pass(snap, action, a, report, target, changed):
            return None
        fn, args = action.call()
        return Candidate(action, a, target, changed, self._ch.encode_abi(fn, args=list(args)))

    def act(
        self,
        snap: ProtocolSnapshot,
        action: Action,
        a: Assessment | None,
        report: BlockReport,
        *,
        changed: bool = True,
    ) -> None:
        """Execute one action: gates, simulation, profitability, then send (or record the dry
        run). Each stage records why it stopped, once per change."""
        candidate = self.candidate(snap, action, a, report, changed)
        if candidate is not None:
            self.execute(snap, [candidate], report)

    def execute(self, snap: ProtocolSnapshot, due: list[Candidate], report: BlockReport) -> None:
        """Simulate every action at once, then the profitability rule, then send them all."""
        if not due:
            return
        ready: list[tuple[Candidate, Simulated]] = []
        for c, sim in zip(due, self._simulations(snap, due, report), strict=True):
            if sim is None:
                continue
            if not self._profitable(snap, c.action, c.a, report, c.target, sim, c.changed):
                continue
            _check_bounty(c.action, sim.returned)
            ready.append((c, sim))
        self._send(snap, ready, report)

    def _gates_pass(
        self,
        snap: ProtocolSnapshot,
        action: Action,
        a: Assessment | None,
        report: BlockReport,
        target: str,
        changed: bool,
    ) -> bool:
        """Back-off, idempotency and in-flight gates (store reads only, no simulation)."""
        block = snap.block.number
        if self._backoff_until.get(target, -1) > block:
            report.skip(SkipReason.BACKOFF)
            if changed and a is not None:
                self._record(snap, a, action, report, DecisionOutcome.BACKOFF)
            return False
        known = self._known_keys
        skip_lookup = known is not None and action.key not in known
        taken = None if skip_lookup else self.store.decision_by_key(action.key)
        if (
            taken is not None
            and not self._abandoned(taken, block)
            and not self._flag_cleared_since(taken, snap, action)
        ):
            report.skip(SkipReason.DUPLICATE)
            if changed and a is not None:
                why = f"{action.key} already sent"
                self._record(snap, a, None, report, DecisionOutcome.DUPLICATE, why)
            return False
        busy = self._busy_targets
        pending = None if busy is not None and target not in busy else self.store.in_flight(target)
        if pending is not None and not self._landed(pending, block):
            # One transaction per target without a receipt: a second one is decided on a state
            # the first is about to change (another round's settlement of the same instrument,
            # a liquidation at the nonce a pending flag moves) and reverts (found by the soak).
            report.skip(SkipReason.IN_FLIGHT)
            if changed and a is not None:
                why = f"transaction {pending.id} has no receipt yet"
                self._record(snap, a, None, report, DecisionOutcome.IN_FLIGHT, why)
            return False
        return True

    def _simulations(
        self, snap: ProtocolSnapshot, due: list[Candidate], report: BlockReport
    ) -> list[Simulated | None]:
        """Every action simulated against latest (keeper.simulation: eth_simulateV1 where the
        node has it, else eth_call and eth_estimateGas), with the latest block's base fee; each
        action's gas cost. None for an action whose simulation reverted (recorded, backed
        off). A transport fault (retries spent) raises: it is no verdict on any call, so
        nothing backs off; the block job fails and the next run simulates again (found by the
        soak run)."""
        sim = self.simulator.run([self._tx(c.data) for c in due])
        self.extra_trips += sim.round_trips
        max_fee = (
            self.txm.fees.initial(sim.base_fee).max_fee_per_gas
            if self.txm
            else 2 * sim.base_fee + 1
        )
        out: list[Simulated | None] = []
        for c, v in zip(due, sim.verdicts, strict=True):
            if v.error is not None:
                reason = _reply_reason(v.error)
                until = self._back_off(c.target, snap.block.number)
                report.skip(SkipReason.SIMULATION_REVERTED)
                log.warning(
                    "simulation reverted",
                    extra={"key": c.action.key, "reason": reason, "backoff_until": until},
                )
                self._record(
                    snap, c.a, c.action, report,
                    DecisionOutcome.SIMULATION_REVERTED, reason, backoff_until=until,
                    target=c.target,
                )  # fmt: skip
                out.append(None)
                continue
            cost = gas_cost_in_asset0(snap, v.gas_used * max_fee, self.policy)
            # Room for what a settlement or poke of the same block can add (not simulated).
            extra = realisation_headroom(snap, c.action) + settling_allowance(snap, c.action)
            limit = v.gas_limit + extra
            out.append(Simulated(c.data, v.returned, limit, cost, sim.base_fee))
        return out

    def _profitable(
        self,
        snap: ProtocolSnapshot,
        action: Action,
        a: Assessment | None,
        report: BlockReport,
        target: str,
        sim: Simulated,
        changed: bool,
    ) -> bool:
        """The profitability rule (maintenance actions are exempt)."""
        if action.kind in MAINTENANCE or action.maintenance:
            return True
        cost = sim.gas_cost
        profit = None if cost is None else action.expected_bounty - cost
        if profit is not None and profit >= self.policy.min_profit:
            return True
        report.skip(SkipReason.UNPROFITABLE)
        last = self._last.get(target, (None, None, None))[2]
        if changed or last != DecisionOutcome.UNPROFITABLE:
            why = "no gas price" if cost is None else f"profit {profit}"
            self._record(
                snap, a, action, report, DecisionOutcome.UNPROFITABLE,
                f"{why} < min_profit {self.policy.min_profit}", gas_cost=cost, target=target,
            )  # fmt: skip
        return False

    def _send(
        self, snap: ProtocolSnapshot, ready: list[tuple[Candidate, Simulated]], report: BlockReport
    ) -> None:
        """Record the decisions with their keys (one database transaction), then submit them
        (one broadcast batch, in order); a dry run records only."""
        if self.txm is None:  # read-only: one record per change, not one per block
            for c, sim in ready:
                last = self._last.get(c.target, (None, None, None))[2]
                if c.changed or last != DecisionOutcome.DRY_RUN:
                    self._record(
                        snap, c.a, c.action, report, DecisionOutcome.DRY_RUN,
                        gas_cost=sim.gas_cost, target=c.target,
                    )  # fmt: skip
            return
        rows = [
            self._decision_row(
                snap,
                c.a,
                c.action,
                DecisionOutcome.SENT,
                gas_cost=sim.gas_cost,
                key=c.action.key,
                target=c.target,
            )
            for c, sim in ready
        ]
        taken: list[tuple[Candidate, Decision]] = []
        subs: list[Submission] = []
        for (c, sim), row in zip(ready, self.store.add_action_decisions(rows), strict=True):
            if row is None:  # another process (or an earlier run) took the key just now
                report.skip(SkipReason.DUPLICATE)
                continue
            assert row.id is not None
            self._noted(row, report)
            taken.append((c, row))
            subs.append(Submission(self.chain.clearing_house, sim.data, sim.gas_limit, row.id))
        if not subs:
            return
        crash_point("after_decision")
        results = self.txm.submit_many(subs, base_fee=ready[0][1].base_fee)
        for (c, row), result in zip(taken, results, strict=True):
            assert row.id is not None
            if isinstance(result, Exception):  # SendError / RedactedError / ...: all named
                self._send_failed(snap, c, row.id, result, report)
                continue
            report.actions_sent.append(c.action.key)
            report.kinds_sent.append(c.action.kind)
            log.info("action sent", extra={"key": c.action.key, "decision_id": row.id})

    def _send_failed(
        self,
        snap: ProtocolSnapshot,
        c: Candidate,
        decision_id: int,
        exc: Exception,
        report: BlockReport,
    ) -> None:
        until = self._back_off(c.target, snap.block.number)
        fields: dict[str, Any] = {
            "outcome": DecisionOutcome.SEND_FAILED,
            "outcome_detail": f"{type(exc).__name__}: {exc}",
            "backoff_until": until,
        }
        if isinstance(exc, SendError):
            # Refused by the node: never on chain, so the key is released for a retry after
            # the back-off. (A transport failure may have reached the node: the key stays
            # taken and TxManager.poll follows the transaction.)
            fields["action_key"] = None
        self.store.update_decision(decision_id, **fields)
        report.skip(SkipReason.SEND_FAILED)
        log.warning("send failed", extra={"key": c.action.key, "error": scrub(str(exc))})

    def _landed(self, tx: Transaction, block: int) -> bool:
        """Whether one of ``tx``'s hashes mined at or below ``block`` (the snapshot's): its
        receipt is not recorded yet (the service follows transactions after deciding), but
        the state decided on already holds its effect."""
        assert tx.id is not None
        for attempt in self.store.attempts(tx.id):
            self.extra_trips += 1
            try:
                receipt = self.chain.w3.eth.get_transaction_receipt(HexStr(attempt.hash))
            except TransactionNotFound:
                continue
            return int(receipt["blockNumber"]) <= block
        return False

    def _tx(self, data: str) -> dict[str, str]:
        return {"from": self.liquidator, "to": self.chain.clearing_house, "data": data}

    def _abandoned(self, decision: Decision, block: int) -> bool:
        """True (and the key released) when ``decision`` took its action key but no transaction
        was ever stored for it, and it is old enough that none is still coming."""
        if self.txm is None or decision.id is None:
            return False
        if block - decision.block_number < ABANDONED_AFTER_BLOCKS:
            return False
        if self.store.transaction_for_decision(decision.id) is not None:
            return False
        log.warning(
            "decision without a transaction: key released",
            extra={"key": decision.action_key, "decision_id": decision.id},
        )
        self.store.update_decision(
            decision.id,
            action_key=None,
            outcome=DecisionOutcome.ABANDONED,
            outcome_detail=f"no transaction was stored (was: {decision.outcome})",
        )
        return True

    def _flag_cleared_since(
        self, decision: Decision, snap: ProtocolSnapshot, action: Action
    ) -> bool:
        """True (and the key released) when ``decision`` is our flag at this nonce, its
        transaction landed at or before the snapshot's block, and the account is not flagged
        at that block: the flag was cleared since (``clearFlag`` keeps the nonce), so the
        account may be flagged again at the same nonce."""
        if action.kind != "flag" or decision.id is None or action.account is None:
            return False
        if snap.accounts[action.account].flagged_at != 0:
            return False
        tx = self.store.transaction_for_decision(decision.id)
        if tx is None or tx.status not in (TxStatus.MINED, TxStatus.FINAL):
            return False
        if not self._landed(tx, snap.block.number):
            return False
        log.info("flag cleared since it was set: key released", extra={"key": action.key})
        self.store.update_decision(
            decision.id,
            action_key=None,
            outcome=DecisionOutcome.FLAG_CLEARED,
            outcome_detail=f"was: {decision.outcome}",
        )
        return True

    def release_reverted(self, decision_id: int, reason: str | None, block: int) -> bool:
        """A transaction of ours reverted on-chain: its decision gives the action key back and
        the target backs off, so the action can be decided again (see the module docstring).
        Idempotent; False when there was nothing to release."""
        decision = self.store.decision(decision_id)
        if decision is None or decision.action_key is None:
            return False
        until = self._back_off(decision.account, block)
        self.store.update_decision(
            decision_id,
            action_key=None,
            outcome=DecisionOutcome.REVERTED,
            outcome_detail=reason or "no reason",
            backoff_until=until,
        )
        log.warning(
            "transaction reverted on-chain: action key released",
            extra={"key": decision.action_key, "reason": reason, "backoff_until": until},
        )
        return True

    def _back_off(self, target: str, block: int) -> int:
        level = self._backoff_level.get(target, 0)
        span = min(self.policy.backoff_blocks << level, self.policy.max_backoff_blocks)
        self._backoff_level[target] = level + 1
        until = block + span
        self._backoff_until[target] = until
        return until

    # --- recording ---------------------------------------------------------------------------

    def _record(
        self,
        snap: ProtocolSnapshot,
        a: Assessment | None,
        action: Action | None,
        report: BlockReport,
        outcome: DecisionOutcome | None = None,
        detail: str | None = None,
        *,
        batch: bool = False,
        **fields: Unpack[_RowFields],
    ) -> Decision | None:
        """Record one decision. ``batch``: a no-action row, written with the block's other
        such rows in one transaction (``_flush``) instead of one transaction each."""
        row = self._decision_row(snap, a, action, outcome, detail, **fields)
        key = fields.get("key")
        if batch and not key:
            self._batch.append(row)
            saved: Decision | None = row
        else:
            saved = self.store.add_action_decision(row) if key else self.store.add_decision(row)
        if saved is None:
            return None
        self._noted(row, report)
        return saved

    def _noted(self, row: Decision, report: BlockReport) -> None:
        """A decision was recorded: counted, and remembered as the account's last."""
        report.decisions_recorded += 1
        self._last[row.account] = (row.change_digest or "", row.state, row.outcome)

    def _decision_row(
        self,
        snap: ProtocolSnapshot,
        a: Assessment | None,
        action: Action | None,
        outcome: DecisionOutcome | None = None,
        detail: str | None = None,
        **fields: Unpack[_RowFields],
    ) -> Decision:
        res = a.result if a is not None else None
        target = fields.get("target")
        return Decision(
            block_number=snap.block.number,
            block_hash=snap.block.hash,
            account=target or (str(a.account) if a is not None else ""),
            inputs_digest=a.inputs_digest if a is not None else "",
            change_digest=a.change_digest if a is not None else None,
            loss_matrix=res.scenario_losses if res is not None else [],
            requirement=res.requirement if res is not None else 0,
            initial_margin=res.initial_margin if res is not None else 0,
            equity=res.equity if res is not None else 0,
            witness=list(res.witness) if res is not None else None,
            state=a.state if a is not None else _market_state(action),
            action=action.kind if action is not None else "none",
            fraction=action.fraction if action is not None else None,
            expected_bounty=action.expected_bounty if action is not None else None,
            outcome=outcome,
            outcome_detail=detail,
            action_key=fields.get("key"),
            account_nonce=a.nonce if a is not None else None,
            instrument=action.instrument if action is not None else None,
            lenient=a.lenient if a is not None else None,
            backoff_until=fields.get("backoff_until"),
            expected_gas_cost=fields.get("gas_cost"),
        )

    def flush(self) -> None:
        rows, self._batch = self._batch, []
        self.store.add_decisions(rows)


def _reply_reason(error: dict[str, Any]) -> str:
    """Why a simulation's JSON-RPC reply failed: the decoded revert data, else the message."""
    data = error.get("data")
    if isinstance(data, dict):  # some nodes nest it: {"data": {"data": "0x..."}}
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return scrub(str(decode_revert(data)))
    return scrub(f"reverted: {error.get('message', error)}")


def _check_bounty(action: Action, returned: bytes) -> None:
    """Log when the simulated bounty differs from the model's."""
    simulated = _returned_bounty(action, returned)
    if simulated is None or simulated == action.expected_bounty:
        return
    # The simulation runs on `latest` (later timestamp, maybe newer rounds), the model at the
    # snapshot's block: a drift of a few parts per billion is time, not a fault.
    gap = abs(simulated - action.expected_bounty)
    beyond_ppm = gap * 10**6 > abs(action.expected_bounty)
    log.log(
        logging.WARNING if beyond_ppm else logging.INFO,
        "simulated bounty differs from the model's",
        extra={"key": action.key, "simulated": simulated, "expected": action.expected_bounty},
    )


def _returned_bounty(action: Action, returned: bytes) -> int | None:
    """``liquidate`` returns the whole bounty credited: a check of the model's expectation."""
    if action.kind != "liquidate" or len(returned) != 32:
        return None
    return int.from_bytes(returned, "big", signed=True)
