// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseBase} from "../ClearingHouseBase.sol";
import {MarginVerifier} from "../MarginVerifier.sol";

/// @title VenueSeeder (DEVNET ONLY: never part of a deployment)
/// @notice Books many seeded accounts in one transaction on a devnet clearing house. It is not
/// deployed: keeper.devnet.venue puts its runtime code at the ClearingHouseAdmin address with
/// anvil_setCode, calls `seedVenue` on the clearing house (whose fallback DELEGATECALLs the
/// admin module, so this code runs on the clearing house's storage and emits its events), and
/// puts the admin module's code back. Inheriting ClearingHouseBase gives it the clearing
/// house's storage layout from the compiler itself.
///
/// Per account it does what the clearing house's own `deposit` and `trade` do to storage and
/// logs, in the same order: credit the balance and bump the nonce (Deposit), then per leg move
/// the position between the account and the market maker with the clearing house's
/// push/index/swap-and-pop bookkeeping, move the cash, count the trade and bump both nonces
/// (Trade). It skips what only guards a real trade: the signatures and order fills (no
/// OrderFilled log), the price band and the margin checks. The seeder sized every book with the
/// exact margin engine off-chain, and the tokens behind the credited balances are minted to the
/// clearing house by the caller: token balance == credited balances stays true.
contract VenueSeeder is ClearingHouseBase {
    error SeedMalformed(uint256 at);

    constructor() ClearingHouseBase(MarginVerifier(address(0))) {}

    /// @notice `w` is a flat list, per account: account id, asset-0 deposit (token units),
    /// asset-1 deposit (token units), leg count n, then n times (instrument, quantity as the
    /// account sees it: > 0 buys from the maker, < 0 sells to it; price). Only the owner may
    /// call it (and only while the seeder's code is in place, i.e. during seeding).
    function seedVenue(uint256 maker, uint256[] calldata w) external onlyOwner {
        uint256 i;
        uint256 end = w.length;
        while (i < end) {
            if (i + 4 > end) revert SeedMalformed(i);
            uint256 a = w[i];
            if (a == maker || a == backstop) revert SeedMalformed(i);
            _deposit(a, 0, w[i + 1]);
            _deposit(a, 1, w[i + 2]);
            uint256 n = w[i + 3];
            i += 4;
            if (i + 3 * n > end) revert SeedMalformed(i);
            for (uint256 k; k < n; ++k) {
                uint256 id = w[i];
                int256 q = int256(w[i + 1]);
                int256 price = int256(w[i + 2]);
                i += 3;
                _seedTrade(a, maker, id, q, price, i);
            }
        }
    }

    function _deposit(uint256 account, uint256 asset, uint256 amount) private {
        if (amount == 0) return;
        int256 wad = _toWad(_assets[asset], amount);
        balanceOf[account][asset] += wad;
        emit Deposit(account, asset, accountOwner(account), wad, _bump(account));
    }

    function _seedTrade(uint256 a, uint256 maker, uint256 id, int256 q, int256 price, uint256 at) private {
        Instrument memory ins = instruments[id];
        // forge-lint: disable-next-line(block-timestamp)
        if (!ins.listed || ins.settled || (ins.expiry != 0 && block.timestamp >= ins.expiry)) revert SeedMalformed(at);
        if (q == 0 || q > MAX_QUANTITY || q < -MAX_QUANTITY || q % LOT != 0) revert SeedMalformed(at);
        if (price < 0 || price > MAX_PRICE || price % TICK != 0) revert SeedMalformed(at);
        (uint256 buyer, uint256 seller, int256 quantity) = q > 0 ? (a, maker, q) : (maker, a, -q);
        int256 cash = (quantity * price) / WAD; // exact: LOT * TICK == 1e18
        _applyPosition(buyer, id, quantity);
        balanceOf[buyer][0] -= cash;
        _applyPosition(seller, id, -quantity);
        balanceOf[seller][0] += cash;
        emit Trade(++tradeCount, buyer, seller, id, quantity, price, _bump(buyer), _bump(seller));
    }

    // The clearing house's private bookkeeping, line for line (ClearingHouse.sol).

    function accountOwner(uint256 account) private pure returns (address) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return address(uint160(account >> 96));
    }

    function _bump(uint256 account) private returns (uint64 n) {
        n = accountState[account].nonce + 1;
        accountState[account].nonce = n;
    }

    function _pack(uint256 id, int256 q) private pure returns (uint256) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return (id << 128) | uint256(uint128(int128(q)));
    }

    function _applyPosition(uint256 account, uint256 id, int256 delta) private {
        uint256 idx = _positionIndex[account][id];
        uint256[] storage slots = _positions[account];
        if (idx == 0) {
            uint256 n = slots.length + 1;
            if (n > MAX_POSITIONS && account != backstop) revert PositionLimitExceeded(account, n, MAX_POSITIONS);
            slots.push(_pack(id, delta));
            _positionIndex[account][id] = n;
            return;
        }
        // forge-lint: disable-next-line(unsafe-typecast)
        int256 nq = int256(int128(uint128(slots[idx - 1]))) + delta;
        if (nq > MAX_QUANTITY || nq < -MAX_QUANTITY) revert InvalidQuantity(nq);
        if (nq != 0) {
            slots[idx - 1] = _pack(id, nq);
            return;
        }
        uint256 last = slots.length - 1;
        if (idx - 1 != last) {
            uint256 moved = slots[last];
            slots[idx - 1] = moved;
            _positionIndex[account][moved >> 128] = idx;
        }
        slots.pop();
        delete _positionIndex[account][id];
    }
}
