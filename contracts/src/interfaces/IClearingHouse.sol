// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title Events and errors of the clearing house (the keeper-facing vocabulary).
/// @notice Amounts are signed WAD unless stated: collateral in units of the asset (18 decimals
/// whatever the token's), cash and prices in the settlement currency (asset 0, a stablecoin).
/// `nonce` is the account's state nonce after the change (see ClearingHouse.accountNonce).
interface IClearingHouseEvents {
    event Deposit(uint256 indexed account, uint256 indexed asset, address from, int256 amount, uint64 nonce);
    event Withdrawal(uint256 indexed account, uint256 indexed asset, address to, int256 amount, uint64 nonce);
    event CollateralTransfer(
        uint256 indexed from, uint256 indexed to, uint256 indexed asset, int256 amount, uint64 fromNonce, uint64 toNonce
    );
    event Trade(
        uint256 indexed tradeId,
        uint256 indexed buyer,
        uint256 indexed seller,
        uint256 instrument,
        int256 quantity,
        int256 price,
        uint64 buyerNonce,
        uint64 sellerNonce
    );
    event MarginCall(
        uint256 indexed account, address indexed flagger, uint64 nonce, int256 equity, int256 initialMargin, uint256 deadline
    );
    /// @notice equity and initialMargin are 0 when the flag lapses on an account left without
    /// positions and debt by a trade (healthy without a check).
    event MarginCallCleared(uint256 indexed account, int256 equity, int256 initialMargin);
    /// @notice One liquidation, with the positions handed to the backstop: `taken[i]` packs an
    /// instrument and a quantity as the position slots do, `(instrument << 128) |
    /// uint128(int128(quantity))` (quantity as seen by the liquidated account: it loses
    /// `quantity`, the backstop gains it), moved at `prices[i]`.
    event Liquidation(
        uint256 indexed account,
        address indexed liquidator,
        uint64 nonce,
        int256 fraction,
        int256 equity,
        int256 requirement,
        int256 penalty,
        int256 bounty,
        int256 toInsurance,
        uint256[] taken,
        int256[] prices
    );
    event BadDebtResolved(uint256 indexed account, int256 debt, int256 fromInsurance, int256 socialised);
    event CollateralSeized(uint256 indexed account, uint256 indexed asset, int256 amount, int256 paid);
    event InstrumentListed(uint256 indexed instrument, uint256 underlying, uint8 kind, int256 strike, uint64 expiry);
    event InstrumentSettled(uint256 indexed instrument, int256 price);
    event PositionSettled(uint256 indexed account, uint256 indexed instrument, int256 quantity, int256 cash, uint64 nonce);
    event InsuranceDeposit(address indexed from, int256 amount, int256 fund);
    event BountyCredited(address indexed liquidator, int256 amount);
    event BountyClaimed(address indexed liquidator, int256 amount);
    event OperatorSet(uint256 indexed account, address indexed operator, bool allowed);
    event RoleSet(bytes32 indexed role, address indexed who, bool allowed);
    event OwnerChanged(address indexed owner);
    event BackstopSet(uint256 indexed account);
    event UnderlyingConfigured(uint256 indexed underlying, address priceFeed, address volFeed, uint32 maxAge, uint32 liquidationMaxAge);
    event CollateralConfigured(uint256 indexed asset, address token, uint8 decimals);
    event RiskParamsSet(address pointer, bytes32 paramsHash);
    event RiskBoundsSet(uint256 indexed underlying, int256 minRange, int256 maxRange, int256 minVolShift, int256 maxVolShift);
    event RiskAdjusted(uint256 indexed underlying, int256 priceRange, int256 volShiftBase, address operator);
    event LiquidationConfigSet(int256 penaltyRate, int256 bountyShare, int256 minBounty, int256 maxBounty, uint32 gracePeriod);
    event RateSet(int256 rate);
    event PausedSet(bool paused, address by);
    /// @notice A signed order was (partly) filled: `quantity` is this fill as seen by the
    /// account (> 0 bought, < 0 sold), `filled` the order's total filled magnitude after it.
    event OrderFilled(bytes32 indexed digest, uint256 indexed account, int256 quantity, uint256 filled);
    /// @notice Every order of `account` signed with `nonce` can no longer be filled.
    event OrderCancelled(uint256 indexed account, uint256 nonce);
    /// @notice Trades settle only within `band` (WAD fraction of spot) of the model mark.
    event PriceBandSet(int256 band);
    /// @notice A perpetual's funding index advanced by `delta` (WAD per contract, longs pay a
    /// positive delta) from the mark `mark` (time-weighted trade price since the last poke, 0
    /// with no trade yet: no funding) and the oracle index `spot`.
    event FundingPoked(uint256 indexed instrument, int256 mark, int256 spot, int256 delta, int256 index);
    /// @notice Accrued funding realised into the account's settlement balance (received: > 0).
    event FundingSettled(uint256 indexed account, int256 amount);
    event FundingCapSet(int256 cap);
    /// @notice The risk operator queued recalibration `id`: `proposal` is its canonical
    /// encoding (abi.encode(Recalibration): data sources, estimates, new grid), `proposalHash`
    /// its keccak256; executable from `eta`.
    event RecalibrationQueued(uint256 indexed id, bytes32 indexed proposalHash, uint64 eta, address operator, bytes proposal);
    event RecalibrationExecuted(uint256 indexed id, bytes32 indexed proposalHash, address executor);
    event RecalibrationCancelled(uint256 indexed id, address guardian);
    event RecalibrationConfigSet(uint32 delay, uint64 maxStep, uint64 maxDailyStep);
}

