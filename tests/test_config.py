"""keeper.config: the example file loads, overrides apply, bad input gets a named ConfigError."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from keeper.config import (
    DEFAULT_STORE_URL,
    ConfigError,
    KeeperConfig,
    load_config,
    parse_wei,
)
from keeper.secrets import clear_registry, scrub

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "keeper.example.toml"

MINIMAL = """
[rpc]
url = "http://127.0.0.1:8545"
chain_id = 31337
[deployment]
file = "deploy.json"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return path


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE, environ={})
    assert isinstance(config, KeeperConfig)
    assert config.rpc.chain_id == 31337
    assert config.fees.max_fee_per_gas == 200 * 10**9
    assert config.fees.bump_percent == 15
    assert config.decisions.min_profit == 10**15
    assert config.metrics.port == 9108
    # Relative paths are resolved against the file's directory.
    assert config.deployment.file == REPO / "var" / "deployment.json"
    assert config.store.url == f"sqlite:///{REPO / 'var' / 'keeper.db'}"
    assert config.signer is not None and config.signer.password_env == "KEEPER_KEYSTORE_PASSWORD"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    assert config.store.url == DEFAULT_STORE_URL.replace("///", f"///{tmp_path}/")
    assert config.signer is None
    assert config.fees.bump_percent >= 10
    assert config.rpc.ws_url is None


def test_env_overrides(tmp_path: Path) -> None:
    env = {
        "KEEPER__RPC__URL": "https://rpc.example.org/v3/0123456789abcdef0123456789abcdef",
        "KEEPER__FEES__BUMP_PERCENT": "25",
        "KEEPER__FEES__PRIORITY_FEE": "2.5 gwei",
        "KEEPER__decisions__confirmations": "3",
        "KEEPER__RPC__WS_URL": "wss://rpc.example.org/ws",
        "UNRELATED": "x",
    }
    config = load_config(write(tmp_path, MINIMAL), environ=env)
    assert config.rpc.url.endswith("0123456789abcdef0123456789abcdef")
    assert config.fees.bump_percent == 25
    assert config.fees.priority_fee == 2_500_000_000
    assert config.decisions.confirmations == 3
    assert config.rpc.ws_url == "wss://rpc.example.org/ws"
    # The API key became a registered secret, and the repr of the model hides it.
    assert "0123456789abcdef0123456789abcdef" not in repr(config)
    assert scrub("GET /v3/0123456789abcdef0123456789abcdef") == "GET /v3/***"
    clear_registry()


def test_env_override_can_supply_a_missing_section(tmp_path: Path) -> None:
    text = '[rpc]\nurl = "http://localhost:8545"\nchain_id = 1\n'
    env = {"KEEPER__DEPLOYMENT__FILE": "/etc/keeper/deploy.json"}
    config = load_config(write(tmp_path, text), environ=env)
    assert config.deployment.file == Path("/etc/keeper/deploy.json")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"KEEPER__RPC__URLL": "http://x"}, "rpc.urll"),
        ({"KEEPER__NOPE__URL": "http://x"}, "nope.url"),
        ({"KEEPER__RPC": "http://x"}, "rpc"),
        ({"KEEPER__FEES__BUMP_PERCENT": "5"}, "fees.bump_percent"),
        ({"KEEPER__RPC__CHAIN_ID": "abc"}, "rpc.chain_id"),
    ],
)
def test_bad_env_override_names_the_key(tmp_path: Path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), environ=env)
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ("[fees]\nbump_percent = 9\n", "fees.bump_percent", "greater than or equal to 10"),
        ("[fees]\nmax_fee_per_gas = 1.5\n", "fees.max_fee_per_gas", "integer of wei"),
        ('[fees]\nmax_fee_per_gas = "1.5 wei"\n', "fees.max_fee_per_gas", "whole number"),
        ('[fees]\npriority_fee = "3 parsecs"\n', "fees.priority_fee", "unknown unit"),
        (
            '[fees]\nmax_fee_per_gas = "1 gwei"\npriority_fee = "2 gwei"\n',
            "fees",
            "priority_fee exceeds",
        ),
        ("[fees]\nbumpp = 20\n", "fees.bumpp", "unknown key"),
        ("[decisions]\nconfirmations = -1\n", "decisions.confirmations", "greater than"),
        (
            "[decisions]\nsweep_interval_seconds = 0\n",
            "decisions.sweep_interval_seconds",
            "greater than 0",
        ),
        ('[metrics]\nbind = "localhost"\n', "metrics.bind", "host:port"),
        ('[metrics]\nbind = "localhost:70000"\n', "metrics.bind", "host:port"),
        ('[store]\nurl = "mysql://x"\n', "store.url", "sqlite:///"),
        (
            '[signer]\nkey_env = "K"\nkeystore = "k.json"\npassword_env = "P"\n',
            "signer",
            "exactly one of keystore or key_env",
        ),
        ('[signer]\nkeystore = "k.json"\n', "signer", "password_file or password_env"),
        ("[surprise]\nx = 1\n", "surprise", "unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, extra: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + extra), environ={})
    assert info.value.key == key
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[rpc]\nurl = "ftp://h"\nchain_id = 1\n[deployment]\nfile = "d"\n', "rpc.url"),
        ('[rpc]\nurl = "http://h:99999"\nchain_id = 1\n[deployment]\nfile = "d"\n', "rpc.url"),
        ('[rpc]\nurl = "http://h"\n[deployment]\nfile = "d"\n', "rpc.chain_id"),
        ('[rpc]\nurl = "http://h"\nchain_id = 0\n[deployment]\nfile = "d"\n', "rpc.chain_id"),
        ('[deployment]\nfile = "d"\n', "rpc"),
        ('rpc = 3\n[deployment]\nfile = "d"\n', "rpc"),
    ],
)
def test_bad_rpc(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.key == key


def test_error_never_quotes_the_value(tmp_path: Path) -> None:
    secret = "hunter2-very-secret-value"
    text = MINIMAL.replace("chain_id = 31337", f'chain_id = "{secret}"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.key == "rpc.chain_id"
    assert secret not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "content",
    [
        b"[rpc\nurl = 1",  # broken TOML
        b"a = 1\na = 2\n",  # duplicate key
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"x = " + b"[" * 100_000 + b"]" * 100_000,  # nesting bomb
        b"",  # empty: required sections missing
    ],
)
def test_malformed_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_oversized_and_missing_files(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", environ={})


def test_parse_wei_is_exact() -> None:
    assert parse_wei("0.000000000000000001 ether") == 1
    assert parse_wei("123456789.123456789123456789 ether") == 123456789123456789123456789
    assert parse_wei(" 30 GWEI ") == 30 * 10**9
    assert parse_wei(7) == 7
    for bad in (-1, True, 0.5, "1e18", "-3 gwei", None):
        with pytest.raises(ValueError):
            parse_wei(bad)


def test_a_rejected_config_has_no_side_effects(tmp_path: Path) -> None:
    key = "feedfacefeedface0123456789abcdef"
    text = MINIMAL.replace("http://127.0.0.1:8545", f"http://127.0.0.1:8545/v3/{key}")
    text += '[store]\nurl = "sqlite:///sub/dir/k.db"\n[fees]\nbump_percent = 1\n'
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, text), environ={})
    assert scrub(key) == key  # nothing registered
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keeper.toml"]  # nothing created


