"""Consistent, batched reads of the protocol at one block, turned into the engine's inputs.

``Chain.connect(url, deployment)`` verifies the node (keeper.chain.rpc.verify_deployment);
``chain.view(block)`` pins a ``ChainView`` to one block (number AND hash); every read of one
decision goes through that view, so a price of block N never meets positions of block N+1.
``view.snapshot(accounts)`` reads, in one JSON-RPC round trip in the steady state:

* globals: counts, riskParams, rate, backstop, paused, liquidationConfig, insurance fund,
  and Multicall3's block number/timestamp (the block.timestamp the protocol's own checks see);
* every underlying's config and its price/vol feeds' latestRoundData + decimals;
* every asset's config, every instrument, its settlement price and its funding state (a
  perpetual's cumulative funding index);
* per account: accountState (nonce, flaggedAt), positionsOf, fundingIndicesOf (the index each
  position last settled its funding at), balanceOf for every asset.

The layout (feed addresses, counts) is guessed from the previous snapshot (at first from the
deployment file) so feeds can be read in the same call as their configs; the guess is checked
against what the same call returned, and on a mismatch (a listing, a new feed) one layout read
and one full re-read follow: still O(1) round trips, never one per account.

``ProtocolSnapshot.inputs(account, lenient)`` builds margin Portfolio/Market/RiskParams exactly
as ClearingHouse._loadPortfolio/_market do (positions in storage order, entryPrice 0; positions
in settled instruments folded into the settlement balance by margin.settlement.fold_settled;
the funding accrued on perpetual positions added to the settlement balance by
margin.funding.fold_funding; feeds of used underlyings only, placeholder spot 1e18 / vol 0
elsewhere), so
margin.portfolio_margin's full check equals ClearingHouse.marginOf at that block to the wei. The
oracle checks are OracleLib.read's (keeper.protocol.oracle).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from web3 import Web3

from keeper.abi import CLEARING_HOUSE_ABIS
from keeper.chain.errors import BatchReadError, HeadBehind, WrongChain
from keeper.chain.multicall import (
    CALLS_PER_MULTICALL,
    MULTICALLS_PER_BATCH,
    AbiFn,
    Call,
    CallResult,
    abi_functions,
    multicall,
)
from keeper.chain.rpc import BlockRef, Rpc, make_web3, verify_deployment
from keeper.chain.transport import RetryPolicy
from keeper.config import RpcConfig
from keeper.deployment import Deployment, decode_risk_params

# Re-exported ("X as X"): the oracle's names are the view's public names too.
from keeper.protocol.assets import NO_UNDERLYING as NO_UNDERLYING
from keeper.protocol.oracle import INT256_MAX as INT256_MAX
from keeper.protocol.oracle import FeedCallFailed as FeedCallFailed
from keeper.protocol.oracle import FeedRound as FeedRound
from keeper.protocol.oracle import IncompleteRound as IncompleteRound
from keeper.protocol.oracle import NonPositivePrice as NonPositivePrice
from keeper.protocol.oracle import OracleError as OracleError
from keeper.protocol.oracle import RoundData as RoundData
from keeper.protocol.oracle import StalePrice as StalePrice
from keeper.protocol.oracle import UnsupportedFeed as UnsupportedFeed
from keeper.protocol.oracle import market_of
from margin.funding import accrued_funding, fold_funding, is_perpetual
from margin.params import RiskParams
from margin.portfolio import Market, Portfolio, Position
from margin.portfolio_margin import MarginResult, ScenarioTable
from margin.settlement import fold_settled

WAD = 10**18
#: Reads of the protocol's layout when a snapshot's counts disagree with the layout it used,
#: the later ones after LAYOUT_RETRY_SECONDS times the attempt number.
LAYOUT_READS = 3
LAYOUT_RETRY_SECONDS = 0.05


# --- snapshot data -------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    id: int
    underlying: int
    kind: int
    listed: bool
    settled: bool
    expiry: int
    strike: int


@dataclass(frozen=True)
class UnderlyingConfig:
    index: int
    price_feed: str
    max_age: int
    liquidation_max_age: int
    vol_feed: str


@dataclass(frozen=True)
class AssetConfig:
    index: int
    token: str
    decimals: int
    underlying: int  # NO_UNDERLYING (255) for a stablecoin
    haircut: int
    scale: int


@dataclass(frozen=True)
class AccountSnapshot:
    account: int
    nonce: int
    flagged_at: int
    positions: tuple[tuple[int, int], ...]  # (instrument id, quantity), storage order
    balances: tuple[int, ...]  # WAD per asset
    #: Per position (storage order): the funding index it last settled at (0: not a perpetual).
    funding_indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Layout:
    """What must be known before one read can fetch everything: counts and feed addresses."""

    feeds: tuple[tuple[str, str], ...]  # (price feed, vol feed) per underlying
    assets: int
    instruments: int


@dataclass(frozen=True)
class AccountInputs:
    """The engine's inputs for one account, as the clearing house would build them."""

    account: int
    portfolio: Portfolio
    market: Market


