"""Loader of the portfolio file format (docs/portfolio-format.md): a parsed dict or a JSON string
in, (market, risk parameters, portfolio) out. Pure: the caller reads the file.

Every malformed input raises a :class:`PortfolioFormatError` subclass that names the JSON path
of the offending field ("portfolio.positions[2].strike") and what was expected. Bounds of the
model itself (a negative spot, a haircut above 1, ...) are not checked here: they are the
verifier's named errors (margin.errors), raised when the engine validates its inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from decimal import Context, Decimal, InvalidOperation, localcontext
from typing import Any

from margin.params import (
    PRESETS,
    STABLE,
    VOL_DOWN,
    VOL_UNCHANGED,
    VOL_UP,
    WAD,
    AssetParams,
    ExtendedMove,
    RiskParams,
    UnderlyingParams,
)
from margin.funding import fold_funding, is_perpetual
from margin.portfolio import KIND_NAMES, Market, Portfolio, Position

FORMAT_VERSION = 1
VOL_STATES = {"down": VOL_DOWN, "unchanged": VOL_UNCHANGED, "up": VOL_UP}

# Fields of UnderlyingParams by their JSON type: WAD decimals, or plain integers.
_WAD_FIELDS = {
    "price_range",
    "vol_shift_base",
    "vol_exponent",
    "vol_floor",
    "short_option_charge",
    "calendar_charge",
    "vega_charge",
}
_INT_FIELDS = {"move_steps", "vol_ref_time", "vol_min_time"}


class PortfolioFormatError(ValueError):
    """A portfolio file does not follow docs/portfolio-format.md."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class InvalidJSONError(PortfolioFormatError):
    """The text is not JSON at all."""


class MissingFieldError(PortfolioFormatError):
    """A required field is absent."""


class UnknownFieldError(PortfolioFormatError):
    """A field that the format does not define (typos must not be silently ignored)."""


class FieldTypeError(PortfolioFormatError):
    """A field has the wrong JSON type (e.g. a float where a decimal string is required)."""


class InvalidNumberError(PortfolioFormatError):
    """A number that cannot be represented exactly (bad decimal, > 18 decimals, not integral)."""


class UnknownNameError(PortfolioFormatError):
    """A reference to an underlying, asset, preset, kind or vol state that is not defined."""


class UnsupportedVersionError(PortfolioFormatError):
    """The ``version`` field names a format this loader does not read."""


class InvalidFundingError(PortfolioFormatError):
    """Accrued funding on a position that is not a perpetual (a future without expiry), or
    with no settlement asset to carry it."""


@dataclass(frozen=True)
class PortfolioFile:
    market: Market
    params: RiskParams
    portfolio: Portfolio
    underlying_names: tuple[str, ...]
    asset_names: tuple[str, ...]
    #: Per position: the funding it has accrued and not realised (WAD of the settlement asset,
    #: received > 0; 0 when the file gives none). Already added to the portfolio's settlement
    #: balance, as the clearing house adds it (margin.funding.fold_funding).
    funding: tuple[int, ...] = ()


