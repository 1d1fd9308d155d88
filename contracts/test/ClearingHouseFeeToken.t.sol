// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";

/// @notice A 6-decimal token that keeps 1% of every transferFrom (a fee-on-transfer token).
contract FeeOnTransferERC20 {
    uint8 public constant decimals = 6;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        balanceOf[msg.sender] -= amount;
        balanceOf[to] += amount;
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        if (allowance[from][msg.sender] != type(uint256).max) allowance[from][msg.sender] -= amount;
        uint256 fee = amount / 100;
        balanceOf[from] -= amount;
        balanceOf[to] += amount - fee;
        totalSupply -= fee;
        return true;
    }
}

/// @notice Deposits credit what arrives, not what was asked for: with a token that takes a fee
/// the clearing house's holdings still equal the sum of what it credited.
contract ClearingHouseFeeTokenTest is ClearingHouseFixture {
    FeeOnTransferERC20 internal feeToken;

    function settlementToken() internal override returns (address) {
        feeToken = new FeeOnTransferERC20();
        return address(feeToken);
    }

    function test_depositCreditsWhatArrives() public {
        uint256 held = feeToken.balanceOf(address(ch));
        uint256 alice = fund(ALICE, 0, 1000e6);
        assertEq(ch.balanceOf(alice, 0), 990e18, "credited 990 of the 1000 sent");
        assertEq(feeToken.balanceOf(address(ch)) - held, 990e6, "what arrived");
        int256 insuranceBefore = ch.insuranceFund();
        feeToken.mint(address(this), 100e6);
        feeToken.approve(address(ch), 100e6);
        adm.depositInsurance(100e6);
        assertEq(ch.insuranceFund() - insuranceBefore, 99e18, "insurance credited what arrived");
    }
}