@dataclass
class ProtocolSnapshot:
    block: BlockRef
    timestamp: int  # block.timestamp inside the eth_call (what the protocol's checks see)
    rate: int
    backstop: int
    paused: bool
    insurance_fund: int
    liquidation_config: tuple[int, int, int, int, int]
    risk_params_bytes: bytes
    risk_params: RiskParams
    underlyings: tuple[UnderlyingConfig, ...]
    assets: tuple[AssetConfig, ...]
    instruments: dict[int, Instrument]
    settlement_prices: dict[int, int]  # settled instruments only
    feeds: dict[str, FeedRound]
    accounts: dict[int, AccountSnapshot]
    #: Perpetuals only: the cumulative funding index (WAD per contract).
    funding_indices: dict[int, int] = field(default_factory=dict)
    #: Perpetuals only: when their funding was last poked (the next poke is due an interval on).
    funding_last_poke: dict[int, int] = field(default_factory=dict)
    round_trips: int = 0  # JSON-RPC round trips this snapshot took (header not included)
    reused_accounts: int = 0  # accounts whose positions and balances came from ``reuse``
    _tables: dict[Market, ScenarioTable] = field(default_factory=dict, repr=False)

    @property
    def layout(self) -> Layout:
        return Layout(
            tuple((u.price_feed, u.vol_feed) for u in self.underlyings),
            len(self.assets),
            len(self.instruments),
        )

    def raw_portfolio(self, account: int) -> Portfolio:
        """Every stored position (``positionsOf``: settled ones too), storage order."""
        a = self.accounts[account]
        positions = []
        for iid, q in a.positions:
            ins = self.instruments[iid]
            positions.append(Position(ins.underlying, ins.kind, ins.strike, ins.expiry, q, 0))
        return Portfolio(tuple(positions), a.balances)

    def portfolio(self, account: int) -> Portfolio:
        """ClearingHouse._loadPortfolio (``portfolioOf``): positions in storage order,
        entryPrice 0, positions in settled instruments folded into asset 0, and the funding
        accrued on perpetual positions added to asset 0."""
        a = self.accounts[account]
        folded = fold_settled(
            self.raw_portfolio(account), [iid for iid, _ in a.positions], self.settlement_prices
        )
        return fold_funding(folded, self.accrued_funding(account))

    def position_funding(self, account: int) -> list[tuple[int, int]]:
        """(instrument id, funding accrued and not realised) per perpetual position of the
        account, storage order (received: > 0)."""
        a = self.accounts[account]
        out = []
        for k, (iid, q) in enumerate(a.positions):
            ins = self.instruments[iid]
            if not is_perpetual(ins.kind, ins.expiry):
                continue
            at = a.funding_indices[k] if k < len(a.funding_indices) else 0
            out.append((iid, accrued_funding(q, self.funding_indices.get(iid, 0), at)))
        return out

    def portfolio_funding(self, account: int) -> tuple[int, ...]:
        """Per position of ``portfolio(account)`` (the live ones, storage order): its accrued
        funding (0 for a position that is not a perpetual)."""
        accrued = dict(self.position_funding(account))
        return tuple(
            accrued.get(iid, 0)
            for iid, _ in self.accounts[account].positions
            if iid not in self.settlement_prices
        )

    def accrued_funding(self, account: int) -> int:
        """ClearingHouseAdmin.accruedFunding: the account's funding accrued, not realised."""
        return sum(c for _, c in self.position_funding(account))

    def settled_positions(self, account: int) -> list[int]:
        """Instrument ids of the account's stored positions that are settled (realised by
        ``settleAccount``; already counted as cash by every margin check)."""
        return [iid for iid, _ in self.accounts[account].positions if iid in self.settlement_prices]

    def live_positions(self, account: int) -> list[int]:
        """Instrument ids of the account's positions that are not settled (the ones
        ``resolveBadDebt`` refuses with ``HasOpenPositions``; expired-unsettled ones count)."""
        return [
            iid for iid, _ in self.accounts[account].positions if iid not in self.settlement_prices
        ]

    def market(self, portfolio: Portfolio, *, lenient: bool = False) -> Market:
        """ClearingHouse._market at this block (keeper.protocol.oracle.market_of)."""
        return market_of(
            portfolio, self.underlyings, self.assets, self.feeds, self.timestamp, self.rate,
            lenient=lenient,
        )  # fmt: skip

    def inputs(self, account: int, *, lenient: bool = False) -> AccountInputs:
        pf = self.portfolio(account)
        return AccountInputs(account, pf, self.market(pf, lenient=lenient))

    def table(self, market: Market) -> ScenarioTable:
        """A pricing table shared by every account with the same market (same used feeds)."""
        t = self._tables.get(market)
        if t is None:
            t = self._tables[market] = ScenarioTable(market, self.risk_params)
        return t

    def full_check(self, account: int) -> MarginResult:
        """margin's full check on the inputs the clearing house's marginOf uses (strict)."""
        inp = self.inputs(account)
        return self.table(inp.market).full_check(inp.portfolio)


