"""`keeper margin --account ID`: explain the margin of an on-chain account at one block.

The engine's explanation (scenario matrix, witness, requirement, Greeks; margin/tools/explain.py) of
the account as the clearing house builds its inputs, read in one block-pinned batch, next to the
on-chain verifier's own answer (`marginOf` at the same block). Exit status 1 if they disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from keeper.chain import Chain, ChainError, OracleError
from keeper.config import ConfigError, load_config
from keeper.deployment import DeploymentError, load_deployment
from keeper.margin_cmd import printable, render
from margin.errors import MarginError
from margin.portfolio_margin import STATE_NAMES
from margin.tools.explain import explain
from margin.tools.loader import PortfolioFile


def parse_account(text: str) -> int:
    """A decimal or 0x-hex account id (``owner << 96 | sub``)."""
    value = int(text, 16) if text.lower().startswith("0x") else int(text)
    if not 0 <= value < 2**256:
        raise ValueError("account id out of range")
    return value


def run(config_path: Path, account_text: str, block: str, as_json: bool) -> int:
    try:
        account = parse_account(account_text)
    except ValueError:
        return _fail("InvalidAccount", "account must be a decimal or 0x-hex id below 2^256")
    try:
        cfg = load_config(config_path)
        deployment = load_deployment(cfg.deployment.file)
        chain = Chain.from_config(cfg.rpc, deployment)
    except (ConfigError, DeploymentError) as e:
        return _fail(type(e).__name__, str(e))
    except ChainError as e:
        return _fail(type(e).__name__, str(e))
    try:
        view = chain.view(int(block) if block.isdigit() else block)
        snap = view.snapshot([account])
        inputs = snap.inputs(account)
        names = tuple(u.get("symbol", f"U{u['index']}") for u in deployment.underlyings)
        assets = tuple(a.get("symbol", f"A{a['index']}") for a in deployment.assets)
        pfile = PortfolioFile(
            inputs.market,
            snap.risk_params,
            inputs.portfolio,
            names,
            assets,
            snap.portfolio_funding(account),
        )
        report: dict[str, Any] = explain(pfile)
        onchain = view.call("marginOf", account)
    except OracleError as e:
        return _fail(type(e).__name__, f"the oracle answer is rejected: {e}")
    except MarginError as e:
        return _fail("MarginError", f"rejected by the margin engine: {e!r}")
    except ChainError as e:
        return _fail(type(e).__name__, str(e))
    finally:
        chain.close()
    mine = snap.full_check(account)
    theirs = tuple(onchain)
    agrees = _plain(mine.to_abi()) == _plain(theirs)
    report["account"] = {
        "id": str(account),
        "hex": hex(account),
        "owner": "0x" + f"{account >> 96:040x}",
        "sub": account & (2**96 - 1),
        "nonce": snap.accounts[account].nonce,
        "flagged_at": snap.accounts[account].flagged_at,
        "block": snap.block.number,
        "block_hash": snap.block.hash,
    }
    report["verifier"] = {
        "call": f"ClearingHouse.marginOf({account}) at block {snap.block.number}",
        "state": STATE_NAMES.get(int(theirs[5]), str(theirs[5])),
        "equity": str(theirs[0]),
        "requirement": str(theirs[1]),
        "agrees": agrees,
    }
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        render(report, Path(f"account {hex(account)} @ block {snap.block.number}"))
        verdict = "agrees" if agrees else "DISAGREES"
        sys.stdout.write(f"on-chain verifier (marginOf at block {snap.block.number}): {verdict}\n")
    return 0 if agrees else 1


def _plain(x: Any) -> Any:
    if isinstance(x, list | tuple):
        return tuple(_plain(v) for v in x)
    return x


def _fail(name: str, message: str) -> int:
    sys.stderr.write(f"error: {printable(name)}: {printable(message)}\n")
    return 1
