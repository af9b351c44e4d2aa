"""run guards: one active run per thread (a unique partial index), and a count of failed
executions so a run that keeps failing the same way ends instead of looping

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 16:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_WHERE = "status IN ('queued', 'in_progress', 'requires_action', 'cancelling')"


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("failed_executions", sa.Integer(), nullable=False, server_default="0")
        )
    # A database written before this index existed may hold threads with several active
    # runs (the race it closes): keep each thread's oldest, fail the others, so the index
    # can be built.
    op.execute(
        f"""
        UPDATE runs SET
            status = 'failed',
            failed_at = CAST(strftime('%s', 'now') AS INTEGER),
            lease_owner = NULL,
            lease_expires_at = NULL,
            required_action = NULL,
            last_error = '{{"code": "server_error", "message": "This run was started while the thread already had an active run; it was stopped when the database was upgraded."}}'
        WHERE {ACTIVE_WHERE} AND seq NOT IN (
            SELECT MIN(seq) FROM runs WHERE {ACTIVE_WHERE} GROUP BY thread_id
        )
        """
        if op.get_bind().dialect.name == "sqlite"
        else f"""
        UPDATE runs SET
            status = 'failed',
            failed_at = CAST(EXTRACT(EPOCH FROM now()) AS BIGINT),
            lease_owner = NULL,
            lease_expires_at = NULL,
            required_action = NULL,
            last_error = '{{"code": "server_error", "message": "This run was started while the thread already had an active run; it was stopped when the database was upgraded."}}'::jsonb
        WHERE {ACTIVE_WHERE} AND seq NOT IN (
            SELECT MIN(seq) FROM runs WHERE {ACTIVE_WHERE} GROUP BY thread_id
        )
        """
    )
    op.create_index(
        "uq_runs_active_thread",
        "runs",
        ["thread_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_WHERE),
        postgresql_where=sa.text(ACTIVE_WHERE),
    )


def downgrade() -> None:
    op.drop_index("uq_runs_active_thread", table_name="runs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("failed_executions")
