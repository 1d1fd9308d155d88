"""``keeper explain --account ID --block N``: the decision certificate of one account at one
block, from chain data alone.

The certificate lists every on-chain input with where it was read (contract, function, block;
the oracle rounds by feed and round id), the engine's full check (the scenario losses per
underlying, the witness, maintenance and initial margin, the state, per position its mark,
isolated requirement and Greeks: ``margin.tools.explain.explain``, the same report as
``keeper margin``, its money figures exact decimal strings in units of 1e18 wei),
and the exact ``eth_call`` that re-checks it on chain: ``MarginVerifier.fullCheck`` with the
same inputs (to, data, block) must return the printed result, and ``ClearingHouse.marginOf``
(the protocol builds its inputs itself) must return it too, or revert with the strict oracle
error when the decision was taken under the liquidation ages. Text (default), JSON or HTML.

Exit status: 0 printed, 2 bad input (a named one-line error: ``UnknownAccount``,
``BlockNotMined``, ``NodeUnavailable``, ``ChainMismatch``, ``DeploymentFileNotFound``, ...).
"""

from __future__ import annotations

import html
import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from eth_abi import encode
from web3 import Web3

from keeper.abi import CLEARING_HOUSE_ABIS
from keeper.chain import BlockNotAvailable, Chain, ChainError, ProtocolSnapshot
from keeper.chain.multicall import AbiFn, abi_functions
from keeper.chain.view import NO_UNDERLYING
from keeper.replay.cli import parse_account_arg
from keeper.replay.derive import Derivation, derive, used_feeds
from keeper.replay.errors import ReplayInputError
from keeper.replay.source import open_source, read_deployment
from keeper.secrets import redact_url, register_url, scrub
from margin.tools.explain import explain as margin_explain
from margin.tools.loader import PortfolioFile

EXIT_OK, EXIT_BAD_INPUT, EXIT_BUG = 0, 2, 70
FORMATS = ("text", "json", "html")
WAD = 10**18
_KINDS = ("future", "call", "put")


class UnknownAccount(ReplayInputError):
    """No such account at that block: never used (nonce 0, no position, no balance)."""

    name = "UnknownAccount"


class BlockNotMined(ReplayInputError):
    name = "BlockNotMined"


class BadFormat(ReplayInputError):
    name = "BadFormat"


def _calldata(fn: AbiFn, args: tuple[Any, ...]) -> str:
    return "0x" + (fn.selector + encode(list(fn.inputs), list(args))).hex()


def _wad(x: int | str) -> str:
    """A wei integer, or an exact decimal string in units (the engine report's figures)."""
    return f"{(Decimal(x) if isinstance(x, str) else Decimal(x) / WAD):,.6f}"


def certificate(chain: Chain, account: int, block: int) -> dict[str, Any]:
    """Everything the certificate shows, as plain data (integers exact, in wei)."""
    head = chain.head().number
    if block > head:
        raise BlockNotMined(f"block {block} is beyond the chain's head {head}")
    if block < 0:
        raise BlockNotMined(f"block {block} is negative")
    try:
        ref = chain.rpc.block(block)
        snap = chain.view(ref).snapshot([account])
    except BlockNotAvailable as exc:
        raise BlockNotMined(f"no state at block {block}: {exc}") from None
    acc = snap.accounts[account]
    if acc.nonce == 0 and not acc.positions and not any(acc.balances):
        raise UnknownAccount(
            f"account {hex(account)} has no nonce, position or balance at block {block}"
        )
    d = derive(snap, account, ["explain"])
    ch = chain.clearing_house
    at = f"@ block {block} ({ref.hash})"
    cert: dict[str, Any] = {
        "chain_id": chain.deployment.chain_id,
        "block": {"number": block, "hash": ref.hash, "timestamp": snap.timestamp},
        "account": str(account),
        "account_hex": hex(account),
        "inputs": _inputs(snap, d, ch, at),
        "oracle_ages": "lenient (liquidationMaxAge)" if d.lenient else "strict (maxAge)",
        "strict_error": str(d.strict_error) if d.strict_error else None,
        "inputs_digest": d.inputs_digest,
    }
    if d.market is None or d.table is None:
        cert["result"] = None
        cert["error"] = d.error
        cert["recheck"] = []
        return cert
    if d.engine_error is not None:  # the engine (and the verifier) reject these inputs
        cert["result"] = None
        cert["error"] = d.error
    else:
        dep = chain.deployment
        pfile = PortfolioFile(
            d.market,
            d.table.params,
            d.portfolio,
            tuple(u.get("symbol", f"U{u['index']}") for u in dep.underlyings),
            tuple(a.get("symbol", f"A{a['index']}") for a in dep.assets),
        )
        cert["result"] = margin_explain(pfile, d.table)
    cert["recheck"] = _recheck(chain, d, ref.hash)
    return cert


