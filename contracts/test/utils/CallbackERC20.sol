// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @notice What a holder registers to be called on its token movements (ERC-777 style).
interface ITokenHooks {
    /// @dev Called on the sender before its balance moves.
    function tokensToSend(address operator, address from, address to, uint256 amount) external;
    /// @dev Called on the recipient after its balance moved.
    function tokensReceived(address operator, address from, address to, uint256 amount) external;
}

/// @title CallbackERC20
/// @notice An honest ERC-20 (same interface and errors as MockERC20) that calls its holders
/// back, as ERC-777 (tokensToSend / tokensReceived) and ERC-1363-like tokens do: the classic
/// vector for re-entering a protocol in the middle of a token transfer. Holders opt in with
/// `setHook`. Test-only.
contract CallbackERC20 {
    string public name;
    string public symbol;
    uint8 public immutable decimals;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    mapping(address => address) public hookOf;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error InsufficientTokenBalance(address from, uint256 balance, uint256 needed);
    error InsufficientAllowance(address owner, address spender, uint256 allowance, uint256 needed);

    constructor(string memory name_, string memory symbol_, uint8 decimals_) {
        name = name_;
        symbol = symbol_;
        decimals = decimals_;
    }

    function setHook(address hook) external {
        hookOf[msg.sender] = hook;
    }

    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        emit Approval(msg.sender, spender, amount);
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < amount) revert InsufficientAllowance(from, msg.sender, allowed, amount);
            allowance[from][msg.sender] = allowed - amount;
        }
        _move(from, to, amount);
        return true;
    }

    function _move(address from, address to, uint256 amount) private {
        address before = hookOf[from];
        if (before != address(0)) ITokenHooks(before).tokensToSend(msg.sender, from, to, amount);
        uint256 bal = balanceOf[from];
        if (bal < amount) revert InsufficientTokenBalance(from, bal, amount);
        unchecked {
            balanceOf[from] = bal - amount;
        }
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
        address afterHook = hookOf[to];
        if (afterHook != address(0)) ITokenHooks(afterHook).tokensReceived(msg.sender, from, to, amount);
    }
}
