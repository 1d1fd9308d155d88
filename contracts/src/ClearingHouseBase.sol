// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";
import {IClearingHouseEvents, IClearingHouseErrors} from "./interfaces/IClearingHouse.sol";
import {MarginVerifier} from "./MarginVerifier.sol";
import {IERC20} from "./interfaces/IERC20.sol";
import {PortfolioMargin} from "./margin/PortfolioMargin.sol";

/// @title ClearingHouseBase
/// @notice Constants, storage layout and role checks shared by ClearingHouse and the
/// governance module it delegates to (ClearingHouseAdmin): one layout, two code bodies, so the
/// clearing house fits EIP-170. See ClearingHouse.sol for the protocol's rules.
abstract contract ClearingHouseBase is IClearingHouseEvents, IClearingHouseErrors {
    int256 internal constant WAD = 1e18;
    int256 public constant LOT = 1e8;
    int256 public constant TICK = 1e10;
    int256 public constant MAX_QUANTITY = 1e30;
    int256 public constant MAX_PRICE = 1e30;
    /// @notice Positions per account: the full check of 40 options fits the stated ceiling
    /// (contracts/test/ClearingHouseGas.t.sol measures it at the bound).
    uint256 public constant MAX_POSITIONS = 40;
    int256 public constant MAX_PENALTY_RATE = 0.5e18;
    int256 public constant MAX_RATE = 0.5e18;
    uint8 internal constant NO_UNDERLYING = type(uint8).max;
    int256 internal constant MIN_PRICE_BAND = 0.001e18;
    int256 internal constant MAX_PRICE_BAND = 0.5e18;
    /// @notice Funding is paid at most once per interval (pokeFunding), at most
    /// fundingCap x spot per contract, and governance can set the cap to MAX_FUNDING_CAP at most.
    uint256 public constant FUNDING_INTERVAL = 1 hours;
    int256 public constant MAX_FUNDING_CAP = 0.01e18;
    /// @dev Bits of an instrument's word that are zero exactly for a future without expiry
    /// (kind, bits 8-15, and expiry, bits 32-71): a perpetual, for a listed instrument.
    uint256 internal constant PERP_MASK = (0xff << 8) | (((1 << 40) - 1) << 32);

    bytes32 internal constant _ORDER_TYPEHASH = keccak256(
        "Order(uint256 account,uint256 instrument,int256 quantity,int256 limitPrice,uint256 nonce,uint64 deadline)"
    );
    bytes32 private constant _DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");

    bytes32 public constant GUARDIAN = "GUARDIAN";
    bytes32 public constant MATCHER = "MATCHER";
    bytes32 public constant RISK_OPERATOR = "RISK_OPERATOR";

    /// One storage word: the fields take bits 0-175 (expiry < 2^40, strike <= MAX_PRICE <
    /// 2^104); bits 176-255 hold the backstop's book in the instrument (`_bookOf`), which no
    /// field and no getter sees.
    struct Instrument {
        uint8 underlying;
        uint8 kind; // 0 future, 1 call, 2 put
        bool listed;
        bool settled;
        uint40 expiry; // 0: perpetual future
        uint104 strike; // options only
    }
    /// @dev The backstop's book is keyed by instrument: its quantity in an instrument lives in
    /// the instrument's word, as an int80 number of LOTs in bits 176-255 (|q| <= MAX_QUANTITY =
    /// 1e22 lots < 2^79). Every check of a portfolio reads the instrument's word anyway, so a
    /// hand-over to the backstop writes a warm slot instead of a cold per-position one. The
    /// backstop's position list then holds one entry per instrument it holds, `instrument <<
    /// 128` with a zero quantity part (a zero quantity never occurs in a position slot: a
    /// position at zero is removed), meaning "the quantity is the instrument's book". The
    /// entry exists exactly when the book is non-zero, and only the current backstop has such
    /// entries (setBackstop turns the former backstop's entries into ordinary slots).
    uint256 internal constant BOOK_SHIFT = 176;
    uint256 internal constant FIELDS_MASK = (1 << BOOK_SHIFT) - 1;

    struct UnderlyingConfig {
        AggregatorV3Interface priceFeed;
        uint32 maxAge;
        uint32 liquidationMaxAge;
        AggregatorV3Interface volFeed;
    }

    struct AssetConfig {
        address token;
        uint8 decimals;
        uint8 underlying; // NO_UNDERLYING for a stablecoin (mirrors RiskParams.assets)
        uint64 haircut; // mirrors RiskParams.assets[i].haircut
        uint64 scale; // 10 ** (18 - decimals)
    }

    struct AccountState {
        uint64 nonce;
        uint64 flaggedAt; // 0: not flagged
    }

    struct LiquidationConfig {
        uint64 penaltyRate; // WAD, x maintenance requirement x fraction
        uint64 bountyShare; // WAD, x penalty
        uint32 gracePeriod; // seconds a flagged account has to cure
        uint128 minBounty; // WAD of asset 0
        uint128 maxBounty;
    }

    /// @notice An order as its account's owner (or an operator) signs it (EIP-712, see
    /// _hashOrder). quantity: > 0 buy, < 0 sell; limitPrice: a buy's highest price, a sell's
    /// lowest; nonce: chosen by the signer, cancels by (account, nonce); valid while
    /// block.timestamp <= deadline.
    struct Order {
        uint256 account;
        uint256 instrument;
        int256 quantity;
        int256 limitPrice;
        uint256 nonce;
        uint64 deadline;
    }

    struct RiskBounds {
        int256 minRange;
        int256 maxRange;
        int256 minVolShift;
        int256 maxVolShift;
    }

    /// @dev Set while tokens are pulled in (EIP-1153 transient storage: gone after the call).
    /// `_pull` credits the balance difference around transferFrom; a token that calls the
    /// sender back (ERC-777 tokensToSend) would otherwise let a nested deposit's tokens be
    /// counted twice, by the nested call and again by the outer one.
    bool internal transient _pulling;

    MarginVerifier public immutable verifier;
    address public owner;
    bool public paused;
    uint256 public backstop; // account id; 0 = unset
    int256 public rate; // risk-free rate of the option model
    address public riskParamsPointer; // code = 0x00 ++ abi.encode(RiskParams)
    uint256 public tradeCount;
    uint256 public instrumentCount;
    // The insurance fund, the unclaimed bounties and each liquidator's bounty are stored plus
    // one: the first two from construction, a liquidator's from its first bounty, so that a
    // liquidation's penalty never writes a zero slot (22,100 gas cold) after the first time, even
    // when the fund or a balance is back to zero. The getters below return the amounts. The
    // fund and the total share one slot (a penalty writes both: one cold slot, not two); int128
    // holds 1.7e20 units of asset 0, and every write is checked (`_toInt128`, checked sums).
    int128 internal _insuranceFundPlusOne;
    int128 internal _totalBountiesPlusOne;
    int256 public totalSocialisedLoss;
    LiquidationConfig public liquidationConfig;

    UnderlyingConfig[] internal _underlyings;
    AssetConfig[] internal _assets;
    mapping(bytes32 => mapping(address => bool)) public hasRole;
    mapping(uint256 => RiskBounds) public riskBounds;
    mapping(uint256 => Instrument) public instruments;
    mapping(uint256 => int256) public settlementPrice;
    mapping(uint256 => AccountState) public accountState;
    mapping(uint256 => mapping(address => bool)) public isOperator;
    mapping(uint256 => mapping(uint256 => int256)) public balanceOf; // account => asset => WAD
    mapping(address => int256) internal _bountiesPlusOne; // 0: never credited
    /// @dev Positions: packed (instrument << 128 | uint128(int128 quantity)), one slot each.
    mapping(uint256 => uint256[]) internal _positions;
    mapping(uint256 => mapping(uint256 => uint256)) internal _positionIndex; // index + 1
    /// @dev Signed orders (internal: their getters live in ClearingHouseAdmin, off the size-bound
    /// clearing house). Magnitude filled per order digest; cancelled (account, nonce) pairs.
    int256 internal _priceBand;
    mapping(bytes32 => uint256) internal _orderFilled;
    mapping(uint256 => mapping(uint256 => bool)) internal _orderCancelled;

    // ------------------------------------------------------------------ funding (perpetuals)
    // A perpetual is a listed future with expiry 0. Its funding index is the cumulative cash a
    // long of one contract (1e18) has paid since listing (WAD of asset 0, a multiple of TICK,
    // so every payment q * dIndex / 1e18 is exact on the LOT grid). Storage below this line
    // is appended after every earlier slot (the layout above is unchanged).
    /// @dev The funding cap per interval, WAD fraction of spot (<= MAX_FUNDING_CAP).
    int256 internal _fundingCap;
    /// @dev instrument => cumulative funding index (WAD per contract, a multiple of TICK).
    mapping(uint256 => int256) internal _fundingIndex;
    /// @dev instrument => the funding clock, one word: last poke (bits 0-39), last trade
    /// (40-79), last trade price in TICKs (80-151), sum of price x seconds since the last poke
    /// in TICK-seconds (152-255). See ClearingHouse._recordFundingPrice and pokeFunding.
    mapping(uint256 => uint256) internal _fundingClock;
    /// @dev account => instrument => the funding index the account's position last settled at.
    mapping(uint256 => mapping(uint256 => int256)) internal _fundingIndexAt;

    // ---- recalibration (ClearingHouseAdmin's "recalibration" block): the risk operator's
    // queue of grid updates behind a timelock, and the change limits they are checked against.
    /// @notice Owner-set: `delay` seconds between queue and execution; `maxStep` and
    /// `maxDailyStep` bound the relative change (WAD) of an underlying's price range and vol
    /// shift base per execution and per UTC calendar day.
    struct RecalibrationConfig {
        uint32 delay;
        uint64 maxStep;
        uint64 maxDailyStep;
    }

    /// @dev state: 0 never queued, 1 queued, 2 executed, 3 cancelled.
    struct QueuedRecalibration {
        bytes32 proposalHash; // keccak256 of the canonical proposal bytes
        uint64 eta; // earliest execution time
        uint8 state;
    }

    /// @dev An underlying's price range, vol shift base and FHS scale as they were before the
    /// first recalibration executed on UTC day `day` (the per-day limit's reference). int72
    /// holds the model's bounds (0.9, 5 and 10 WAD < 2^71): one slot.
    struct RecalibrationDay {
        uint32 day;
        int72 priceRange;
        int72 volShiftBase;
        int72 fhsScale;
    }

    /// @notice One underlying's data source: its price feed (must be the configured one) and
    /// the window of round ids read.
    struct RecalibrationSource {
        address feed;
        uint80 firstRound;
        uint80 lastRound;
    }

    /// @notice A recalibration proposal; its canonical encoding is abi.encode(Recalibration)
    /// (margin/risk/recalibration.py writes the same bytes). Only priceRanges, volShiftBases
    /// and fhsScales change the parameters; the rest names the data, the rule and the
    /// estimates so an auditor can recompute the proposal from the chain (`keeper replay`).
    struct Recalibration {
        RecalibrationSource[] sources; // one per underlying
        uint64 interval; // sampling interval of the rounds, seconds
        uint64 asOf; // min over the sources of lastRound's updatedAt: the end of the sample
        uint256 lambda; // EWMA decay, WAD
        uint256 kSigma; // the rule: price range target = kSigma x vol x sqrt(horizon / year)
        uint64 horizon; // seconds
        uint256 volShiftPerVol; // the rule: vol shift base target = volShiftPerVol x vol
        uint256[] vols; // EWMA volatility per underlying, WAD
        int256[] priceRanges;
        int256[] volShiftBases;
        int256[] correlations; // upper triangle, row-major
        // The historical set's filtered-historical-simulation scale: one per underlying when
        // the parameters carry a historical set, both empty when they do not (S = 0).
        uint256[] refVols; // the set's reference volatility per underlying (annual, WAD)
        int256[] fhsScales; // next historical.fhsScale: ceil(vols[u] / refVols[u])
    }

    // Internal: their getters live in ClearingHouseAdmin, off the size-bound clearing house.
    RecalibrationConfig internal _recalibrationConfig;
    uint256 internal _recalibrationCount; // ids are 1..count
    uint64 internal _lastRecalibrationAsOf; // asOf of the last executed proposal
    mapping(uint256 => QueuedRecalibration) internal _queuedRecalibration;
    mapping(uint256 => RecalibrationDay) internal _recalibrationDay; // per underlying

    // The EIP-712 domain separator of the contract being constructed, valid while this code
    // runs at that address on that chain (ClearingHouseAdmin runs it for the clearing house by
    // DELEGATECALL, and a fork changes the chain id: both recompute).
    address private immutable _cachedThis;
    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    // Modifiers call functions so their code exists once (the contract is size-bound).
    modifier onlyOwner() {
        _onlyOwner();
        _;
    }

    modifier onlyRole(bytes32 role) {
        _onlyRole(role);
        _;
    }

    modifier whenNotPaused() {
        _whenNotPaused();
        _;
    }

    function _onlyOwner() internal view {
        if (msg.sender != owner) revert NotOwner(msg.sender);
    }

    function _onlyRole(bytes32 role) internal view {
        if (!hasRole[role][msg.sender]) {
            if (role == MATCHER) revert NotMatcher(msg.sender);
            if (role == GUARDIAN) revert NotGuardian(msg.sender);
            revert NotRiskOperator(msg.sender);
        }
    }

    function _whenNotPaused() internal view {
        if (paused) revert ProtocolPaused();
    }

    constructor(MarginVerifier verifier_) {
        verifier = verifier_;
        _cachedThis = address(this);
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    /// @notice The insurance fund (WAD of asset 0).
    function insuranceFund() external view returns (int256) {
        return _insuranceFundPlusOne - 1;
    }

    /// @notice The bounties credited and not yet claimed, all liquidators (WAD of asset 0).
    function totalBounties() external view returns (int256) {
        return _totalBountiesPlusOne - 1;
    }

    /// @dev A non-negative amount as int128 for the insurance fund or totalBounties (reverts
    /// beyond int128, never truncates).
    function _toInt128(int256 x) internal pure returns (int128) {
        if (x > type(int128).max) revert AmountTooLarge(uint256(x));
        // forge-lint: disable-next-line(unsafe-typecast)
        return int128(x); // 0 <= x <= int128 max
    }

    /// @notice A liquidator's unclaimed bounty (WAD of asset 0).
    function bounties(address liquidator) external view returns (int256) {
        int256 s = _bountiesPlusOne[liquidator];
        return s == 0 ? int256(0) : s - 1;
    }

    /// @dev The backstop's quantity in an instrument, from the instrument's word `w`.
    function _bookOf(uint256 w) internal pure returns (int256) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return (int256(w) >> BOOK_SHIFT) * LOT; // arithmetic shift: the int80 in the top bits
    }

    /// @dev The quantity of a position slot: its low 128 bits, or for a backstop's entry (low
    /// bits zero) the book in the instrument's word `w`.
    function _quantityOf(uint256 slot, uint256 w) internal pure returns (int256 q) {
        // forge-lint: disable-next-line(unsafe-typecast)
        q = int256(int128(uint128(slot)));
        if (q == 0) q = _bookOf(w);
    }

    /// @dev The raw storage word of an instrument (fields and the backstop's book).
    function _instrumentWord(uint256 id) internal view returns (uint256 w) {
        Instrument storage ins = instruments[id];
        assembly ("memory-safe") {
            w := sload(ins.slot)
        }
    }

    /// @dev Writes the backstop's book `q` (a multiple of LOT, |q| <= MAX_QUANTITY) into the
    /// instrument's word `w` (as read), keeping the fields.
    function _writeBook(uint256 id, uint256 w, int256 q) internal {
        // forge-lint: disable-next-line(unsafe-typecast)
        uint256 v = (w & FIELDS_MASK) | (uint256(q / LOT) << BOOK_SHIFT);
        Instrument storage ins = instruments[id];
        assembly ("memory-safe") {
            sstore(ins.slot, v)
        }
    }

    /// @dev Settles the funding of `account`'s position of quantity `q` in the perpetual `id`:
    /// returns the cash it receives (negative: pays), -(q * (index - index at last settlement)) /
    /// 1e18, exact (q a multiple of LOT, the indices multiples of TICK), and moves its index to
    /// the current one. q = 0 (a new position) only moves the index.
    function _settleFundingAt(uint256 account, uint256 id, int256 q) internal returns (int256 cash) {
        int256 index = _fundingIndex[id];
        int256 last = _fundingIndexAt[account][id];
        if (index == last) return 0;
        _fundingIndexAt[account][id] = index;
        cash = -(q * (index - last)) / WAD;
    }

    function _domainSeparator() internal view returns (bytes32) {
        if (address(this) == _cachedThis && block.chainid == _cachedChainId) return _cachedDomainSeparator;
        return _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(_DOMAIN_TYPEHASH, keccak256("ClearingHouse"), keccak256("1"), block.chainid, address(this))
        );
    }

    /// @dev The EIP-712 digest of an order: every field is a static type, so the struct hash is
    /// keccak256(typehash ++ the six fields as 32-byte words).
    function _hashOrder(Order calldata o) internal view returns (bytes32) {
        return keccak256(abi.encodePacked(hex"1901", _domainSeparator(), keccak256(abi.encode(_ORDER_TYPEHASH, o))));
    }

    function _toWad(AssetConfig memory a, uint256 amount) internal pure returns (int256) {
        if (amount == 0) revert ZeroAmount();
        if (amount > uint256(PortfolioMargin.MAX_COLLATERAL) / a.scale) revert AmountTooLarge(amount);
        return int256(amount * a.scale);
    }

    function _pull(AssetConfig memory a, uint256 amount) internal returns (int256) {
        _toWad(a, amount); // bounds
        if (_pulling) revert ReentrantTransfer();
        _pulling = true;
        uint256 before = IERC20(a.token).balanceOf(address(this));
        if (!IERC20(a.token).transferFrom(msg.sender, address(this), amount)) revert TokenTransferFailed(a.token);
        uint256 got = IERC20(a.token).balanceOf(address(this)) - before;
        _pulling = false;
        if (got == 0) revert ZeroAmount();
        return int256(got * a.scale);
    }

    /// @notice The risk parameters, abi.encode(RiskParams).
    function riskParams() public view returns (bytes memory data) {
        address ptr = riskParamsPointer;
        uint256 size = ptr.code.length;
        if (size == 0) return data;
        data = new bytes(size - 1);
        assembly ("memory-safe") {
            extcodecopy(ptr, add(data, 0x20), 1, sub(size, 1))
        }
    }

    /// @dev Validates `data` = abi.encode(RiskParams) with the verifier against the configured
    /// underlyings and assets, stores it as a blob and points to it (the governance and
    /// recalibration modules' one way to change the parameters).
    function _storeParams(bytes memory data) internal {
        (uint256 nU, uint256[] memory assetU, int256[] memory haircuts) = verifier.validateParams(data);
        uint256 nA = assetU.length;
        if (nU != _underlyings.length) revert ConfigMismatch(3, _underlyings.length, nU);
        if (nA != _assets.length) revert ConfigMismatch(4, _assets.length, nA);
        if (nA == 0 || assetU[0] != PortfolioMargin.STABLE) revert ConfigMismatch(5, 0, nA);
        for (uint256 k; k < nA; ++k) {
            // forge-lint: disable-next-line(unsafe-typecast)
            _assets[k].underlying = assetU[k] == PortfolioMargin.STABLE ? NO_UNDERLYING : uint8(assetU[k]);
            // forge-lint: disable-next-line(unsafe-typecast)
            _assets[k].haircut = uint64(uint256(haircuts[k]));
        }
        address ptr = _writeBlob(data);
        riskParamsPointer = ptr;
        emit RiskParamsSet(ptr, keccak256(data));
    }

    /// @dev Deploys a contract whose code is 0x00 ++ data (a STOP first: it cannot be called).
    function _writeBlob(bytes memory data) internal returns (address ptr) {
        bytes memory init = abi.encodePacked(hex"61", uint16(data.length + 1), hex"80600a3d393df300", data);
        assembly ("memory-safe") {
            ptr := create(0, add(init, 0x20), mload(init))
        }
        if (ptr == address(0)) revert ConfigMismatch(6, 0, data.length);
    }
}