# --- chain and view ------------------------------------------------------------------------

CH_ABIS = CLEARING_HOUSE_ABIS


class Chain:
    """A verified connection to the node serving ``deployment``."""

    def __init__(
        self,
        rpc: Rpc,
        deployment: Deployment,
        multicall_address: str,
        *,
        calls_per_multicall: int = CALLS_PER_MULTICALL,
        multicalls_per_batch: int = MULTICALLS_PER_BATCH,
    ) -> None:
        self.rpc = rpc
        self.deployment = deployment
        self.multicall_address = multicall_address
        self.clearing_house = Web3.to_checksum_address(deployment.address("ClearingHouse"))
        self.calls_per_multicall = calls_per_multicall
        self.multicalls_per_batch = multicalls_per_batch
        self.layout = Layout(
            tuple(
                (Web3.to_checksum_address(u["price_feed"]), Web3.to_checksum_address(u["vol_feed"]))
                for u in sorted(deployment.underlyings, key=lambda u: u["index"])
            ),
            len(deployment.assets),
            len(deployment.instruments),
        )

    @classmethod
    def connect(
        cls,
        url: str,
        deployment: Deployment,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        fallback_urls: Sequence[str] = (),
        unhealthy_seconds: float = 30.0,
        max_lag_blocks: int = 2,
        hedge_after_seconds: float | None = 1.0,
        **kwargs: Any,
    ) -> Chain:
        """Connect (HTTP or WebSocket) and verify the node against the deployment file.
        Transient faults are retried as ``retry`` says (keeper.chain.transport); with
        ``fallback_urls``, over several endpoints (keeper.chain.fallback)."""
        w3 = make_web3(
            url,
            timeout=timeout,
            retry=retry,
            fallback_urls=fallback_urls,
            unhealthy_seconds=unhealthy_seconds,
            max_lag_blocks=max_lag_blocks,
            hedge_after_seconds=hedge_after_seconds,
        )
        rpc = Rpc(w3, url)
        return cls(rpc, deployment, verify_deployment(rpc, deployment), **kwargs)

    @classmethod
    def from_config(
        cls, rpc: RpcConfig, deployment: Deployment, *, websocket: bool = False, **kwargs: Any
    ) -> Chain:
        """Connect as keeper.config's ``[rpc]`` section says (``ws_url`` when ``websocket``
        and one is configured). The configured chain id must be the deployment's."""
        if rpc.chain_id != deployment.chain_id:
            raise WrongChain(deployment.chain_id, rpc.chain_id, "the [rpc] configuration")
        url, fallbacks = rpc.url, list(rpc.fallback_urls)
        if websocket and rpc.ws_url:
            # The WebSocket endpoint first; the HTTP ``url`` stays in the list behind it, so a
            # dropped or dead WebSocket does not take the keeper's reads and sends with it.
            url, fallbacks = rpc.ws_url, [rpc.url, *(u for u in fallbacks if u != rpc.url)]
        kwargs.setdefault("retry", RetryPolicy(max_retries=rpc.max_retries))
        kwargs.setdefault("fallback_urls", fallbacks)
        kwargs.setdefault("unhealthy_seconds", rpc.unhealthy_seconds)
        kwargs.setdefault("max_lag_blocks", rpc.max_lag_blocks)
        kwargs.setdefault("hedge_after_seconds", rpc.hedge_after_seconds)
        return cls.connect(url, deployment, timeout=float(rpc.timeout_seconds), **kwargs)

    @property
    def w3(self) -> Web3:
        return self.rpc.w3

    def close(self) -> None:
        """Closes a WebSocket connection (HTTP holds none worth closing)."""
        close = getattr(self.rpc.w3.provider, "close", None)
        if callable(close):
            close()

    def head(self, *, not_before: int | None = None) -> BlockRef:
        """The node's latest block. With ``not_before`` (the highest block already seen), a
        head below it raises ``HeadBehind``: a lagging RPC behind a load balancer must not
        send the keeper back in time (a reorg that shortens the chain by more than a block or
        two is not a thing on the chains it runs on)."""
        head = self.rpc.block("latest")
        if not_before is not None and head.number < not_before:
            raise HeadBehind(head.number, not_before)
        return head

    def view(self, block: BlockRef | int | str = "latest") -> ChainView:
        ref = block if isinstance(block, BlockRef) else self.rpc.block(block)
        return ChainView(self, ref)


