// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {TestBase} from "./utils/TestBase.sol";
import {Multicall3} from "../src/util/Multicall3.sol";

contract Target {
    error Nope(uint256 x);

    function echo(uint256 x) external pure returns (uint256) {
        if (x == 13) revert Nope(x);
        return x * 2;
    }
}

contract Multicall3Test is TestBase {
    Multicall3 mc;
    Target t;

    function setUp() public {
        mc = new Multicall3();
        t = new Target();
    }

    function _call(uint256 x, bool allowFailure) private view returns (Multicall3.Call3 memory) {
        return Multicall3.Call3(address(t), allowFailure, abi.encodeCall(Target.echo, (x)));
    }

    function test_aggregate3ReturnsEachResultInOrder() public {
        Multicall3.Call3[] memory calls = new Multicall3.Call3[](3);
        calls[0] = _call(1, false);
        calls[1] = _call(13, true);
        calls[2] = _call(5, false);
        Multicall3.Result[] memory r = mc.aggregate3(calls);
        assertEq(r.length, 3, "length");
        assertTrue(r[0].success, "ok 0");
        assertEq(abi.decode(r[0].returnData, (uint256)), 2, "value 0");
        assertTrue(!r[1].success, "failed 1");
        assertTrue(keccak256(r[1].returnData) == keccak256(abi.encodeWithSelector(Target.Nope.selector, uint256(13))), "revert data 1");
        assertEq(abi.decode(r[2].returnData, (uint256)), 10, "value 2");
    }

    function test_aggregate3RevertsOnDisallowedFailure() public {
        Multicall3.Call3[] memory calls = new Multicall3.Call3[](2);
        calls[0] = _call(1, false);
        calls[1] = _call(13, false);
        vm.expectRevert(abi.encodeWithSignature("Error(string)", "Multicall3: call failed"));
        mc.aggregate3(calls);
    }

    function test_blockGetters() public {
        vm.roll(100);
        vm.warp(12345);
        assertEq(mc.getBlockNumber(), 100, "number");
        assertEq(mc.getCurrentBlockTimestamp(), 12345, "timestamp");
        assertEq(mc.getChainId(), block.chainid, "chain id");
        assertTrue(mc.getLastBlockHash() == blockhash(99), "last hash");
        assertTrue(mc.getBlockHash(99) == blockhash(99), "hash");
    }
}
