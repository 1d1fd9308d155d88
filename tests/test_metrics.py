"""The keeper's metrics name every account state the keeper classifies in."""

from __future__ import annotations

from keeper.metrics import ACCOUNT_STATES, KeeperMetrics
from keeper.pipeline.types import AccountState


def test_every_account_state_has_its_gauge_label() -> None:
    assert set(ACCOUNT_STATES) == {s.value for s in AccountState}
    assert "invalid" in ACCOUNT_STATES
    metrics = KeeperMetrics()
    for state in ACCOUNT_STATES:
        metrics.accounts.labels(state).set(0)
    text = metrics.render().decode()
    for state in AccountState:
        assert f'keeper_accounts{{state="{state.value}"}} 0.0' in text
