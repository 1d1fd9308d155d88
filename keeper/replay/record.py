"""Is the keeper's record complete and true? Its transactions against the chain.

Three directions, each a typed mismatch naming the row and the field:

* **chain -> record** (``unrecorded_transaction``): every transaction mined in the range from a
  keeper address to the clearing house must be a ``tx`` row (its mined hash), and that row must
  name its ``decision`` (``claimBounty`` and the recalibration job's ``queueRecalibration`` /
  ``executeRecalibration`` are sent without one; the recalibrations are checked by
  keeper/replay/recalibration.py).
* **record -> chain** (``transaction``): every ``tx`` row that says it mined (``mined``,
  ``final``, ``reverted``) is compared with the transaction and its receipt: sender, nonce, to,
  value, calldata, gas limit, chain id, block number and hash, gas used, effective gas price,
  success or revert, and the bounty credited to the sender (``BountyCredited`` in the receipt).
  A row that says it never reached the chain (``failed``, ``dropped``) must have no hash in it.
  The calldata must be the decision's action with the decision's arguments (account, nonce,
  witness, fraction, instrument), mined at or after the decision's block.
* **decision -> record** (``missing_transaction``): a decision whose outcome says it was sent
  (``sent``, ``reverted``) must have its ``tx`` row.

The chain is scanned block by block (full transactions, in JSON-RPC batches of
``BLOCK_PAGE``), so memory holds one page plus the keeper's own transactions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode
from sqlalchemy import or_
from sqlmodel import col, select

from keeper.abi import CLEARING_HOUSE_ABIS
from keeper.chain import Chain, OracleError, ProtocolSnapshot
from keeper.chain.multicall import AbiFn, abi_functions
from keeper.protocol.bounty import liquidation_payout
from keeper.replay.compare import parse_account
from keeper.replay.events import clearing_house_events
from keeper.replay.mismatch import FieldDiff, Mismatch, normalise
from keeper.store import Decision, DecisionOutcome, Store, Transaction, TxAttempt, TxStatus
from margin.errors import MarginError

#: Blocks per JSON-RPC batch of eth_getBlockByNumber(full transactions).
BLOCK_PAGE = 100
#: Receipts per JSON-RPC batch.
RECEIPT_PAGE = 200

#: The clearing-house function each decision action sends (keeper.pipeline.types.Action.call).
ACTION_FUNCTIONS = {
    "flag": "flag",
    "liquidate": "liquidate",
    "settle_account": "settleAccount",
    "resolve_bad_debt": "resolveBadDebt",
    "clear_flag": "clearFlag",
    "settle_instrument": "settleInstrument",
    "poke_funding": "pokeFunding",
}
#: Sent without a decision (the keeper's own bounty claims).
UNDECIDED_FUNCTIONS = frozenset({"claimBounty", "queueRecalibration", "executeRecalibration"})
#: Row statuses that claim the transaction is in the chain / never reached it.
ON_CHAIN = frozenset({TxStatus.MINED, TxStatus.FINAL, TxStatus.REVERTED})
OFF_CHAIN = frozenset({TxStatus.FAILED, TxStatus.DROPPED})
#: Decision outcomes that say a transaction was sent for it.
SENT_OUTCOMES = (DecisionOutcome.SENT, DecisionOutcome.REVERTED)


@dataclass
class RecordCheck:
    """What the record check saw (counts for the verdict line and the reports)."""

    keepers: list[str] = field(default_factory=list)
    keeper_transactions: int = 0  # on chain, keeper -> clearing house, in the range
    rows_checked: int = 0  # tx rows compared with the chain
    rows_pending: int = 0  # tx rows still open: nothing to compare yet
    sent_decisions: int = 0  # decisions whose outcome says a transaction was sent
    mismatches: list[Mismatch] = field(default_factory=list)


def _selectors() -> dict[bytes, AbiFn]:
    return {f.selector: f for f in abi_functions(*CLEARING_HOUSE_ABIS).values()}


def decode_call(data: str) -> tuple[str, tuple[Any, ...]] | None:
    """(function name, arguments) of clearing-house calldata; None when it is none of its
    functions."""
    raw = bytes.fromhex(data.removeprefix("0x"))
    fn = _selectors().get(raw[:4])
    if fn is None:
        return None
    try:
        return fn.name, tuple(decode(list(fn.inputs), raw[4:]))
    except Exception:  # eth_abi's decoding errors: calldata that is not the function's
        return None


def _int(x: Any) -> int:
    return int(x, 16) if isinstance(x, str) else int(x)


def _hex(x: Any) -> str:
    if isinstance(x, bytes | bytearray):
        return "0x" + bytes(x).hex()
    s = str(x).lower()
    return s if s.startswith("0x") else "0x" + s


def _addr(x: Any) -> str:
    return str(x).lower() if x else ""


def expected_args(rec: Decision) -> dict[str, Any]:
    """The calldata arguments the decision's action must carry, by the function's ABI names."""
    out: dict[str, Any] = {}
    account = parse_account(rec.account)
    if rec.action in ("settle_instrument", "poke_funding"):
        out["instrument"] = rec.instrument
        return out
    out["account"] = account
    if rec.action in ("flag", "liquidate"):
        out["nonce"] = rec.account_nonce
        out["witness"] = list(rec.witness) if rec.witness is not None else None
    if rec.action == "liquidate":
        out["fraction"] = rec.fraction
    return out


_ARG_NAMES = {
    "flag": ("account", "nonce", "witness"),
    "liquidate": ("account", "nonce", "witness", "fraction"),
    "settleAccount": ("account",),
    "resolveBadDebt": ("account",),
    "clearFlag": ("account",),
    "settleInstrument": ("instrument", "round_id"),
    "pokeFunding": ("instrument",),
    "claimBounty": (),
}


def _rows(
    store: Store, first: int, last: int
) -> tuple[list[Transaction], dict[int, Decision], list[Decision], dict[int, list[str]], set[str]]:
    """tx rows of the range (mined in it, or for a decision of it), their decisions, the sent
    decisions of the range, every row's attempt hashes, and every sender the store knows."""
    with store.session() as s:
        in_range = (
            select(col(Decision.id))
            .where(col(Decision.block_number) >= first, col(Decision.block_number) <= last)
            .scalar_subquery()
        )
        q = (
            select(Transaction)
            .where(
                or_(
                    (col(Transaction.block_number) >= first)
                    & (col(Transaction.block_number) <= last),
                    col(Transaction.decision_id).in_(in_range),
                )
            )
            .order_by(col(Transaction.id))
        )
        txs = list(s.exec(q).all())
        ids = {t.decision_id for t in txs if t.decision_id is not None}
        decisions = {
            d.id: d for d in s.exec(select(Decision).where(col(Decision.id).in_(ids))).all()
        }
        sent_q = (
            select(Decision)
            .where(
                col(Decision.block_number) >= first,
                col(Decision.block_number) <= last,
                col(Decision.action) != "none",
                col(Decision.outcome).in_(SENT_OUTCOMES),
            )
            .order_by(col(Decision.id))
        )
        sent = list(s.exec(sent_q).all())
        tx_ids = [t.id for t in txs]
        attempts: dict[int, list[str]] = {}
        for a in s.exec(select(TxAttempt).where(col(TxAttempt.tx_id).in_(tx_ids))).all():
            attempts.setdefault(a.tx_id, []).append(a.hash.lower())
        senders = {str(x).lower() for x in s.exec(select(col(Transaction.sender)).distinct()).all()}
    return txs, {k: v for k, v in decisions.items() if k is not None}, sent, attempts, senders