def _inputs(snap: ProtocolSnapshot, d: Derivation, ch: str, at: str) -> dict[str, Any]:
    acc = snap.accounts[d.account]
    positions = []
    for iid, q in acc.positions:
        ins = snap.instruments[iid]
        positions.append(
            {
                "instrument": iid,
                "underlying": ins.underlying,
                "kind": _KINDS[ins.kind] if 0 <= ins.kind < 3 else ins.kind,
                "strike": ins.strike,
                "expiry": ins.expiry,
                "quantity": q,
                "settled": ins.settled,
            }
        )
    feeds = []
    used = used_feeds(snap, d.account)
    for u in snap.underlyings:
        for (
            role,
            addr,
        ) in (("price", u.price_feed), ("vol", u.vol_feed)):
            if addr.lower() not in used:
                continue
            r = snap.feeds[addr]
            feeds.append(
                {
                    "underlying": u.index,
                    "role": role,
                    "feed": addr,
                    "round_id": r.round_id,
                    "answer": r.answer,
                    "updated_at": r.updated_at,
                    "decimals": r.decimals,
                    "max_age": u.max_age,
                    "liquidation_max_age": u.liquidation_max_age,
                    "source": f"{addr}.latestRoundData() {at}",
                }
            )
    return {
        "account_state": {
            "nonce": acc.nonce,
            "flagged_at": acc.flagged_at,
            "source": f"ClearingHouse({ch}).accountState(account) {at}",
        },
        "positions": positions,
        "positions_source": f"ClearingHouse({ch}).positionsOf(account) {at}; instruments from "
        "ClearingHouse.instrument(id)",
        "collateral": [
            {"asset": k, "balance": b, "volatile": snap.assets[k].underlying != NO_UNDERLYING}
            for k, b in enumerate(acc.balances)
        ],
        "collateral_source": f"ClearingHouse({ch}).balanceOf(account, asset) {at}",
        "portfolio": {
            "positions": [list(p.to_abi()) for p in d.portfolio.positions],
            "collateral": list(d.portfolio.collateral),
            "note": "as the contract margins it: settled positions folded into the balance",
        },
        "market": None
        if d.market is None
        else {
            "timestamp": d.market.timestamp,
            "rate": d.market.rate,
            "spots": list(d.market.spots),
            "vols": list(d.market.vols),
        },
        "rate_source": f"ClearingHouse({ch}).rate() {at}",
        "risk_params": {
            "keccak": Web3.keccak(d.risk_params).hex(),
            "source": f"ClearingHouse({ch}).riskParams() {at}",
        },
        "feeds": feeds,
    }


def _recheck(chain: Chain, d: Derivation, block_hash: str) -> list[dict[str, Any]]:
    assert d.market is not None
    verifier = Web3.to_checksum_address(chain.deployment.address("MarginVerifier"))
    vfn = abi_functions("MarginVerifier")["fullCheck"]
    mfn = abi_functions(*CLEARING_HOUSE_ABIS)["marginOf"]
    res = d.result
    expect = list(res.to_abi()) if res is not None else None
    out = [
        {
            "call": "MarginVerifier.fullCheck(portfolio, market, riskParams)",
            "to": verifier,
            "data": _calldata(vfn, (d.portfolio.to_abi(), d.market.to_abi(), d.risk_params)),
            "block": d.block.number,
            "block_hash": block_hash,
            "returns": "MarginResult (equity, requirement, initialMargin, contingencies, credit, "
            "state, losses, witness, expectedShortfall)",
            "expected": expect,
            "expected_revert": d.error if res is None else None,
        }
    ]
    strict = d.strict_error
    out.append(
        {
            "call": "ClearingHouse.marginOf(account)",
            "to": Web3.to_checksum_address(chain.clearing_house),
            "data": _calldata(mfn, (d.account,)),
            "block": d.block.number,
            "block_hash": block_hash,
            "returns": "MarginResult, the protocol reading its own inputs (strict oracle ages)",
            "expected": None if strict is not None else expect,
            "expected_revert": str(strict) if strict is not None else None,
        }
    )
    return out


# --- rendering -------------------------------------------------------------------------------


def _plain(x: Any) -> Any:
    """Integers as decimal strings for JSON (exact in any parser); bools and None stay."""
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return str(x)
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def render_json(cert: dict[str, Any]) -> str:
    # Block numbers stay numbers (as in the replay's reports); everything else exact strings.
    out = _plain(cert)
    out["block"]["number"] = cert["block"]["number"]
    for r in out.get("recheck", []):
        r["block"] = cert["block"]["number"]
    return json.dumps(out, indent=2) + "\n"


