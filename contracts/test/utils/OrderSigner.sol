// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./TestBase.sol";
import {ClearingHouse} from "../../src/ClearingHouse.sol";
import {ClearingHouseBase} from "../../src/ClearingHouseBase.sol";

/// @notice Signed orders for tests: actors with private keys, an EIP-712 digest computed here
/// from the standard's definition (not by asking the contract, so every signed trade also checks
/// the contract's hashing), signatures by vm.sign, and a helper that matches two orders.
abstract contract OrderSigner is TestBase {
    bytes32 internal constant ORDER_TYPEHASH_T = keccak256(
        "Order(uint256 account,uint256 instrument,int256 quantity,int256 limitPrice,uint256 nonce,uint64 deadline)"
    );
    bytes32 internal constant DOMAIN_TYPEHASH_T =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    mapping(address => uint256) internal keyOf;
    uint256 internal orderNonce;

    /// @dev The address of a private key, remembered so its orders can be signed.
    function registerKey(uint256 pk) internal returns (address a) {
        a = vm.addr(pk);
        keyOf[a] = pk;
    }

    function domainSeparatorOf(address house) internal view returns (bytes32) {
        return keccak256(
            abi.encode(DOMAIN_TYPEHASH_T, keccak256(bytes("ClearingHouse")), keccak256(bytes("1")), block.chainid, house)
        );
    }

    function digestOf(address house, ClearingHouseBase.Order memory o) internal view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(ORDER_TYPEHASH_T, o.account, o.instrument, o.quantity, o.limitPrice, o.nonce, o.deadline)
        );
        return keccak256(abi.encodePacked("\x19\x01", domainSeparatorOf(house), structHash));
    }

    function signDigest(uint256 pk, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        return abi.encodePacked(r, s, v);
    }

    /// @dev A fresh order (new nonce), valid for an hour.
    function newOrder(uint256 account, uint256 id, int256 q, int256 limit)
        internal
        returns (ClearingHouseBase.Order memory)
    {
        return ClearingHouseBase.Order(account, id, q, limit, ++orderNonce, uint64(block.timestamp + 1 hours));
    }

    /// @dev Signed by the account's owner (its key must be registered).
    function signFor(address house, ClearingHouseBase.Order memory o) internal view returns (bytes memory) {
        uint256 pk = keyOf[address(uint160(o.account >> 96))];
        require(pk != 0, "no key for the account's owner");
        return signDigest(pk, digestOf(house, o));
    }

    /// @dev `matcher` settles `buy` against `sell` for q at p (both signed by their owners).
    /// No call to the clearing house before trade(), so vm.expectRevert can precede this.
    function matchOrders(
        ClearingHouse house,
        address matcher,
        ClearingHouseBase.Order memory buy,
        ClearingHouseBase.Order memory sell,
        int256 q,
        int256 p
    ) internal {
        bytes memory bs = signFor(address(house), buy);
        bytes memory ss = signFor(address(house), sell);
        vm.prank(matcher);
        house.trade(buy, bs, sell, ss, q, p);
    }

    /// @dev Two orders exactly at (q, p), signed and matched by `matcher`.
    function signedTrade(ClearingHouse house, address matcher, uint256 buyer, uint256 seller, uint256 id, int256 q, int256 p)
        internal
    {
        matchOrders(house, matcher, newOrder(buyer, id, q, p), newOrder(seller, id, -q, p), q, p);
    }
}