def test_min_profit_usdc_is_in_usdc(tmp_path: Path) -> None:
    for value, wad in (("0.001", 10**15), ("2.5", 25 * 10**17), ('"0.000001"', 10**12)):
        text = MINIMAL + f"[decisions]\nmin_profit_usdc = {value}\n"
        config = load_config(write(tmp_path, text), environ={})
        assert config.decisions.min_profit == wad  # what the decision policy reads
    env = {"KEEPER__DECISIONS__MIN_PROFIT_USDC": "0.25"}
    config = load_config(write(tmp_path, MINIMAL), environ=env)
    assert config.decisions.min_profit == 25 * 10**16
    for bad in ("-1", '"ten"', "true", "0.0000000000000000001"):
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, MINIMAL + f"[decisions]\nmin_profit_usdc = {bad}\n"))
        assert "min_profit_usdc" in str(err.value)


def test_deprecated_min_profit_still_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = MINIMAL + '[decisions]\nmin_profit = "0.001 ether"\n'
    with caplog.at_level("WARNING", logger="keeper.config"):
        config = load_config(write(tmp_path, text), environ={})
    assert config.decisions.min_profit == 10**15
    assert config.decisions.min_profit_usdc == Decimal("0.001")
    (record,) = [r for r in caplog.records if r.name == "keeper.config"]
    assert "deprecated" in record.getMessage()
    assert "min_profit_usdc = 0.001" in record.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="keeper.config"):
        load_config(write(tmp_path, MINIMAL + "[decisions]\nmin_profit = 0\n"), environ={})
    assert not caplog.records, "0 is 0 in every unit: no warning"
    both = MINIMAL + '[decisions]\nmin_profit = "1 ether"\nmin_profit_usdc = 1\n'
    with pytest.raises(ConfigError, match="min_profit_usdc only"):
        load_config(write(tmp_path, both), environ={})


def _example_keys() -> dict[str, set[str]]:
    """Section -> keys the example file lists: set ones, and alternatives left commented out
    (``# key = value`` inside the section)."""
    listed: dict[str, set[str]] = {}
    section = None
    for line in EXAMPLE.read_text().splitlines():
        head = re.match(r"^#?\s*\[(\w+)\]\s*$", line)
        if head:
            section = head.group(1)
            listed.setdefault(section, set())
            continue
        key = re.match(r"^#?\s*(\w+)\s*=", line)
        if key and section is not None:
            listed[section].add(key.group(1))
    return listed


def test_example_file_lists_every_section_and_key() -> None:
    """A section or key the config model accepts and the example does not show fails here."""
    from keeper.config import KeeperConfig

    model: dict[str, set[str]] = {}
    for name, field in KeeperConfig.model_fields.items():
        (section,) = [
            t for t in (field.annotation, *getattr(field.annotation, "__args__", ()))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]  # fmt: skip
        model[name] = set(section.model_fields)
    assert _example_keys() == model
