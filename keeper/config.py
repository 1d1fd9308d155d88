"""Keeper configuration: a TOML file, then environment overrides, validated into typed models.

Environment overrides
---------------------
``KEEPER__<SECTION>__<KEY>=value`` sets ``[section] key`` (case-insensitive, double underscore
between levels), e.g. ``KEEPER__RPC__URL=https://...``, ``KEEPER__FEES__BUMP_PERCENT=15``.
The value is parsed like a TOML value when it is one (``15``, ``true``, ``"text"``) and taken as
a plain string otherwise, then validated like the file. An override naming an unknown section or
key is an error (a typo must not be silently ignored). Overrides are applied after the file, so
a deployment can keep the file in version control and the credentials in the environment.

Amounts of ether (fees, profit) are integers of wei or strings with a unit: ``"30 gwei"``,
``"0.01 ether"``, ``"1500000000 wei"``; they are exact (``decimal``), never floats.

Errors
------
Every problem raises ``ConfigError`` naming the key (``fees.bump_percent: ...``). Error messages
never quote the offending value: a mistyped key may sit next to a secret in the same line.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from keeper.secrets import redact_url, register_url

ENV_PREFIX = "KEEPER__"
DEFAULT_STORE_URL = "sqlite:///var/keeper.db"

#: Largest config file accepted: a config is a few kB; a huge file is a mistake or an attack.
MAX_CONFIG_BYTES = 1 << 20

_UNITS = {"wei": 0, "gwei": 9, "ether": 18, "eth": 18}
_AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]+)?\s*$")


class ConfigError(ValueError):
    """The configuration is unusable; ``key`` is the dotted key at fault (or None)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class ClusterNeedsPostgres(ConfigError):
    """``[cluster] enabled`` with a store that is not PostgreSQL (the leases live in it)."""

    def __init__(self) -> None:
        super().__init__(
            "cluster mode needs a postgresql:// store URL (its leases live in the database)",
            "cluster.enabled",
        )


def parse_wei(value: object) -> int:
    """An amount in wei from an int or a ``"<decimal> <unit>"`` string (exact; no floats)."""
    if isinstance(value, (bool, float)):
        # A float cannot hold 0.1 ether exactly; refuse rather than round silently.
        raise ValueError("an amount must be an integer of wei or a string like '30 gwei'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("an amount cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("an amount must be an integer of wei or a string like '30 gwei'")
    match = _AMOUNT.match(value)
    if not match:
        raise ValueError("an amount must look like '30 gwei', '0.5 ether' or '1000 wei'")
    number, unit = match.group(1), (match.group(2) or "wei").lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown unit (use one of {', '.join(sorted(_UNITS))})")
    try:
        scaled = Decimal(number).scaleb(_UNITS[unit])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError("not a decimal number") from exc
    if scaled != scaled.to_integral_value():
        raise ValueError("an amount must be a whole number of wei")
    return int(scaled)


Wei = Annotated[int, BeforeValidator(parse_wei)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400 * 7)]


class _Section(BaseModel):
    # extra="forbid": an unknown key is a typo until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _check_url(value: str, schemes: tuple[str, ...]) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError("not a valid URL") from exc
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be a URL with scheme {' or '.join(schemes)} and a host")
    return value


class RpcConfig(_Section):
    url: str
    ws_url: str | None = None
    chain_id: int = Field(gt=0)
    timeout_seconds: PositiveSeconds = 10.0
    #: Retries of a read after a transport error, with exponential back-off. With
    #: ``fallback_urls``: rounds over every endpoint after the first round failed.
    max_retries: int = Field(default=3, ge=0, le=20)
    #: More HTTP endpoints of the same chain, tried in order when ``url`` fails or lags
    #: (keeper.chain.fallback); credentials in them are redacted like ``url``'s.
    fallback_urls: tuple[str, ...] = Field(default=(), max_length=16)
    #: Half-life of an endpoint's failure penalty: one failure takes it out of the healthy
    #: set for about this long (several failures for longer).
    unhealthy_seconds: PositiveSeconds = 30.0
    #: An endpoint whose head is more than this many blocks below another's is unhealthy.
    max_lag_blocks: int = Field(default=2, ge=0, le=1000)
    #: With ``fallback_urls``: a request still unanswered after this long is sent to the next
    #: endpoint too and the first good answer is used (a hanging endpoint costs this, not
    #: ``timeout_seconds``). At ``timeout_seconds`` or more, never.
    hedge_after_seconds: PositiveSeconds = 1.0

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        return _check_url(v, ("http", "https"))

    @field_validator("fallback_urls")
    @classmethod
    def _fallbacks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for u in v:
            _check_url(u, ("http", "https"))
        if len(set(v)) != len(v):
            raise ValueError("the same URL is listed twice")
        return v

    @field_validator("ws_url")
    @classmethod
    def _ws(cls, v: str | None) -> str | None:
        return None if v in (None, "") else _check_url(v, ("ws", "wss"))

    def __repr_args__(self) -> Any:
        # The URLs hold API keys: the model's repr shows them redacted.
        for name, value in super().__repr_args__():
            if name == "fallback_urls":
                yield name, tuple(redact_url(u) for u in value)
            else:
                yield name, redact_url(value) if name in ("url", "ws_url") and value else value


