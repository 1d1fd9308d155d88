// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ClearingHouseFixture} from "./utils/ClearingHouseFixture.sol";
import {CallbackERC20, ITokenHooks} from "./utils/CallbackERC20.sol";
import {ClearingHouse} from "../src/ClearingHouse.sol";
import {ClearingHouseAdmin} from "../src/ClearingHouseAdmin.sol";
import {IClearingHouseErrors} from "../src/interfaces/IClearingHouse.sol";
import {MarginResult} from "../src/margin/PortfolioMargin.sol";

/// @notice A holder of the settlement token that re-enters the clearing house from the token's
/// callbacks, once, and records how the nested call ended.
contract Reenterer is ITokenHooks {
    enum Mode {
        None,
        DepositInDeposit,
        InsuranceInDeposit,
        WithdrawInWithdraw,
        ClaimInClaim
    }

    ClearingHouse internal immutable ch;
    address internal immutable token;
    uint256 public immutable account;
    Mode internal mode;
    uint256 internal innerAmount;
    bool public innerCalled;
    bool public innerOk;
    bytes public innerRevert;

    constructor(ClearingHouse ch_, CallbackERC20 token_) {
        ch = ch_;
        token = address(token_);
        account = ch_.accountId(address(this), 0);
        token_.setHook(address(this));
        token_.approve(address(ch_), type(uint256).max);
    }

    function arm(Mode m, uint256 amount) external {
        mode = m;
        innerAmount = amount;
    }

    function deposit(uint256 amount) external {
        ch.deposit(account, 0, amount);
    }

    function withdraw(uint256 amount) external {
        ch.withdraw(account, 0, amount);
    }

    function claim() external {
        ClearingHouseAdmin(address(ch)).claimBounty();
    }

    function liquidate(uint256 a, uint64 nonce, uint256[] calldata witness) external returns (int256) {
        return ch.liquidate(a, nonce, witness, 1e18);
    }

    function tokensToSend(address, address, address, uint256) external {
        if (msg.sender != token) return;
        if (mode == Mode.DepositInDeposit) _reenter(abi.encodeCall(ch.deposit, (account, 0, innerAmount)));
        if (mode == Mode.InsuranceInDeposit) _reenter(abi.encodeCall(ClearingHouseAdmin.depositInsurance, (innerAmount)));
    }

    function tokensReceived(address, address, address, uint256) external {
        if (msg.sender != token) return;
        if (mode == Mode.WithdrawInWithdraw) _reenter(abi.encodeCall(ch.withdraw, (account, 0, innerAmount)));
        if (mode == Mode.ClaimInClaim) _reenter(abi.encodeCall(ClearingHouseAdmin.claimBounty, ()));
    }

    function _reenter(bytes memory data) private {
        mode = Mode.None; // once
        innerCalled = true;
        (innerOk, innerRevert) = address(ch).call(data);
    }
}

/// @notice Re-entrancy through token callbacks: the settlement token calls its holders back
/// (ERC-777 style) before and after every balance move, and a holder re-enters deposit,
/// depositInsurance, withdraw and claimBounty from inside the transfer. Every case ends with
/// the accounting identity intact: tokens held x scale == balances + insurance fund + unclaimed
/// bounties, and nobody is credited more than arrived or paid more than was debited.
contract ClearingHouseReentrancyTest is ClearingHouseFixture {
    CallbackERC20 internal hooked;
    Reenterer internal eve;
    uint256 internal alice;
    uint256 internal bob;

    function settlementToken() internal override returns (address) {
        hooked = new CallbackERC20("Hooked USD", "hUSD", 6);
        return address(hooked);
    }

    function setUp() public override {
        super.setUp();
        alice = fund(ALICE, 0, 400e6);
        bob = fund(BOB, 0, 100_000e6);
        eve = new Reenterer(ch, hooked);
        hooked.mint(address(eve), 10_000e6);
    }

    function _identity() internal view {
        int256 sum = ch.balanceOf(bk, 0) + ch.balanceOf(alice, 0) + ch.balanceOf(bob, 0)
            + ch.balanceOf(eve.account(), 0);
        assertEq(heldWad(0), sum + ch.insuranceFund() + ch.totalBounties(), "tokens held == claims on them");
    }

    function _innerFailedWith(bytes4 selector) internal view {
        assertTrue(eve.innerCalled(), "the hook re-entered");
        assertTrue(!eve.innerOk(), "the nested call failed");
        bytes memory data = eve.innerRevert();
        assertTrue(data.length >= 4 && bytes4(data) == selector, "with the expected error");
    }

    function test_depositReenteredFromTheSendHookCreditsOnlyWhatArrived() public {
        uint256 before = hooked.balanceOf(address(eve));
        eve.arm(Reenterer.Mode.DepositInDeposit, 300e6);
        eve.deposit(500e6);
        uint256 sent = before - hooked.balanceOf(address(eve));
        assertEq(ch.balanceOf(eve.account(), 0), int256(sent) * 1e12, "credited == arrived");
        _innerFailedWith(IClearingHouseErrors.ReentrantTransfer.selector);
        assertEq(sent, 500e6, "only the outer deposit moved tokens");
        _identity();
    }

    function test_insuranceDepositReenteredFromADepositIsRefused() public {
        eve.arm(Reenterer.Mode.InsuranceInDeposit, 300e6);
        eve.deposit(500e6);
        _innerFailedWith(IClearingHouseErrors.ReentrantTransfer.selector);
        assertEq(ch.balanceOf(eve.account(), 0), 500e18, "credited == arrived");
        assertEq(ch.insuranceFund(), 0, "no insurance credited");
        _identity();
    }

    function test_withdrawReenteredFromTheReceiveHookPaysOnlyWhatIsDebited() public {
        eve.deposit(1_000e6);
        // Checks-effects-interactions: the nested withdraw sees the debited balance; it is a
        // withdrawal like any other, checked like any other.
        eve.arm(Reenterer.Mode.WithdrawInWithdraw, 300e6);
        eve.withdraw(500e6);
        assertTrue(eve.innerOk(), "nested withdraw of what is left is allowed");
        assertEq(ch.balanceOf(eve.account(), 0), 200e18, "both debited");
        assertEq(hooked.balanceOf(address(eve)), 10_000e6 - 1_000e6 + 800e6, "both paid, once");
        _identity();
        // A nested withdraw of more than is left fails its own margin check.
        eve.arm(Reenterer.Mode.WithdrawInWithdraw, 150e6);
        eve.withdraw(100e6);
        _innerFailedWith(IClearingHouseErrors.InsufficientMargin.selector);
        assertEq(ch.balanceOf(eve.account(), 0), 100e18, "only the outer one");
        _identity();
    }

    function test_claimBountyReenteredPaysOnce() public {
        doTrade(alice, bob, ethPerp, 1e18, 2000e18);
        setEth(1850e8);
        MarginResult memory r = fullCheckNow(alice);
        assertEq(uint256(r.state), 2, "below MM");
        int256 bounty = eve.liquidate(alice, nonceOf(alice), r.witness);
        assertTrue(bounty > 1e12, "a bounty worth claiming");
        eve.arm(Reenterer.Mode.ClaimInClaim, 0);
        uint256 before = hooked.balanceOf(address(eve));
        eve.claim();
        _innerFailedWith(IClearingHouseErrors.NothingToClaim.selector);
        uint256 paid = hooked.balanceOf(address(eve)) - before;
        assertEq(int256(paid) * 1e12 + ch.bounties(address(eve)), bounty, "paid once");
        _identity();
    }
}
