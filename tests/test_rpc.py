"""keeper.rpc.connect on a real anvil: the chain id is checked, errors never show the key."""

from __future__ import annotations

import pytest

from keeper.config import RpcConfig
from keeper.devnet import Anvil
from keeper.rpc import NodeUnreachable, WrongChain, connect
from keeper.secrets import clear_registry

KEY = "f00dbabe0123456789abcdef01234567"


@pytest.mark.anvil
def test_connect_checks_the_chain_id(anvil: Anvil) -> None:
    url = f"http://127.0.0.1:{anvil.port}/?apikey={KEY}"
    w3 = connect(RpcConfig(url=url, chain_id=anvil.chain_id))
    assert w3.eth.block_number >= 0
    with pytest.raises(WrongChain) as info:
        connect(RpcConfig(url=url, chain_id=1))
    assert info.value.found == anvil.chain_id and info.value.expected == 1
    assert KEY not in str(info.value) and "apikey=***" in str(info.value)
    clear_registry()


def test_unreachable_node_is_named_without_its_key() -> None:
    url = f"http://127.0.0.1:9/v3/{KEY}"
    with pytest.raises(NodeUnreachable) as info:
        connect(RpcConfig(url=url, chain_id=1, timeout_seconds=2))
    assert KEY not in str(info.value) and "/v3/***" in str(info.value)
    assert info.value.__cause__ is None
    clear_registry()
