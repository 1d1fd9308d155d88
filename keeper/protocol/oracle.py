"""OracleLib mirrored: the checks ``OracleLib.read(feed, maxAge)`` applies to a feed's answer.

``FeedRound.read`` raises the error the contract would revert with, carrying OracleLib's
signature and arguments (``revert_data()`` is the contract's revert data to the byte), so the
keeper never acts on a price the contract refuses. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from eth_abi import encode
from eth_utils import keccak

from keeper.chain.errors import ChainError
from keeper.protocol.assets import NO_UNDERLYING
from margin.portfolio import Market, Portfolio

if TYPE_CHECKING:  # the configs' module reads the chain; this one only reads their fields
    from keeper.chain.view import AssetConfig, UnderlyingConfig

WAD = 10**18

INT256_MAX = 2**255 - 1


class OracleError(ChainError):
    """An OracleLib.read failure, with the Solidity error's signature and arguments."""

    signature: ClassVar[str] = ""

    def __init__(self, *args: int | str) -> None:
        super().__init__(f"{self.signature.split('(')[0]}({', '.join(map(str, args))})")
        self.args_ = args

    def revert_data(self) -> bytes:
        types = [t for t in self.signature[self.signature.index("(") + 1 : -1].split(",") if t]
        return keccak(text=self.signature)[:4] + encode(types, list(self.args_))


class StalePrice(OracleError):
    signature = "StalePrice(address,uint256,uint256)"


class NonPositivePrice(OracleError):
    signature = "NonPositivePrice(address,int256)"


class IncompleteRound(OracleError):
    signature = "IncompleteRound(address,uint80,uint80)"


class UnsupportedFeed(OracleError):
    signature = "UnsupportedFeed(address,uint8)"


class FeedCallFailed(OracleError):
    """The feed's latestRoundData/decimals call itself reverted (its data bubbles up as is)."""

    def __init__(self, feed: str, data: bytes) -> None:
        ChainError.__init__(self, f"feed {feed} reverted 0x{data.hex()}")
        self.args_ = (feed,)
        self.data = data

    def revert_data(self) -> bytes:
        return self.data


@dataclass(frozen=True)
class FeedRound:
    """A feed's latestRoundData and decimals at the snapshot's block (or the revert data)."""

    feed: str
    round_id: int = 0
    answer: int = 0
    updated_at: int = 0
    answered_in_round: int = 0
    decimals: int | None = None
    round_revert: bytes | None = None
    decimals_revert: bytes | None = None

    def read(self, max_age: int, now: int) -> tuple[int, int]:
        """OracleLib.read(feed, maxAge) at block timestamp ``now``: (wad, updatedAt)."""
        if self.round_revert is not None:
            raise FeedCallFailed(self.feed, self.round_revert)
        if self.updated_at == 0 or self.answered_in_round < self.round_id:
            raise IncompleteRound(self.feed, self.round_id, self.answered_in_round)
        if self.answer <= 0:
            raise NonPositivePrice(self.feed, self.answer)
        if self.updated_at < now and now - self.updated_at > max_age:
            raise StalePrice(self.feed, self.updated_at, max_age)
        if self.decimals_revert is not None or self.decimals is None:
            raise FeedCallFailed(self.feed, self.decimals_revert or b"")
        d = self.decimals
        if d > 36:
            raise UnsupportedFeed(self.feed, d)
        if d <= 18:
            scale = 10 ** (18 - d)
            if self.answer > INT256_MAX // scale:
                raise UnsupportedFeed(self.feed, d)
            return self.answer * scale, self.updated_at
        return self.answer // 10 ** (d - 18), self.updated_at  # answer > 0: floor == trunc


@dataclass(frozen=True)
class RoundData:
    """One round of a feed as ``getRoundData(roundId)`` returns it (raw answer, feed decimals)."""

    round_id: int
    answer: int
    started_at: int
    updated_at: int
    answered_in_round: int


def market_of(
    portfolio: Portfolio,
    underlyings: Sequence[UnderlyingConfig],
    assets: Sequence[AssetConfig],
    feeds: Mapping[str, FeedRound],
    timestamp: int,
    rate: int,
    *,
    lenient: bool,
) -> Market:
    """ClearingHouse._market: the feeds of the underlyings the portfolio uses (positions and
    non-zero volatile collateral) read with ``maxAge`` or, lenient, ``liquidationMaxAge``
    (flag and liquidate); the others get spot 1 and vol 0, which the model never uses. Raises
    the OracleLib error the contract would revert with."""
    used = [False] * len(underlyings)
    for p in portfolio.positions:
        used[p.underlying] = True
    for k, bal in enumerate(portfolio.collateral):
        u = assets[k].underlying
        if u != NO_UNDERLYING and bal != 0:
            used[u] = True
    spots, vols = [], []
    for u, cfg in enumerate(underlyings):
        if not used[u]:
            spots.append(WAD)
            vols.append(0)
            continue
        age = cfg.liquidation_max_age if lenient else cfg.max_age
        spots.append(feeds[cfg.price_feed].read(age, timestamp)[0])
        vols.append(feeds[cfg.vol_feed].read(age, timestamp)[0])
    return Market(timestamp, rate, tuple(spots), tuple(vols))