def scan_keeper_transactions(
    chain: Chain,
    first: int,
    last: int,
    keepers: Iterable[str],
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every transaction mined in [first, last] from one of ``keepers``, by hash (lower case),
    with its receipt under ``"receipt"``. Pages of ``BLOCK_PAGE`` blocks: one page in memory."""
    wanted = {k.lower() for k in keepers}
    out: dict[str, dict[str, Any]] = {}
    if not wanted:
        return out
    for start in range(first, last + 1, BLOCK_PAGE):
        end = min(last, start + BLOCK_PAGE - 1)
        calls = [("eth_getBlockByNumber", [hex(b), True]) for b in range(start, end + 1)]
        for reply in chain.rpc.batch(calls):
            block = reply.get("result") or {}
            for tx in block.get("transactions") or []:
                if _addr(tx.get("from")) in wanted:
                    out[_hex(tx["hash"])] = dict(tx)
        if progress is not None:
            progress(end - start + 1)
    _attach_receipts(chain, list(out.values()))
    return out


def _attach_receipts(chain: Chain, txs: Sequence[dict[str, Any]]) -> None:
    for i in range(0, len(txs), RECEIPT_PAGE):
        page = txs[i : i + RECEIPT_PAGE]
        replies = chain.rpc.batch([("eth_getTransactionReceipt", [t["hash"]]) for t in page])
        for t, reply in zip(page, replies, strict=True):
            t["receipt"] = reply.get("result")


def _by_hash(chain: Chain, tx_hash: str) -> dict[str, Any] | None:
    """A transaction outside the scanned range (its row says it mined elsewhere)."""
    (reply,) = chain.rpc.batch([("eth_getTransactionByHash", [tx_hash])])
    tx = reply.get("result")
    if not tx or tx.get("blockNumber") is None:
        return None
    tx = dict(tx)
    _attach_receipts(chain, [tx])
    return tx


def _credited(receipt: dict[str, Any], sender: str, clearing_house: str) -> int:
    """Σ BountyCredited(sender, amount) of the clearing house in the receipt."""
    logs = [lg for lg in receipt.get("logs") or [] if _addr(lg.get("address")) == clearing_house]
    return sum(
        int(e.args["amount"])
        for e in clearing_house_events(logs)
        if e.name == "BountyCredited" and _addr(e.args.get("liquidator")) == sender
    )


def check_record(
    chain: Chain,
    store: Store,
    first: int,
    last: int,
    keepers: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> RecordCheck:
    """The keeper's transaction record in [first, last] against the chain (module docstring)."""
    txs, decisions, sent, attempts, senders = _rows(store, first, last)
    out = RecordCheck(keepers=sorted({k.lower() for k in keepers} | senders))
    ch = chain.clearing_house.lower()
    onchain = scan_keeper_transactions(chain, first, last, out.keepers, progress)
    mm = out.mismatches

    by_mined: dict[str, Transaction] = {}
    by_attempt: dict[str, Transaction] = {}
    for t in txs:
        assert t.id is not None
        if t.mined_hash:
            h = t.mined_hash.lower()
            if h in by_mined:
                other = by_mined[h].id
                mm.append(_tx_mm(t, None, f"mined hash {h} is also recorded by tx {other}"))
            by_mined[h] = t
        for h in attempts.get(t.id, []):
            by_attempt[h] = t

    # chain -> record
    for h, tx in onchain.items():
        if _addr(tx.get("to")) != ch:
            continue  # a gap filler (to itself) or a transfer: not the protocol
        out.keeper_transactions += 1
        if h in by_mined:
            continue
        block = _int(tx["blockNumber"])
        call = decode_call(tx.get("input") or "0x")
        what = call[0] if call else "unknown function"
        account = _call_account(call)
        row = by_attempt.get(h)
        if row is not None:
            mm.append(
                _tx_mm(
                    row,
                    block,
                    "its attempt mined but the row does not say so",
                    [FieldDiff("mined_hash", h, row.mined_hash)],
                )
            )
            continue
        mm.append(
            Mismatch(
                "unrecorded_transaction",
                block,
                account,
                f"{what} transaction {h} (nonce {_int(tx['nonce'])}) from "
                f"{_addr(tx.get('from'))} has no tx row",
                [FieldDiff("tx", h, None)],
            )
        )

    # record -> chain
    for t in txs:
        assert t.id is not None
        dec = decisions.get(t.decision_id) if t.decision_id is not None else None
        call = decode_call(t.data or "0x")
        if t.decision_id is not None and dec is None:
            mm.append(
                _tx_mm(
                    t,
                    t.block_number,
                    f"its decision {t.decision_id} is not recorded",
                    [FieldDiff("decision_id", None, t.decision_id)],
                )
            )
        elif (
            dec is None
            and _addr(t.to) == ch
            and (call is None or call[0] not in UNDECIDED_FUNCTIONS)
        ):
            mm.append(
                _tx_mm(
                    t,
                    t.block_number,
                    "a transaction to the clearing house without its decision",
                    [FieldDiff("decision_id", "a decision", None)],
                )
            )
        if dec is not None:
            mm += _against_decision(t, dec, call)
        status = str(t.status)
        if status in OFF_CHAIN:
            hashes = [h for h in [*(attempts.get(t.id) or []), (t.mined_hash or "").lower()] if h]
            mined = [h for h in hashes if h in onchain]
            if mined:
                mm.append(
                    _tx_mm(
                        t,
                        _int(onchain[mined[0]]["blockNumber"]),
                        f"recorded {status} but {mined[0]} is on chain",
                        [FieldDiff("status", "mined", status)],
                    )
                )
            continue
        if status not in ON_CHAIN:
            out.rows_pending += 1
            continue
        out.rows_checked += 1
        h = (t.mined_hash or "").lower()
        chain_tx = onchain.get(h) if h else None
        if chain_tx is None and h:
            chain_tx = _by_hash(chain, h)
        if chain_tx is None:
            mm.append(
                _tx_mm(
                    t,
                    t.block_number,
                    f"recorded {status} but its hash is not on chain",
                    [FieldDiff("mined_hash", None, t.mined_hash)],
                )
            )
            continue
        mm += _against_chain(t, chain_tx, ch)

    # decision -> record
    with_tx = {t.decision_id for t in txs if t.decision_id is not None}
    for d in sent:
        out.sent_decisions += 1
        if d.id not in with_tx:
            mm.append(
                Mismatch(
                    "missing_transaction",
                    d.block_number,
                    parse_account(d.account),
                    f"{d.action} recorded as {d.outcome!r} but no tx row is recorded for it",
                    [FieldDiff("tx", "a tx row", None)],
                    d.id,
                )
            )
    return out


def _call_account(call: tuple[str, tuple[Any, ...]] | None) -> int | None:
    if call is None or call[0] in ("settleInstrument", *UNDECIDED_FUNCTIONS) or not call[1]:
        return None
    return int(call[1][0])


def _tx_mm(
    t: Transaction,
    block: int | None,
    message: str,
    fields: list[FieldDiff] | None = None,
    account: int | None = None,
) -> Mismatch:
    return Mismatch(
        "transaction",
        block if block is not None else (t.block_number or 0),
        account,
        message,
        fields or [],
        t.decision_id,
        t.id,
    )


def _against_decision(
    t: Transaction, dec: Decision, call: tuple[str, tuple[Any, ...]] | None
) -> list[Mismatch]:
    """The calldata is the decision's action with the decision's arguments, mined no earlier
    than the decision's block."""
    account = parse_account(dec.account)
    want = ACTION_FUNCTIONS.get(dec.action)
    if call is None or want is None or call[0] != want:
        found = call[0] if call else "undecodable calldata"
        diff = FieldDiff("action", want or dec.action, found)
        return [
            _tx_mm(t, dec.block_number, "calldata is not the decision's action", [diff], account)
        ]
    names = _ARG_NAMES[call[0]]
    args = dict(zip(names, call[1], strict=True))
    diffs = [
        FieldDiff(name, normalise(value), normalise(_plain(args.get(name))))
        for name, value in expected_args(dec).items()
        if normalise(value) != normalise(_plain(args.get(name)))
    ]
    out = []
    if diffs:
        names_s = ", ".join(f.field for f in diffs)
        msg = f"calldata {names_s} differ from decision {dec.id}"
        out.append(_tx_mm(t, dec.block_number, msg, diffs, account))
    if t.block_number is not None and t.block_number < dec.block_number:
        diff = FieldDiff("block_number", f">= {dec.block_number}", t.block_number)
        msg = f"mined before its decision's block {dec.block_number}"
        out.append(_tx_mm(t, t.block_number, msg, [diff], account))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return [int(x) for x in v]
    return int(v) if isinstance(v, int) else v


def _against_chain(t: Transaction, tx: dict[str, Any], clearing_house: str) -> list[Mismatch]:
    receipt = tx.get("receipt") or {}
    succeeded = _int(receipt.get("status", "0x0")) == 1
    status = str(t.status)
    expected: dict[str, Any] = {
        "sender": _addr(tx.get("from")),
        "nonce": _int(tx["nonce"]),
        "to": _addr(tx.get("to")),
        "value": _int(tx.get("value", "0x0")),
        "data": _hex(tx.get("input") or "0x"),
        "gas_limit": _int(tx["gas"]),
        "chain_id": _int(tx["chainId"]) if tx.get("chainId") is not None else t.chain_id,
        "block_number": _int(tx["blockNumber"]),
        "block_hash": _hex(tx["blockHash"]),
        "gas_used": _int(receipt["gasUsed"]) if receipt else None,
        "effective_gas_price": _int(receipt["effectiveGasPrice"]) if receipt else None,
    }
    found: dict[str, Any] = {
        "sender": _addr(t.sender),
        "nonce": t.nonce,
        "to": _addr(t.to),
        "value": t.value,
        "data": _hex(t.data or "0x"),
        "gas_limit": t.gas_limit,
        "chain_id": t.chain_id,
        "block_number": t.block_number,
        "block_hash": (t.block_hash or "").lower() or None,
        "gas_used": t.gas_used,
        "effective_gas_price": t.effective_gas_price,
    }
    diffs = [FieldDiff(k, v, found[k]) for k, v in expected.items() if found[k] != v]
    if succeeded != (status != TxStatus.REVERTED):
        diffs.append(FieldDiff("status", "reverted" if not succeeded else "mined or final", status))
    # The bounty is read from the final receipt: a row not yet final may not have it yet.
    if t.bounty is not None or t.final:
        credited = _credited(receipt, expected["sender"], clearing_house) if receipt else 0
        if (t.bounty or 0) != credited:
            diffs.append(FieldDiff("bounty", credited, t.bounty))
    if not diffs:
        return []
    call = decode_call(t.data or "0x")
    msg = f"recorded {', '.join(d.field for d in diffs)} differ from the chain"
    return [_tx_mm(t, expected["block_number"], msg, diffs, _call_account(call))]


def rederived_bounty(snap: ProtocolSnapshot, account: int, rec: Decision) -> int | str | None:
    """The bounty the decision's action would be credited on ``snap`` (its block), as the
    keeper computes ``expected_bounty``: a liquidation's penalty split under the lenient witness
    check of the recorded witness and fraction; 0 for any other action; None for no action."""
    if rec.action == "none":
        return None
    if rec.action != "liquidate":
        return 0
    try:
        lin = snap.inputs(account, lenient=True)
        wres = snap.table(lin.market).witness_check(lin.portfolio, list(rec.witness or ()))
    except (OracleError, MarginError) as exc:
        return f"no witness check: {type(exc).__name__}"
    _, bounty = liquidation_payout(
        wres.requirement, wres.equity, rec.fraction or 0, snap.liquidation_config
    )
    return bounty


__all__ = [
    "RecordCheck",
    "check_record",
    "decode_call",
    "rederived_bounty",
    "scan_keeper_transactions",
]
