"""A decision's outcome as a kind and a detail: ``outcome`` holds one word (a
``keeper.store.models.DecisionOutcome`` value), ``outcome_detail`` the free text that came after
it (a revert reason, an error, an assessment's note).

Until now both were one text, ``"<kind>: <detail>"``; every stored row is split here, so no
reader ever parses the text again. A text that starts with no known kind is an assessment's
note on a record without action (``no_action``). Downgrading joins them back.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

#: The kinds the keeper wrote as ``"<kind>: <detail>"`` (or alone), as of this revision.
KINDS = (
    "backoff",
    "duplicate",
    "in_flight",
    "simulation_reverted",
    "unprofitable",
    "dry_run",
    "sent",
    "send_failed",
    "abandoned",
    "reverted",
)
#: Appended to the earlier text when a flag's key was released because the flag was cleared.
FLAG_CLEARED_SUFFIX = "; the flag was cleared since: key released"

_decision = sa.table(
    "decision",
    sa.column("outcome", sa.Text()),
    sa.column("outcome_detail", sa.Text()),
)
_outcome = _decision.c.outcome
_detail = _decision.c.outcome_detail


def _starts(column: sa.ColumnClause[str], prefix: str) -> sa.ColumnElement[bool]:
    # substr rather than LIKE: the kinds hold "_", a LIKE wildcard.
    return sa.func.substr(column, 1, len(prefix)) == prefix


def _after(column: sa.ColumnClause[str], prefix: str) -> sa.ColumnElement[str]:
    return sa.func.substr(column, len(prefix) + 1)


# Plain UPDATE statements (no rows read into Python): the same on SQLite and PostgreSQL, and
# printable by ``migrate upgrade --sql`` for a DBA to review.


def upgrade() -> None:
    op.add_column("decision", sa.Column("outcome_detail", sa.Text(), nullable=True))
    n = len(FLAG_CLEARED_SUFFIX)
    cleared = sa.func.substr(_outcome, sa.func.length(_outcome) - n + 1) == FLAG_CLEARED_SUFFIX
    op.execute(
        _decision.update()
        .where(cleared)
        .values(
            outcome="flag_cleared",
            outcome_detail=sa.literal("was: ")
            + sa.func.substr(_outcome, 1, sa.func.length(_outcome) - n),
        )
    )
    # The detail said nothing the kind does not.
    op.execute(_decision.update().where(_outcome == "backoff: skipped").values(outcome="backoff"))
    for kind in KINDS:
        prefix = f"{kind}: "
        op.execute(
            _decision.update()
            .where(_starts(_outcome, prefix))
            .values(outcome=kind, outcome_detail=_after(_outcome, prefix))
        )
    # What starts with no kind is an assessment's note on a record without action.
    op.execute(
        _decision.update()
        .where(_outcome.is_not(None), _outcome.not_in([*KINDS, "flag_cleared"]))
        .values(outcome="no_action", outcome_detail=_outcome)
    )


def downgrade() -> None:
    op.execute(
        _decision.update()
        .where(_outcome == "flag_cleared")
        .values(outcome=_after(_detail, "was: ") + FLAG_CLEARED_SUFFIX)
    )
    op.execute(
        _decision.update()
        .where(_outcome == "backoff", _detail.is_(None))
        .values(outcome="backoff: skipped")
    )
    op.execute(_decision.update().where(_outcome == "no_action").values(outcome=_detail))
    op.execute(
        _decision.update()
        .where(_outcome.in_(KINDS), _detail.is_not(None))
        .values(outcome=_outcome + ": " + _detail)
    )
    # Plain ALTER TABLE ... DROP COLUMN: SQLite has it since 3.35, and a batch rebuild of
    # ``decision`` would trip the foreign key of ``tx`` (the store enables foreign keys).
    op.drop_column("decision", "outcome_detail")