def render_text(cert: dict[str, Any]) -> str:
    b = cert["block"]
    inp = cert["inputs"]
    lines = [
        f"decision certificate: account {cert['account_hex']}",
        f"  block {b['number']} {b['hash']} (timestamp {b['timestamp']}), chain {cert['chain_id']}",
        "",
        "inputs (read at that block):",
        f"  account state: nonce {inp['account_state']['nonce']}, flagged at "
        f"{inp['account_state']['flagged_at']}   <- {inp['account_state']['source']}",
        f"  positions ({len(inp['positions'])})   <- {inp['positions_source']}",
    ]
    for p in inp["positions"]:
        lines.append(
            f"    #{p['instrument']}: underlying {p['underlying']} {p['kind']} strike "
            f"{_wad(p['strike'])} expiry {p['expiry']} qty {_wad(p['quantity'])}"
            + (" (settled)" if p["settled"] else "")
        )
    lines.append(f"  collateral   <- {inp['collateral_source']}")
    for c in inp["collateral"]:
        lines.append(f"    asset {c['asset']}: {_wad(c['balance'])} ({c['balance']} wei)")
    lines.append(f"  risk parameters keccak {inp['risk_params']['keccak']}")
    lines.append(f"    <- {inp['risk_params']['source']}")
    if inp["market"] is not None:
        lines.append(f"  rate {inp['market']['rate']}   <- {inp['rate_source']}")
    lines.append(f"  oracle ages: {cert['oracle_ages']}")
    if cert.get("strict_error"):
        lines.append(f"    (strict ages refused: {cert['strict_error']})")
    for f in inp["feeds"]:
        lines.append(
            f"  underlying {f['underlying']} {f['role']}: round {f['round_id']}, answer "
            f"{f['answer']} ({f['decimals']} decimals), updated {f['updated_at']}"
        )
        lines.append(f"    <- {f['source']}")
    lines.append(f"  inputs digest {cert['inputs_digest']}")
    res = cert["result"]
    lines.append("")
    if res is None:
        lines.append(f"no margin result: {cert.get('error')}")
        return "\n".join(lines) + "\n"
    lines += [
        "full check (engine):",
        f"  state {res['state']}, equity {_wad(res['equity'])}, maintenance margin "
        f"{_wad(res['requirement'])}, initial margin {_wad(res['initial_margin'])}",
        f"  contingencies {_wad(res['contingencies'])}, credit "
        f"{_wad(res['correlation_credit'])}, "
        f"witness {list(res['witness'])}",
    ]
    for u in res["underlyings"]:
        if u["vol"] == "0" and all(s["loss"] == "0" for s in u["scenarios"]):
            continue  # an underlying the account does not use
        lines.append(
            f"  underlying {u['index']}: spot {_wad(u['spot'])}, vol {_wad(u['vol'])}, loss "
            f"{_wad(u['loss'])}, witness scenario #{u['witness']['index']}"
        )
        for s in u["scenarios"]:
            mark = "  <- witness" if s["index"] == u["witness"]["index"] else ""
            ext = " ext" if s["extended"] else ""
            lines.append(
                f"    #{s['index']:>2} move {Decimal(s['move']) * 100:+7.2f}% vol "
                f"{s['vol_state']:<9}{ext} loss {_wad(s['loss'])}{mark}"
            )
    lines += ["", "re-check on chain (eth_call at the block):"]
    for r in cert["recheck"]:
        want = (
            f"returns equity {r['expected'][0]}, requirement {r['expected'][1]}, "
            f"witness {r['expected'][7]}"
            if r["expected"] is not None
            else f"reverts {r['expected_revert']}"
        )
        lines += [
            f"  {r['call']}: {want}",
            f"    cast call {r['to']} {r['data']} --block {r['block']}",
        ]
    return "\n".join(lines) + "\n"


def render_html(cert: dict[str, Any]) -> str:
    text = render_text(cert)
    title = f"Decision certificate {cert['account_hex']} at block {cert['block']['number']}"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:system-ui,sans-serif;"
        "margin:1.5em auto;max-width:1100px;padding:0 1em}pre{white-space:pre-wrap;"
        "overflow-wrap:anywhere;font-size:.85em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(text)}</pre>"
        "<details><summary>JSON</summary><pre>"
        f"{html.escape(render_json(cert))}</pre></details></body></html>\n"
    )


def run(
    *,
    deployment: Path,
    rpc: str | None,
    account: str,
    block: int,
    fmt: str = "text",
) -> int:
    if rpc:
        register_url(rpc)
    try:
        if fmt not in FORMATS:
            raise BadFormat(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
        acct = parse_account_arg(account)
        dep = read_deployment(deployment)
        with open_source(dep, rpc_url=rpc) as src:
            cert = certificate(src.chain, acct, block)
    except ReplayInputError as exc:
        return _fail(exc.name, exc.message, EXIT_BAD_INPUT, rpc)
    except ChainError as exc:
        return _fail(type(exc).__name__, str(exc), EXIT_BAD_INPUT, rpc)
    except Exception as exc:  # a bug: one line, no traceback
        return _fail("InternalError", f"{type(exc).__name__}: {exc}", EXIT_BUG, rpc)
    render = {"text": render_text, "json": render_json, "html": render_html}[fmt]
    sys.stdout.write(render(cert))
    return EXIT_OK


def _fail(name: str, message: str, status: int, url: str | None) -> int:
    text = scrub(message)
    if url:
        text = text.replace(url, redact_url(url))
    sys.stderr.write(f"error: {name}: {text}\n")
    return status


__all__ = ["certificate", "render_html", "render_json", "render_text", "run"]