class RelayConfig(_Section):
    """A private transaction relay (Flashbots-Protect-style JSON-RPC) for liquidations: the
    signed transaction goes to the relay only, and to the public node when the relay has not
    had it included after ``fallback_after_blocks`` (or refuses it, or cannot be reached)."""

    #: The relay's JSON-RPC endpoint; an API key in it is treated like the RPC URL's.
    url: str
    #: ``eth_sendPrivateTransaction`` ({tx, maxBlockNumber, preferences}) or
    #: ``eth_sendRawTransaction`` (the raw transaction, as to a node) at the relay URL.
    method: Literal["eth_sendPrivateTransaction", "eth_sendRawTransaction"] = (
        "eth_sendPrivateTransaction"
    )
    #: Blocks the relay has to include a transaction before the same signed bytes (same nonce)
    #: are broadcast to the public node.
    fallback_after_blocks: int = Field(default=25, ge=1, le=10_000)
    #: Which actions go through the relay; the others go to the public node directly.
    actions: tuple[Literal["liquidate", "flag", "resolve_bad_debt", "settle_account",
                           "settle_instrument", "clear_flag"], ...] = ("liquidate",)  # fmt: skip
    #: ``preferences.fast`` of eth_sendPrivateTransaction (share with every builder).
    fast: bool = True
    timeout_seconds: PositiveSeconds = 5.0

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        return _check_url(v, ("http", "https"))

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value


class DeploymentConfig(_Section):
    file: Path


class StoreConfig(_Section):
    url: str = DEFAULT_STORE_URL

    @field_validator("url")
    @classmethod
    def _known(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value


class SignerConfig(_Section):
    """Exactly one source: a keystore (with a password file or env var) or a key env var."""

    keystore: Path | None = None
    password_file: Path | None = None
    password_env: str | None = None
    key_env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.keystore is None) == (self.key_env is None):
            raise ValueError("set exactly one of keystore or key_env")
        if self.keystore is not None and (self.password_file is None) == (
            self.password_env is None
        ):
            raise ValueError("a keystore needs exactly one of password_file or password_env")
        if self.key_env is not None and (self.password_file or self.password_env):
            raise ValueError("key_env takes no password")
        return self


class FeesConfig(_Section):
    #: Hard cap on maxFeePerGas, replacements included: the keeper never pays more per gas.
    max_fee_per_gas: Wei = parse_wei("200 gwei")
    priority_fee: Wei = parse_wei("1 gwei")
    #: maxFeePerGas = base fee x this / 100 + tip (headroom for rising base fees), then capped.
    base_fee_multiplier_percent: int = Field(default=200, ge=100, le=1000)
    #: Replacement bump of both fees. Nodes reject a replacement below +10 %.
    bump_percent: int = Field(default=15, ge=10, le=500)
    stuck_after_seconds: PositiveSeconds = 30.0

    @model_validator(mode="after")
    def _tip_under_cap(self) -> Self:
        if self.priority_fee > self.max_fee_per_gas:
            raise ValueError("priority_fee exceeds max_fee_per_gas")
        return self