class ChainView:
    """Every read at one block (number and hash). Obtain with ``Chain.view``."""

    def __init__(self, chain: Chain, block: BlockRef) -> None:
        self.chain = chain
        self.block = block
        self.round_trips = 0
        self._ch = abi_functions(*CH_ABIS)
        self._feed = abi_functions("MockAggregator")  # AggregatorV3Interface subset
        self._mc = abi_functions("Multicall3")

    def call_many(self, calls: Sequence[Call]) -> list[CallResult]:
        c = self.chain
        n_multicalls = -(-len(calls) // c.calls_per_multicall)
        batching = c.rpc.batching
        trips: list[int] = []
        out = multicall(
            c.rpc,
            c.multicall_address,
            self.block,
            calls,
            calls_per_multicall=c.calls_per_multicall,
            multicalls_per_batch=c.multicalls_per_batch,
            trips=trips,
        )
        if batching:
            self.round_trips += sum(trips)
        if not c.rpc.batching:  # counted after the call: batching may just have been refused
            self.round_trips += n_multicalls
        return out

    def ch_call(self, fn: str, *args: Any, required: bool = True) -> Call:
        return Call(self.chain.clearing_house, self._ch[fn], tuple(args), required)

    def call(self, fn: str, *args: Any) -> Any:
        """One clearing-house view at this block (one round trip; batch with call_many)."""
        return self.call_many([self.ch_call(fn, *args)])[0].one()

    def fn(self, name: str) -> AbiFn:
        return self._ch[name]

    def feed_rounds(self, feed: str, round_ids: Sequence[int]) -> dict[int, RoundData | None]:
        """``getRoundData`` of each round id at this block, in one batched read; a round the
        feed does not have (the call reverts) is None."""
        fn = self._feed["getRoundData"]
        calls = [Call(feed, fn, (r,), False) for r in round_ids]
        out: dict[int, RoundData | None] = {}
        for r, res in zip(round_ids, self.call_many(calls), strict=True):
            if res.ok and res.value is not None:
                rid, answer, started, updated, air = res.value
                out[r] = RoundData(rid, answer, started, updated, air)
            else:
                out[r] = None
        return out

    def snapshot(
        self,
        accounts: Iterable[int],
        *,
        reuse: Mapping[int, AccountSnapshot] | None = None,
        unchanged: Mapping[int, AccountSnapshot] | None = None,
    ) -> ProtocolSnapshot:
        """Everything about the protocol and ``accounts`` at this view's block.

        ``reuse``: account data read at an earlier block. For those accounts only
        ``accountState`` (nonce, flag) is read; the contract bumps the nonce on every change to
        an account's positions or balances (ClearingHouse._bump), so an equal nonce and flag
        prove the earlier positions and balances are this block's too. Accounts whose nonce
        or flag moved are read in full, at this same block, in one more round trip.

        ``unchanged``: account data the caller knows is this block's too (no indexed event has
        named the account since it was read: every change to an account's nonce, flag,
        positions or balances emits an event naming it). Taken as is, without a read, so the
        read's size follows what changed, not the size of the book."""
        start = self.round_trips
        unchanged = unchanged or {}
        accounts = [a for a in dict.fromkeys(accounts) if a not in unchanged]
        reuse = reuse or {}
        layout = self.chain.layout
        snap = self._read(accounts, layout, reuse)
        for attempt in range(LAYOUT_READS):
            if snap is not None:
                break
            # The guessed layout was wrong: read the real one, then read again. Two reads at
            # one block disagree only when the node answered one of them from the next block's
            # state while mining it (anvil on automine does: RELIABILITY.md, the soak): a moment
            # later both come from the pinned block again.
            if attempt:
                time.sleep(LAYOUT_RETRY_SECONDS * attempt)
            layout = self._read_layout()
            snap = self._read(accounts, layout, reuse)
        if snap is None:
            raise BatchReadError(f"protocol layout unstable within block {self.block}")
        stale = [
            a
            for a, acc in snap.accounts.items()
            if a in reuse and (acc.nonce, acc.flagged_at) != (reuse[a].nonce, reuse[a].flagged_at)
        ]
        if stale:
            snap.accounts.update(self._read_accounts(stale, len(snap.assets)))
        snap.reused_accounts = len(reuse.keys() & snap.accounts.keys()) - len(stale)
        # An asset listed since an account was read: its balances are read again.
        n_assets = len(snap.assets)
        again = [a for a, acc in unchanged.items() if len(acc.balances) != n_assets]
        snap.accounts.update(unchanged)
        if again:
            snap.accounts.update(self._read_accounts(again, n_assets))
        snap.reused_accounts += len(unchanged) - len(again)
        self.chain.layout = snap.layout
        snap.round_trips = self.round_trips - start
        return snap

    def _account_calls(self, a: int, n_assets: int) -> list[Call]:
        ch = self.ch_call
        return [ch("accountState", a), ch("positionsOf", a), ch("fundingIndicesOf", a)] + [
            ch("balanceOf", a, k) for k in range(n_assets)
        ]

    @staticmethod
    def _account_from(a: int, res: Iterator[CallResult], n_assets: int) -> AccountSnapshot:
        nonce, flagged = next(res).value or (0, 0)
        ids, qs = next(res).value or ((), ())
        funding = tuple(next(res).one())
        bals = tuple(next(res).one() for _ in range(n_assets))
        return AccountSnapshot(a, nonce, flagged, tuple(zip(ids, qs, strict=True)), bals, funding)

    def _read_accounts(self, accounts: list[int], n_assets: int) -> dict[int, AccountSnapshot]:
        calls = [c for a in accounts for c in self._account_calls(a, n_assets)]
        res = iter(self.call_many(calls))
        return {a: self._account_from(a, res, n_assets) for a in accounts}

    def _read_layout(self) -> Layout:
        counts = self.call_many(
            [self.ch_call(n) for n in ("underlyingCount", "assetCount", "instrumentCount")]
        )
        n_u, n_a, n_i = (r.one() for r in counts)
        cfgs = self.call_many([self.ch_call("underlyingConfig", u) for u in range(n_u)])
        feeds = tuple(
            (Web3.to_checksum_address(r.one()[0]), Web3.to_checksum_address(r.one()[3]))
            for r in cfgs
        )
        return Layout(feeds, n_a, n_i)

    def _read(
        self, accounts: list[int], layout: Layout, reuse: Mapping[int, AccountSnapshot]
    ) -> ProtocolSnapshot | None:
        mc = self.chain.multicall_address
        ch = self.ch_call
        calls = [
            Call(mc, self._mc["getCurrentBlockTimestamp"]),
            ch("underlyingCount"),
            ch("assetCount"),
            ch("instrumentCount"),
            ch("riskParams"),
            ch("rate"),
            ch("backstop"),
            ch("paused"),
            ch("insuranceFund"),
            ch("liquidationConfig"),
        ]
        n_u, n_a, n_i = len(layout.feeds), layout.assets, layout.instruments
        # Past the real count these revert (array index): a wrong guess, not a failure.
        calls += [ch("underlyingConfig", u, required=False) for u in range(n_u)]
        calls += [ch("assetConfig", k, required=False) for k in range(n_a)]
        calls += [ch("instruments", i) for i in range(1, n_i + 1)]
        calls += [ch("settlementPrice", i) for i in range(1, n_i + 1)]
        calls += [ch("fundingState", i) for i in range(1, n_i + 1)]
        feed_addrs = list(dict.fromkeys(a for pair in layout.feeds for a in pair))
        for f in feed_addrs:
            calls.append(Call(f, self._feed["latestRoundData"], (), required=False))
            calls.append(Call(f, self._feed["decimals"], (), required=False))
        for a in accounts:
            if a in reuse:
                calls.append(ch("accountState", a))
            else:
                calls += self._account_calls(a, n_a)
        res = iter(self.call_many(calls))

        timestamp = next(res).one()
        counts = (next(res).one(), next(res).one(), next(res).one())
        risk_bytes, rate, backstop, paused, insurance = (next(res).one() for _ in range(5))
        liq = next(res).value
        assert liq is not None
        config_results = [next(res) for _ in range(n_u + n_a)]
        if counts != (n_u, n_a, n_i) or not all(r.ok for r in config_results):
            return None  # the guessed layout is not this block's (checked again below)
        unders = []
        for u in range(n_u):
            p, max_age, liq_age, v = config_results[u].one()
            unders.append(
                UnderlyingConfig(
                    u, Web3.to_checksum_address(p), max_age, liq_age, Web3.to_checksum_address(v)
                )
            )
        assets = []
        for k in range(n_a):
            token, decimals, underlying, haircut, scale = config_results[n_u + k].one()
            assets.append(
                AssetConfig(
                    k, Web3.to_checksum_address(token), decimals, underlying, haircut, scale
                )
            )
        instruments = {}
        for i in range(1, n_i + 1):
            v = next(res).value
            assert v is not None
            instruments[i] = Instrument(i, *v)
        settlement_prices = {i: next(res).one() for i in range(1, n_i + 1)}
        funding_states = {i: next(res).value for i in range(1, n_i + 1)}
        feeds = {}
        for f in feed_addrs:
            rd, dec = next(res), next(res)
            if rd.ok:
                assert rd.value is not None
                rid, ans, _, upd, air = rd.value
                feeds[f] = FeedRound(
                    f,
                    rid,
                    ans,
                    upd,
                    air,
                    dec.one() if dec.ok else None,
                    None,
                    None if dec.ok else dec.revert,
                )
            else:
                feeds[f] = FeedRound(f, round_revert=rd.revert)
        accts = {}
        for a in accounts:
            if a in reuse:
                nonce, flagged = next(res).value or (0, 0)
                old = reuse[a]
                # Checked by the caller: equal nonce and flag, or read again in full.
                accts[a] = AccountSnapshot(
                    a, nonce, flagged, old.positions, old.balances, old.funding_indices
                )
            else:
                accts[a] = self._account_from(a, res, n_a)

        if tuple((u.price_feed, u.vol_feed) for u in unders) != layout.feeds:
            return None
        perps = {
            i: fs
            for i, fs in funding_states.items()
            if fs is not None and is_perpetual(instruments[i].kind, instruments[i].expiry)
        }
        return ProtocolSnapshot(
            block=self.block,
            timestamp=timestamp,
            rate=rate,
            backstop=backstop,
            paused=paused,
            insurance_fund=insurance,
            liquidation_config=(liq[0], liq[1], liq[2], liq[3], liq[4]),
            risk_params_bytes=bytes(risk_bytes),
            risk_params=decode_risk_params(risk_bytes),
            underlyings=tuple(unders),
            assets=tuple(assets),
            instruments=instruments,
            settlement_prices={
                i: p for i, p in settlement_prices.items() if instruments[i].settled
            },
            feeds=feeds,
            accounts=accts,
            funding_indices={i: fs[0] for i, fs in perps.items()},
            funding_last_poke={i: fs[1] for i, fs in perps.items()},
        )