interface IClearingHouseErrors {
    error NotOwner(address caller);
    error NotGuardian(address caller);
    error NotMatcher(address caller);
    error NotRiskOperator(address caller);
    error NotAuthorized(uint256 account, address caller);
    error ProtocolPaused();
    error InvalidSubAccount(uint256 sub);
    error UnknownAsset(uint256 asset);
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error InsufficientBalance(uint256 account, uint256 asset, int256 balance, int256 amount);
    error TokenTransferFailed(address token);
    error UnknownInstrument(uint256 instrument);
    error InvalidInstrument(uint256 field);
    error InstrumentExpired(uint256 instrument, uint64 expiry);
    error InstrumentNotExpired(uint256 instrument, uint64 expiry);
    error InstrumentAlreadySettled(uint256 instrument);
    error PriceBeforeExpiry(uint256 instrument, uint256 updatedAt, uint64 expiry);
    /// @notice The named round's predecessor was also published at or after expiry: the
    /// settlement price is the first round at or after expiry, not one the caller picks.
    error NotFirstRoundAfterExpiry(uint256 instrument, uint80 roundId, uint256 previousUpdatedAt);
    /// @notice The named round's predecessor does not exist and the round is not the first of
    /// its phase, so it cannot be shown to be the first round at or after expiry.
    error PreviousRoundMissing(uint256 instrument, uint80 roundId);
    error InvalidQuantity(int256 quantity);
    error InvalidPrice(int256 price);
    error SelfTrade(uint256 account);
    error PositionLimitExceeded(uint256 account, uint256 count, uint256 max);
    error InsufficientMargin(uint256 account, int256 equity, int256 initialMargin);
    error StaleAccountNonce(uint256 account, uint64 expected, uint64 actual);
    error AccountNotBelowInitialMargin(uint256 account, int256 equity, int256 initialMargin);
    error AlreadyFlagged(uint256 account, uint64 flaggedAt);
    error NotFlagged(uint256 account);
    error NotLiquidatable(uint256 account, int256 equity, int256 requirement, int256 initialMargin);
    error InvalidFraction(int256 fraction);
    error NothingToLiquidate(uint256 account);
    error BackstopAccount(uint256 account);
    error BackstopNotSet();
    /// @notice A new backstop account must hold no position and no balance of any asset.
    error BackstopNotEmpty(uint256 account);
    /// @notice A book too large for the model's check (more than MAX_POSITIONS live positions)
    /// may only strictly reduce a position at the mark or better for itself.
    error UnwindOnly(uint256 account, uint256 positions);
    error HasOpenPositions(uint256 account, uint256 count);
    /// @notice Only an account whose model equity is below zero has bad debt (a debt backed by
    /// collateral is a loan, governed by the margin check).
    error NoBadDebt(uint256 account, int256 equity);
    error NothingToSettle(uint256 account);
    error NotSameOwner(uint256 from, uint256 to);
    error ConfigMismatch(uint256 field, uint256 expected, uint256 got);
    error ParamOutOfBounds(uint256 field, int256 value, int256 min, int256 max);
    error UnderlyingNotConfigured(uint256 underlying);
    error NothingToClaim(address liquidator);
    error ReentrantTransfer();
    /// @notice Not a 65-byte r||s||v signature with v 27/28 and low s, or it recovers no address.
    error InvalidSignature(uint256 account);
    /// @notice The order was signed by neither the account's owner nor one of its operators.
    error UnauthorizedSigner(uint256 account, address signer);
    error OrderExpired(uint256 account, uint256 nonce, uint64 deadline);
    error OrderIsCancelled(uint256 account, uint256 nonce);
    /// @notice The fill would take the order's filled magnitude to `filled`, above `quantity` signed.
    error OrderOverfilled(bytes32 digest, uint256 filled, uint256 quantity);
    error LimitPriceViolated(uint256 account, int256 price, int256 limitPrice);
    /// @notice The two orders name different instruments.
    error OrderMismatch(uint256 buyInstrument, uint256 sellInstrument);
    /// @notice A buy order must have quantity in (0, MAX_QUANTITY], a sell order in [-MAX_QUANTITY, 0).
    error InvalidOrderQuantity(uint256 account, int256 quantity);
    /// @notice |price - mark| exceeds `band` (= priceBand x spot).
    error PriceOutsideBand(int256 price, int256 mark, int256 band);
    /// @notice Funding exists only for perpetuals (listed futures without expiry).
    error NotPerpetual(uint256 instrument);
    /// @notice A perpetual's funding can be poked once per FUNDING_INTERVAL.
    error FundingTooEarly(uint256 instrument, uint256 nextPokeAt);
    /// @notice No recalibration config set yet (delay 0): nothing can be queued.
    error RecalibrationDisabled();
    /// @notice Recalibration `id` is not queued (never, already executed, or cancelled).
    error RecalibrationNotQueued(uint256 id, uint8 state);
    error RecalibrationTooEarly(uint256 id, uint64 eta);
    /// @notice Past eta + RECALIBRATION_GRACE: stale, queue a new one.
    error RecalibrationExpired(uint256 id, uint256 deadline);
    /// @notice The bytes given at execution are not the queued proposal's.
    error RecalibrationHashMismatch(uint256 id, bytes32 queued, bytes32 given);
    /// @notice The proposal bytes are not abi.encode of the decoded proposal (one proposal,
    /// one encoding, one hash).
    error RecalibrationNotCanonical();
    /// @notice field: 0 sources, 1 vols, 2 price ranges, 3 vol shift bases, 4 correlations,
    /// 5 refVols, 6 fhsScales (expected: one per underlying with a historical set, else none).
    error RecalibrationShape(uint256 field, uint256 expected, uint256 got);
    /// @notice Source of underlying `u`: not its configured price feed, or an empty window.
    error RecalibrationBadSource(uint256 u, address feed, uint80 firstRound, uint80 lastRound);
    /// @notice asOf must be the sources' end (min updatedAt of the last rounds), later than
    /// the last executed proposal's.
    error RecalibrationAsOf(uint64 asOf, uint256 expected, uint64 lastExecuted);
    /// @notice field 0 price range, 1 vol shift base: outside governance's riskBounds(u);
    /// field 2 FHS scale: outside the model's [0, MAX_FHS_SCALE].
    error RecalibrationOutOfBounds(uint256 u, uint256 field, int256 value, int256 min, int256 max);
    /// @notice field 0/1/2: more than maxStep from the current value.
    error RecalibrationStepTooLarge(uint256 u, uint256 field, int256 value, int256 min, int256 max);
    /// @notice field 0/1/2: more than maxDailyStep from the value before today's first execution.
    error RecalibrationDailyLimit(uint256 u, uint256 field, int256 value, int256 min, int256 max);
}