def parse_usdc(value: object) -> Decimal:
    """An amount of the settlement asset (asset 0, USDC in the reference deployment) from a
    number or a decimal string: ``0.5``, ``"0.001"``, ``2``. Exact to 18 decimals."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError('must be a number of USDC, like 0.5 or "0.001"')
    text = str(value).strip()
    if text.lower().endswith("usdc"):
        text = text[:-4].strip()
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError('must be a number of USDC, like 0.5 or "0.001"') from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a non-negative number of USDC")
    if amount.scaleb(18) != amount.scaleb(18).to_integral_value():
        raise ValueError("more than 18 decimals")
    return amount


Usdc = Annotated[Decimal, BeforeValidator(parse_usdc)]

_MIN_PROFIT_DEPRECATED = (
    'decisions.min_profit is deprecated: it is read in asset-0 WAD, so "0.001 ether" means '
    "0.001 USDC, not ether; write min_profit_usdc = {usdc} instead"
)


class DecisionsConfig(_Section):
    #: Least ``expected bounty - gas cost`` (both in the settlement asset, USDC) for a
    #: liquidation to be sent.
    min_profit_usdc: Usdc = Decimal(0)
    #: The same threshold in asset-0 WAD: what the decision policy reads. Derived from
    #: ``min_profit_usdc``; still accepted in the file, with a deprecation warning.
    min_profit: Wei = 0
    #: Blocks on top of a block before it is treated as final (reorg horizon).
    confirmations: int = Field(default=12, ge=0, le=10_000)
    sweep_interval_seconds: PositiveSeconds = 300.0
    #: How often the head is polled. An idle poll is one ``eth_getBlockByNumber``; the keeper
    #: reacts to a block at most this late, so keep it well under the block time.
    block_poll_interval_seconds: PositiveSeconds = 0.5
    # --- decision policy (keeper.pipeline.types.DecisionPolicy; ``min_profit`` above is read in
    # asset-0 WAD: the bounty's unit, so "1 ether" = 1e18 = one unit of the settlement asset).
    allow_flags: bool = True
    allow_settlement: bool = True
    allow_bad_debt: bool = True
    #: clearFlag for a flagged account whose full check is healthy again (costs gas, pays no
    #: bounty; keeps the account from a liquidation at the end of its grace period).
    clear_cured_flags: bool = True
    #: Liquidate a book under water (equity <= 0) although it pays no bounty.
    liquidate_insolvent: bool = True
    gas_margin_percent: int = Field(default=20, ge=0, le=1000)
    backoff_blocks: int = Field(default=2, ge=1, le=100_000)
    max_backoff_blocks: int = Field(default=256, ge=1, le=1_000_000)
    fraction_steps: int = Field(default=100, ge=2, le=100_000)
    #: Underlying whose spot converts gas (native wei) into asset 0; None: ``native_price``.
    gas_price_underlying: int | None = Field(default=0, ge=0, le=254)
    #: Fixed asset-0 WAD per 1e18 wei of the native coin (overrides the feed when set).
    native_price: Wei | None = None

    @model_validator(mode="before")
    @classmethod
    def _profit_units(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "min_profit" not in data:
            return data
        if "min_profit_usdc" in data:
            raise ValueError("set min_profit_usdc only (min_profit is its deprecated form)")
        wei = parse_wei(data["min_profit"])
        if wei:  # 0 means the same in every unit: nothing to warn about
            usdc = Decimal(wei).scaleb(-18).normalize()
            logging.getLogger("keeper.config").warning(
                _MIN_PROFIT_DEPRECATED.format(usdc=f"{usdc:f}")
            )
        return {**data, "min_profit": wei, "min_profit_usdc": Decimal(wei).scaleb(-18)}

    @model_validator(mode="after")
    def _wad_from_usdc(self) -> Self:
        wad = int(self.min_profit_usdc.scaleb(18))
        if wad != self.min_profit:
            object.__setattr__(self, "min_profit", wad)
        return self


class IndexerConfig(_Section):
    #: Blocks per eth_getLogs request (halved on a node's range/result cap, down to 1).
    chunk_blocks: int = Field(default=2_000, ge=1, le=1_000_000)


class ServiceConfig(_Section):
    #: No new block processed for this long: unhealthy, then the keeper exits non-zero so a
    #: supervisor restarts it (a dead filter or a stalled node must not go unnoticed).
    watchdog_seconds: PositiveSeconds = 120.0
    #: Start-up and periodic check of the indexed state against the chain (0 disables the
    #: periodic one; the start-up check always runs).
    consistency_interval_seconds: float = Field(default=600.0, ge=0, le=86_400 * 7)
    #: Catch-up pass for expired instruments (settlement also runs when a block passes an
    #: expiry).
    settle_interval_seconds: PositiveSeconds = 60.0
    #: Funding job: pokes the perpetuals whose funding interval has passed (0 = off).
    funding_interval_seconds: float = Field(default=60.0, ge=0, le=86_400)
    #: Recalibration job (0 = off): executes matured queued recalibrations and queues a new
    #: one from the oracle rounds as ``[recalibration]`` says (keeper/protocol/recalibration.py;
    #: the signer must hold RISK_OPERATOR to queue). A configured recalibrator replaces it.
    recalibrate_interval_seconds: float = Field(default=0.0, ge=0, le=86_400 * 7)
    #: Read-only mode: assess and record, never send (no signer needed).
    dry_run: bool = False
    #: Claim the accrued bounty (``claimBounty``: whole token units) once it reaches this many
    #: USDC; checked every minute. Unset: the keeper never claims by itself (``keeper bounty
    #: --claim`` does).
    claim_bounty_above_usdc: Usdc | None = None


class RecalibrationSettings(_Section):
    """What the keeper's recalibration reads and how it turns it into a grid (the rule's k, H
    and m go into the proposal, so ``keeper replay`` recomputes it with the same ones)."""

    #: Round ids per feed: the window ``[last - rounds + 1, last]``.
    rounds: int = Field(default=500, ge=2, le=20_000)
    #: Sampling interval of the rounds, seconds.
    sample_seconds: int = Field(default=3600, ge=1, le=86_400 * 7)
    #: EWMA decay, in [0.5, 0.9999].
    lam: Decimal = Field(default=Decimal("0.94"), ge=Decimal("0.5"), le=Decimal("0.9999"))
    #: Price range target = k_sigma x vol x sqrt(horizon / year).
    k_sigma: Decimal = Field(default=Decimal(3), gt=0, le=100)
    horizon_seconds: int = Field(default=2 * 86_400, gt=0, le=365 * 86_400)
    #: Vol shift base target = vol_shift_per_vol x vol.
    vol_shift_per_vol: Decimal = Field(default=Decimal("0.2"), ge=0, le=100)
    #: Queue only when a price range or vol shift base moves by more than this fraction.
    min_change: Decimal = Field(default=Decimal("0.05"), ge=0, le=1)


class MetricsConfig(_Section):
    bind: str = "127.0.0.1:9108"
    #: Serve /metrics and /health at all.
    enabled: bool = True

    @field_validator("bind")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port with a port in 1..65535")
        return v

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


class ClusterConfig(_Section):
    """Several keepers on one PostgreSQL store (docs/cluster.md): the book's shards and the
    instrument-level jobs are leased to live keepers; off unless ``enabled``."""

    enabled: bool = False
    #: This keeper's name in the cluster (lease owner, status, metrics); unset: host-pid.
    keeper_id: str | None = Field(default=None, min_length=1, max_length=64)
    #: Accounts are hashed into this many shards. Every keeper of a cluster must agree: the
    #: first keeper fixes it in the database and a keeper configured otherwise refuses to start.
    shards: int = Field(default=64, ge=1, le=4096)
    #: A lease expires this long after its last renewal (on the database's clock).
    lease_ttl_seconds: float = Field(default=2.0, gt=0, le=600)
    #: Leases are renewed (and shards rebalanced) this often; less than the ttl.
    heartbeat_seconds: float = Field(default=0.5, gt=0, le=300)
    #: A keeper stops acting on a lease this long before it expires (pauses, clock steps).
    safety_margin_seconds: float = Field(default=0.5, ge=0, le=300)
    #: ``/health`` fails when the keeper has held no lease (no shard, not the leader) this long.
    max_leaseless_seconds: float = Field(default=30.0, gt=0, le=86_400)

    @model_validator(mode="after")
    def _timings(self) -> ClusterConfig:
        if self.heartbeat_seconds >= self.lease_ttl_seconds:
            raise ValueError("heartbeat_seconds must be less than lease_ttl_seconds")
        if self.safety_margin_seconds >= self.lease_ttl_seconds - self.heartbeat_seconds:
            raise ValueError(
                "safety_margin_seconds must be less than lease_ttl_seconds - heartbeat_seconds"
            )
        return self


class KeeperConfig(_Section):
    rpc: RpcConfig
    deployment: DeploymentConfig
    store: StoreConfig = StoreConfig()
    signer: SignerConfig | None = None
    fees: FeesConfig = FeesConfig()
    decisions: DecisionsConfig = DecisionsConfig()
    metrics: MetricsConfig = MetricsConfig()
    indexer: IndexerConfig = IndexerConfig()
    service: ServiceConfig = ServiceConfig()
    recalibration: RecalibrationSettings = RecalibrationSettings()
    #: Optional private relay for liquidations (off when absent).
    relay: RelayConfig | None = None
    #: Cluster mode (off by default): needs a PostgreSQL store.
    cluster: ClusterConfig = ClusterConfig()


# --- loading ---------------------------------------------------------------------------------


def _env_value(raw: str) -> Any:
    """A TOML scalar when ``raw`` is one (15, true, "x", [1, 2]); the plain string otherwise."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw


def apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``KEEPER__SECTION__KEY`` variable applied."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        dotted = ".".join(path)
        if len(path) != 2 or not all(path):
            raise ConfigError(f"environment variable {name} must be KEEPER__SECTION__KEY", dotted)
        section, key = path
        field = KeeperConfig.model_fields.get(section)
        if field is None:
            raise ConfigError(f"unknown section (from environment variable {name})", dotted)
        model = _section_model(section)
        if key not in model.model_fields:
            raise ConfigError(f"unknown key (from environment variable {name})", dotted)
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError("must be a table", section)
        target[key] = _env_value(environ[name])
    return merged


def _section_model(section: str) -> type[BaseModel]:
    annotation = KeeperConfig.model_fields[section].annotation
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise AssertionError(section)  # pragma: no cover - every section is a model


def _validation_to_config_error(err: ValidationError) -> ConfigError:
    """The first error, as ``ConfigError`` naming the key; never quotes the input value."""
    lines = []
    first_key = None
    for item in err.errors(include_input=False, include_url=False):
        key = ".".join(str(p) for p in item["loc"]) or None
        first_key = first_key or key
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            msg = "required key is missing"
        elif item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}" if key else msg)
    error = ConfigError("; ".join(lines))
    error.key = first_key
    return error


def load_config_data(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> KeeperConfig:
    """Validate already-parsed TOML data (plus environment overrides)."""
    merged = apply_env_overrides(dict(data), os.environ if environ is None else environ)
    try:
        config = KeeperConfig.model_validate(merged)
    except ValidationError as err:
        raise _validation_to_config_error(err) from None
    if config.cluster.enabled and not config.store.url.startswith("postgresql"):
        raise ClusterNeedsPostgres()
    # From here on the RPC and store credentials are masked in every log line and error.
    relay_url = config.relay.url if config.relay is not None else None
    for url in (config.rpc.url, *config.rpc.fallback_urls, config.rpc.ws_url, config.store.url,
                relay_url):  # fmt: skip
        if url:
            register_url(url)
    return config


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> KeeperConfig:
    """Read, parse and validate the TOML file at ``path``; raises ConfigError on any problem.

    Relative paths inside the file (deployment file, keystore, password file) are resolved
    against the file's directory, so the keeper behaves the same from any working directory.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names line and column, never the content.
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib recurses per nesting level: a hostile file of deeply nested arrays.
        raise ConfigError(f"config file {path} nests too deeply") from None
    config = load_config_data(data, environ)
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: KeeperConfig, base: Path) -> KeeperConfig:
    def rel(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    deployment = config.deployment.model_copy(update={"file": rel(config.deployment.file)})
    signer = config.signer
    if signer is not None:
        signer = signer.model_copy(
            update={"keystore": rel(signer.keystore), "password_file": rel(signer.password_file)}
        )
    store = config.store
    prefix = "sqlite:///"
    if store.url.startswith(prefix) and store.url != prefix + ":memory:":
        db = Path(store.url[len(prefix) :])
        if not db.is_absolute():
            store = store.model_copy(update={"url": prefix + str(base / db)})
    return config.model_copy(update={"deployment": deployment, "signer": signer, "store": store})
