"""Deploy the clearing house (with devnet mocks) and read/write the deployment file.

The deployment file is what the keeper starts from: chain id, start block, every address and
the SHA-256 of each contract's canonical ABI (keeper.abi.render_abi), plus the configured
markets. ``deploy_protocol`` sends from an unlocked account (anvil's dev accounts); it is the
devnet path, not a production deployment tool.

Layout of the file (JSON)::

    {"version": 1, "chain_id": 31337, "start_block": 1, "deployer": "0x..",
     "contracts": {"ClearingHouse": {"address": "0x..", "abi": "ClearingHouse",
                                     "abi_sha256": "..", "code_hash": "0x.."}, ...},
     "underlyings": [{"index": 0, "symbol": "ETH", "price_feed": "0x..", "vol_feed": "0x.."}, ...],
     "assets": [{"index": 0, "symbol": "USDC", "token": "0x..", "decimals": 6}, ...],
     "instruments": [{"id": 1, "underlying": 0, "kind": "future", "strike": 0, "expiry": 0}, ...],
     "backstop_account": 123..., "roles": {"matcher": "0x..", ...}}

``code_hash`` is keccak256 of the runtime code read back from the chain after deployment (the
EXTCODEHASH; immutables make it deployment-specific), so a keeper started against the wrong
node or a redeployed address fails its start-up check (keeper.chain.verify_deployment).
``Multicall3`` is the aggregator the keeper batches its reads through (the canonical address
on public chains; deployed here for the devnet).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from keeper.abi import CLEARING_HOUSE_ABIS, render_abi
from keeper.artifacts import deploy, load_artifact
from margin.params import (
    STABLE,
    AssetParams,
    ExtendedMove,
    HistoricalSet,
    RiskParams,
    UnderlyingParams,
    span_like,
)

WAD = 10**18
DAY = 86_400
KINDS = {0: "future", 1: "call", 2: "put"}

#: abi.encode(RiskParams) of contracts/src/margin/PortfolioMargin.sol.
RISK_PARAMS_TYPE = (
    "((int256,uint256,int256,uint256,uint256,int256,int256,(int256,uint8,int256)[],"
    "int256,int256,int256)[],(int256,uint256)[],int256,int256,"
    "(int256[],int256[],uint256,int256[],uint256))"
)

#: Contracts of a deployment, and the ABI each is recorded with.
PROTOCOL_CONTRACTS = (
    "MarginVerifier",
    "ClearingHouseRecalibration",
    "ClearingHouseAdmin",
    "ClearingHouse",
)


class DeploymentError(RuntimeError):
    """A deployment transaction failed or a deployment file is unusable."""


def encode_risk_params(params: RiskParams) -> bytes:
    """The bytes ClearingHouse.setRiskParams / configureMarkets take: abi.encode(RiskParams)."""
    return abi_encode([RISK_PARAMS_TYPE], [params.to_abi()])


def decode_risk_params(data: bytes) -> RiskParams:
    """Inverse of encode_risk_params: ClearingHouse.riskParams() bytes -> margin RiskParams."""
    (raw,) = abi_decode([RISK_PARAMS_TYPE], bytes(data))
    unders, assets, credit, im_factor, hist = raw
    return RiskParams(
        underlyings=tuple(
            UnderlyingParams(
                price_range=u[0],
                move_steps=u[1],
                vol_shift_base=u[2],
                vol_ref_time=u[3],
                vol_min_time=u[4],
                vol_exponent=u[5],
                vol_floor=u[6],
                extended=tuple(ExtendedMove(e[0], e[1], e[2]) for e in u[7]),
                short_option_charge=u[8],
                calendar_charge=u[9],
                vega_charge=u[10],
            )
            for u in unders
        ),
        assets=tuple(AssetParams(haircut=a[0], underlying=a[1]) for a in assets),
        correlation_credit=credit,
        im_factor=im_factor,
        historical=HistoricalSet(
            moves=tuple(hist[0]),
            vol_moves=tuple(hist[1]),
            stress_count=hist[2],
            fhs_scale=tuple(hist[3]),
            es_count=hist[4],
        ),
    )


def abi_sha256(name: str) -> str:
    """SHA-256 of the canonical ABI text of a built contract."""
    return hashlib.sha256(render_abi(load_artifact(name).abi).encode()).hexdigest()


def code_hash(code: bytes) -> str:
    """keccak256 of runtime code as 0x-hex (what EXTCODEHASH returns for a contract)."""
    return "0x" + keccak(bytes(code)).hex()


def clearing_house_abi() -> list[dict[str, Any]]:
    """ClearingHouse's ABI plus its modules' (reached through its fallback)."""
    core = load_artifact("ClearingHouse").abi
    seen = {json.dumps(e, sort_keys=True) for e in core}
    for module in CLEARING_HOUSE_ABIS[1:]:
        for e in load_artifact(module).abi:
            key = json.dumps(e, sort_keys=True)
            if e.get("type") not in ("constructor", "fallback") and key not in seen:
                seen.add(key)
                core = [*core, e]
    return core


def account_id(owner: str, sub: int = 0) -> int:
    """ClearingHouse.accountId: owner << 96 | sub."""
    return (int(owner, 16) << 96) | sub


@dataclass
class MarketConfig:
    """What deploy_protocol lists: underlyings with spot, vol and option strikes."""

    symbol: str
    spot: int  # USD, whole units
    vol_pct: int  # implied vol in percent
    strikes: Sequence[int]  # USD, whole units
    feed_decimals: int = 8


DEFAULT_MARKETS = (
    MarketConfig("ETH", 3000, 60, (2500, 2750, 3000, 3250, 3500)),
    MarketConfig("BTC", 60_000, 50, (50_000, 55_000, 60_000, 65_000, 70_000)),
)


@dataclass
class Deployment:
    chain_id: int
    start_block: int
    deployer: str
    contracts: dict[str, dict[str, str]]
    underlyings: list[dict[str, Any]] = field(default_factory=list)
    assets: list[dict[str, Any]] = field(default_factory=list)
    instruments: list[dict[str, Any]] = field(default_factory=list)
    backstop_account: int = 0
    roles: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": 1, **self.__dict__}, indent=2, sort_keys=True) + "\n"

    def address(self, name: str) -> str:
        return self.contracts[name]["address"]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())


def load_deployment(path: Path) -> Deployment:
    try:
        data = json.loads(path.read_text())
        data.pop("version")
        return Deployment(**data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeploymentError(f"unusable deployment file {path}: {exc!r}") from exc


def _send(w3: Web3, fn: Any, sender: str) -> Any:
    tx_hash = fn.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise DeploymentError(f"transaction {tx_hash.hex()} reverted")
    return receipt


def deploy_protocol(
    w3: Web3,
    *,
    deployer: str | None = None,
    markets: Sequence[MarketConfig] = DEFAULT_MARKETS,
    backstop_usdc: int = 10_000_000,
    insurance_usdc: int = 100_000,
    funding_cap: int = 10**15,
    recalibration_delay: int = 3600,
) -> Deployment:
    """Deploy verifier, clearing house, mock tokens and feeds; configure markets; fund the
    backstop (the deployer's sub-account 1) and the insurance fund. Roles go to the deployer.
    ``funding_cap``: the perpetuals' funding cap per interval (WAD of spot; 0.1% by default)."""
    deployer = deployer or w3.eth.accounts[0]
    start_block = w3.eth.block_number + 1
    verifier = deploy(w3, "MarginVerifier")
    recalibration = deploy(w3, "ClearingHouseRecalibration", verifier.address)
    admin = deploy(w3, "ClearingHouseAdmin", verifier.address, recalibration.address)
    core = deploy(w3, "ClearingHouse", deployer, verifier.address, admin.address)
    ch = w3.eth.contract(address=core.address, abi=clearing_house_abi())
    usdc = deploy(w3, "MockERC20", "USD Coin", "USDC", 6)
    weth = deploy(w3, "MockERC20", "Wrapped Ether", "WETH", 18)

    contracts = {
        "MarginVerifier": verifier,
        "ClearingHouseRecalibration": recalibration,
        "ClearingHouseAdmin": admin,
        "ClearingHouse": core,
    }
    underlyings: list[dict[str, Any]] = []
    new_underlyings = []
    for i, m in enumerate(markets):
        scale = 10**m.feed_decimals
        price = deploy(w3, "MockAggregator", m.feed_decimals, f"{m.symbol} / USD", m.spot * scale)
        vol = deploy(
            w3, "MockAggregator", m.feed_decimals, f"{m.symbol} IV", m.vol_pct * scale // 100
        )
        # UnderlyingConfig(priceFeed, maxAge, liquidationMaxAge, volFeed)
        new_underlyings.append((price.address, 3600, DAY, vol.address))
        underlyings.append(
            {
                "index": i,
                "symbol": m.symbol,
                "price_feed": price.address,
                "vol_feed": vol.address,
                "feed_decimals": m.feed_decimals,
                "max_age": 3600,
                "liquidation_max_age": DAY,
            }
        )
        contracts[f"MockAggregator:{m.symbol}/USD"] = price
        contracts[f"MockAggregator:{m.symbol}/IV"] = vol
    contracts["MockERC20:USDC"] = usdc
    contracts["MockERC20:WETH"] = weth
    contracts["Multicall3"] = deploy(w3, "Multicall3")

    eth_index = next((i for i, m in enumerate(markets) if m.symbol == "ETH"), 0)
    params = RiskParams(
        underlyings=tuple(span_like() for _ in markets),
        assets=(AssetParams(0, STABLE), AssetParams(10**17, eth_index)),
        correlation_credit=3 * 10**17,
        im_factor=125 * 10**16,
    )
    # Underlyings, collateral tokens and the risk parameters that cover them: one call.
    _send(
        w3,
        ch.functions.configureMarkets(
            new_underlyings, [usdc.address, weth.address], encode_risk_params(params)
        ),
        deployer,
    )
    # (penaltyRate, bountyShare, gracePeriod, minBounty, maxBounty), inside the contract's
    # bounds: 0 < penaltyRate <= 0.5, bountyShare <= 1, 60 s <= grace <= 7 days,
    # minBounty <= maxBounty <= 10,000 (asset-0 WAD).
    _send(
        w3,
        ch.functions.setLiquidationConfig((5 * 10**16, 5 * 10**17, 3600, WAD, 1000 * WAD)),
        deployer,
    )
    if funding_cap:
        _send(w3, ch.functions.setFundingCap(funding_cap), deployer)
    for i in range(len(markets)):
        bounds = (10 * 10**16, 25 * 10**16, 5 * 10**16, 20 * 10**16)
        _send(w3, ch.functions.setRiskBounds(i, bounds), deployer)
    # Recalibration: queued updates wait `recalibration_delay` seconds; each execution moves a
    # price range or vol shift at most 25% from its current value, at most 50% in a UTC day.
    _send(
        w3,
        ch.functions.setRecalibrationConfig(recalibration_delay, 25 * 10**16, 50 * 10**16),
        deployer,
    )
    roles = {}
    for role in ("MATCHER", "GUARDIAN", "RISK_OPERATOR"):
        key = getattr(ch.functions, role)().call()
        _send(w3, ch.functions.setRole(key, deployer, True), deployer)
        roles[role.lower()] = deployer
    backstop = account_id(deployer, 1)
    # setBackstop takes an account without positions or balances: set before it is funded.
    _send(w3, ch.functions.setBackstop(backstop), deployer)

    # Instruments: a perpetual and a 30-day future per underlying, then the option strip.
    now = w3.eth.get_block("latest")["timestamp"]
    expiry = (now // DAY + 30) * DAY + 8 * 3600  # 08:00 UTC, 30 days out
    instruments: list[dict[str, Any]] = []

    def list_instrument(u: int, kind: int, strike: int, exp: int) -> None:
        _send(w3, ch.functions.listInstrument(u, kind, strike, exp), deployer)
        instruments.append(
            {
                "id": ch.functions.instrumentCount().call(),
                "underlying": u,
                "kind": KINDS[kind],
                "strike": strike,
                "expiry": exp,
            }
        )

    for i, m in enumerate(markets):
        list_instrument(i, 0, 0, 0)
        list_instrument(i, 0, 0, expiry)
        for k in m.strikes:
            list_instrument(i, 1, k * WAD, expiry)
            list_instrument(i, 2, k * WAD, expiry)

    # Fund the backstop and the insurance fund from the deployer.
    total = (backstop_usdc + insurance_usdc) * 10**6
    _send(w3, usdc.functions.mint(deployer, total), deployer)
    _send(w3, usdc.functions.approve(core.address, total), deployer)
    if backstop_usdc:
        _send(w3, ch.functions.deposit(backstop, 0, backstop_usdc * 10**6), deployer)
    if insurance_usdc:
        _send(w3, ch.functions.depositInsurance(insurance_usdc * 10**6), deployer)

    abi_name = {"MockAggregator": "MockAggregator", "MockERC20": "MockERC20"}
    recorded = {}
    for key, c in contracts.items():
        name = abi_name.get(key.split(":")[0], key.split(":")[0])
        recorded[key] = {
            "address": c.address,
            "abi": name,
            "abi_sha256": abi_sha256(name),
            "code_hash": code_hash(w3.eth.get_code(c.address)),
        }
    return Deployment(
        chain_id=w3.eth.chain_id,
        start_block=start_block,
        deployer=deployer,
        contracts=recorded,
        underlyings=underlyings,
        assets=[
            {"index": 0, "symbol": "USDC", "token": usdc.address, "decimals": 6},
            {"index": 1, "symbol": "WETH", "token": weth.address, "decimals": 18},
        ],
        instruments=instruments,
        backstop_account=backstop,
        roles=roles,
    )


def bind(w3: Web3, deployment: Deployment, key: str) -> Contract:
    """A contract of the deployment with its ABI (ClearingHouse with the admin functions)."""
    entry = deployment.contracts[key]
    abi = clearing_house_abi() if key == "ClearingHouse" else load_artifact(entry["abi"]).abi
    return w3.eth.contract(address=Web3.to_checksum_address(entry["address"]), abi=abi)