def _obj(v: Any, path: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise FieldTypeError(path, f"expected an object, got {type(v).__name__}")
    return v


def _list(v: Any, path: str) -> list[Any]:
    if not isinstance(v, list):
        raise FieldTypeError(path, f"expected an array, got {type(v).__name__}")
    return v


def _get(d: dict[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise MissingFieldError(f"{path}.{key}" if path else key, "required field is missing")
    return d[key]


def _only(d: dict[str, Any], allowed: set[str], path: str) -> None:
    for k in d:
        if k not in allowed:
            raise UnknownFieldError(f"{path}.{k}" if path else k, "unknown field")


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise FieldTypeError(path, f"expected a string, got {type(v).__name__}")
    return v


_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)


def _int(v: Any, path: str) -> int:
    """A JSON integer (bool excluded)."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise FieldTypeError(path, f"expected an integer, got {type(v).__name__}")
    return v


def _uint(v: Any, path: str) -> int:
    x = _int(v, path)
    if x < 0:
        raise InvalidNumberError(path, "must not be negative")
    return x


def _wad(v: Any, path: str) -> int:
    """A decimal string ("0.15", "-2", "3000.5") or a JSON integer, scaled exactly to WAD."""
    if isinstance(v, bool | float):
        raise FieldTypeError(
            path, "JSON floats are not exact; write the number as a decimal string"
        )
    if isinstance(v, int):
        return v * WAD
    if not isinstance(v, str):
        raise FieldTypeError(path, f"expected a decimal string, got {type(v).__name__}")
    # Plain ASCII decimals only: Decimal would also take "1_0", non-ASCII digits and "NaN".
    if len(v) > 200 or not _DECIMAL_RE.fullmatch(v):
        raise InvalidNumberError(path, f"not a decimal number: {v[:40]!r}")
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise InvalidNumberError(path, f"not a decimal number: {v!r}") from None
    if not d.is_finite():
        raise InvalidNumberError(path, f"not a finite number: {v!r}")
    if d and not -40 <= d.adjusted() <= 40:  # far outside every bound; keeps the ints small
        raise InvalidNumberError(path, f"out of range: {v!r}")
    # Exact: the default context (28 digits) would round long values; 100 digits cannot.
    with localcontext(Context(prec=100)):
        scaled = d.scaleb(18)
    if scaled != scaled.to_integral_value():
        raise InvalidNumberError(path, f"more than 18 decimals: {v!r}")
    return int(scaled)


def load_portfolio(source: str | bytes | dict[str, Any]) -> PortfolioFile:
    """Parse a portfolio file (JSON text or an already parsed dict)."""
    if isinstance(source, str | bytes):
        try:
            doc = json.loads(source)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidJSONError("", f"not valid JSON: {e}") from None
    else:
        doc = source
    doc = _obj(doc, "(root)")
    _only(doc, {"version", "market", "risk", "portfolio", "comment"}, "")
    version = _int(_get(doc, "version", ""), "version")
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError("version", f"unsupported version {version}")

    market, names = _market(_obj(_get(doc, "market", ""), "market"))
    params, assets = _risk(_obj(_get(doc, "risk", ""), "risk"), names)
    pf, funding = _portfolio(_obj(_get(doc, "portfolio", ""), "portfolio"), names, assets)
    return PortfolioFile(market, params, pf, tuple(names), tuple(assets), funding)


def _market(m: dict[str, Any]) -> tuple[Market, list[str]]:
    _only(m, {"timestamp", "rate", "underlyings"}, "market")
    ts = _uint(_get(m, "timestamp", "market"), "market.timestamp")
    if ts >= 2**64:
        raise InvalidNumberError("market.timestamp", "must fit in 64 bits")
    rate = _wad(_get(m, "rate", "market"), "market.rate")
    names: list[str] = []
    spots: list[int] = []
    vols: list[int] = []
    entries = _list(_get(m, "underlyings", "market"), "market.underlyings")
    for i, e in enumerate(entries):
        path = f"market.underlyings[{i}]"
        e = _obj(e, path)
        _only(e, {"name", "spot", "vol"}, path)
        name = _str(_get(e, "name", path), f"{path}.name")
        if name in names:
            raise UnknownNameError(f"{path}.name", f"duplicate underlying {name!r}")
        names.append(name)
        spots.append(_wad(_get(e, "spot", path), f"{path}.spot"))
        vols.append(_wad(_get(e, "vol", path), f"{path}.vol"))
    return Market(ts, rate, tuple(spots), tuple(vols)), names


def _underlying_params(d: dict[str, Any], path: str) -> UnderlyingParams:
    allowed = {"preset", "extended"} | _WAD_FIELDS | _INT_FIELDS
    _only(d, allowed, path)
    overrides: dict[str, Any] = {}
    for k, v in d.items():
        if k in _WAD_FIELDS:
            overrides[k] = _wad(v, f"{path}.{k}")
        elif k in _INT_FIELDS:
            overrides[k] = _uint(v, f"{path}.{k}")
    if "extended" in d:
        ext = []
        for i, e in enumerate(_list(d["extended"], f"{path}.extended")):
            ep = f"{path}.extended[{i}]"
            e = _obj(e, ep)
            _only(e, {"move", "vol", "weight"}, ep)
            state = _str(_get(e, "vol", ep), f"{ep}.vol")
            if state not in VOL_STATES:
                raise UnknownNameError(f"{ep}.vol", f"vol state must be one of {list(VOL_STATES)}")
            ext.append(
                ExtendedMove(
                    _wad(_get(e, "move", ep), f"{ep}.move"),
                    VOL_STATES[state],
                    _wad(_get(e, "weight", ep), f"{ep}.weight"),
                )
            )
        overrides["extended"] = tuple(ext)
    if "preset" in d:
        preset = _str(d["preset"], f"{path}.preset")
        if preset not in PRESETS:
            raise UnknownNameError(f"{path}.preset", f"preset must be one of {list(PRESETS)}")
        return PRESETS[preset](**overrides)
    required = [f.name for f in fields(UnderlyingParams) if f.name in _WAD_FIELDS | _INT_FIELDS]
    for k in required:
        if k not in overrides:
            raise MissingFieldError(f"{path}.{k}", "required without a preset")
    return UnderlyingParams(**overrides)


def _risk(r: dict[str, Any], names: list[str]) -> tuple[RiskParams, list[str]]:
    _only(r, {"underlyings", "assets", "correlation_credit", "im_factor"}, "risk")
    per = _obj(_get(r, "underlyings", "risk"), "risk.underlyings")
    for k in per:
        if k not in names:
            raise UnknownNameError(f"risk.underlyings.{k}", "not an underlying of market")
    ups = []
    for name in names:
        path = f"risk.underlyings.{name}"
        ups.append(_underlying_params(_obj(_get(per, name, "risk.underlyings"), path), path))
    asset_names: list[str] = []
    assets: list[AssetParams] = []
    for i, a in enumerate(_list(r.get("assets", []), "risk.assets")):
        path = f"risk.assets[{i}]"
        a = _obj(a, path)
        _only(a, {"name", "haircut", "underlying"}, path)
        name = _str(_get(a, "name", path), f"{path}.name")
        if name in asset_names:
            raise UnknownNameError(f"{path}.name", f"duplicate asset {name!r}")
        asset_names.append(name)
        under = a.get("underlying")
        if under is None:
            idx = STABLE
        else:
            under = _str(under, f"{path}.underlying")
            if under not in names:
                raise UnknownNameError(f"{path}.underlying", f"unknown underlying {under!r}")
            idx = names.index(under)
        assets.append(AssetParams(_wad(_get(a, "haircut", path), f"{path}.haircut"), idx))
    params = RiskParams(
        tuple(ups),
        tuple(assets),
        _wad(r.get("correlation_credit", "0"), "risk.correlation_credit"),
        _wad(_get(r, "im_factor", "risk"), "risk.im_factor"),
    )
    return params, asset_names


def _portfolio(
    p: dict[str, Any], names: list[str], assets: list[str]
) -> tuple[Portfolio, tuple[int, ...]]:
    _only(p, {"positions", "collateral"}, "portfolio")
    positions = []
    funding = []
    for i, e in enumerate(_list(p.get("positions", []), "portfolio.positions")):
        path = f"portfolio.positions[{i}]"
        e = _obj(e, path)
        allowed = {"underlying", "kind", "strike", "expiry", "quantity", "entry_price", "funding"}
        _only(e, allowed, path)
        under = _str(_get(e, "underlying", path), f"{path}.underlying")
        if under not in names:
            raise UnknownNameError(f"{path}.underlying", f"unknown underlying {under!r}")
        kind_name = _str(_get(e, "kind", path), f"{path}.kind")
        if kind_name not in KIND_NAMES:
            raise UnknownNameError(f"{path}.kind", f"kind must be one of {list(KIND_NAMES)}")
        kind = KIND_NAMES[kind_name]
        if kind == 0:
            strike = _wad(e.get("strike", 0), f"{path}.strike")
            expiry = _uint(e.get("expiry", 0), f"{path}.expiry")
        else:
            strike = _wad(_get(e, "strike", path), f"{path}.strike")
            expiry = _uint(_get(e, "expiry", path), f"{path}.expiry")
        if expiry >= 2**64:
            raise InvalidNumberError(f"{path}.expiry", "must fit in 64 bits")
        accrued = _wad(e.get("funding", 0), f"{path}.funding")
        if accrued and not is_perpetual(kind, expiry):
            raise InvalidFundingError(f"{path}.funding", "only a perpetual accrues funding")
        if accrued and not assets:
            raise InvalidFundingError(f"{path}.funding", "no settlement asset to carry it")
        funding.append(accrued)
        positions.append(
            Position(
                names.index(under),
                kind,
                strike,
                expiry,
                _wad(_get(e, "quantity", path), f"{path}.quantity"),
                _wad(e.get("entry_price", 0), f"{path}.entry_price"),
            )
        )
    coll = _obj(p.get("collateral", {}), "portfolio.collateral")
    for k in coll:
        if k not in assets:
            raise UnknownNameError(f"portfolio.collateral.{k}", "not an asset of risk.assets")
    balances = tuple(_wad(coll[a], f"portfolio.collateral.{a}") if a in coll else 0 for a in assets)
    pf = fold_funding(Portfolio(tuple(positions), balances), sum(funding))
    return pf, tuple(funding)


# --- writer -------------------------------------------------------------------------------

_VOL_STATE_NAMES = {v: k for k, v in VOL_STATES.items()}
_KIND_BY_CODE = {v: k for k, v in KIND_NAMES.items()}


def wad_to_decimal(x: int) -> str:
    """Exact decimal string of a WAD ("1.5" for 1.5e18, "-0.000000000000000001" for -1)."""
    sign = "-" if x < 0 else ""
    whole, frac = divmod(abs(x), WAD)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:018d}".rstrip("0")


def dump_portfolio(
    market: Market,
    params: RiskParams,
    portfolio: Portfolio,
    underlying_names: tuple[str, ...] | list[str],
    asset_names: tuple[str, ...] | list[str],
    funding: tuple[int, ...] | list[int] = (),
) -> dict[str, Any]:
    """The document that load_portfolio reads back to the same (market, params, portfolio):
    every parameter written out in full (no preset), every number exact. ``funding``: per
    position, its accrued funding, written as the position's ``funding`` where non-zero; the
    settlement balance is written without it (the loader adds it back)."""
    names = list(underlying_names)
    ups = {}
    for name, u in zip(names, params.underlyings, strict=True):
        d: dict[str, Any] = {k: wad_to_decimal(getattr(u, k)) for k in sorted(_WAD_FIELDS)}
        d.update({k: getattr(u, k) for k in sorted(_INT_FIELDS)})
        d["extended"] = [
            {
                "move": wad_to_decimal(e.move),
                "vol": _VOL_STATE_NAMES[e.vol_state],
                "weight": wad_to_decimal(e.weight),
            }
            for e in u.extended
        ]
        ups[name] = d
    assets = []
    for name, a in zip(asset_names, params.assets, strict=True):
        entry: dict[str, Any] = {"name": name, "haircut": wad_to_decimal(a.haircut)}
        if a.underlying != STABLE:
            entry["underlying"] = names[a.underlying]
        assets.append(entry)
    positions = []
    accrued = list(funding) + [0] * (len(portfolio.positions) - len(funding))
    collateral = list(portfolio.collateral)
    if collateral:
        collateral[0] -= sum(accrued)
    for p, f in zip(portfolio.positions, accrued, strict=True):
        pos: dict[str, Any] = {
            "underlying": names[p.underlying],
            "kind": _KIND_BY_CODE[p.kind],
            "quantity": wad_to_decimal(p.quantity),
            "entry_price": wad_to_decimal(p.entry_price),
            "expiry": p.expiry,
        }
        if p.kind != 0:
            pos["strike"] = wad_to_decimal(p.strike)
        if f:
            pos["funding"] = wad_to_decimal(f)
        positions.append(pos)
    return {
        "version": FORMAT_VERSION,
        "market": {
            "timestamp": market.timestamp,
            "rate": wad_to_decimal(market.rate),
            "underlyings": [
                {"name": n, "spot": wad_to_decimal(s), "vol": wad_to_decimal(v)}
                for n, s, v in zip(names, market.spots, market.vols, strict=True)
            ],
        },
        "risk": {
            "underlyings": ups,
            "assets": assets,
            "correlation_credit": wad_to_decimal(params.correlation_credit),
            "im_factor": wad_to_decimal(params.im_factor),
        },
        "portfolio": {
            "positions": positions,
            "collateral": {
                n: wad_to_decimal(b) for n, b in zip(asset_names, collateral, strict=True)
            },
        },
    }
