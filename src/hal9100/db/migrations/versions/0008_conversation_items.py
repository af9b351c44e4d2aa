"""conversations and responses: a thread is also a conversation; its messages and run steps
get an `ordinal` (their order among its items across tables), messages keep the content a
Responses-style request gave, `items` holds the items that are neither, a run that is a
response keeps what its request set in `response`, and `response_events` the event log of
a response that ended

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 05:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ordinal", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("item_content", JSON, nullable=True))
    with op.batch_alter_table("run_steps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ordinal", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("response", JSON, nullable=True))
    op.create_table(
        "items",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("thread_id", sa.String(64), nullable=False),
        sa.Column("ordinal", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f("fk_items_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_items")),
        sa.UniqueConstraint("id", name=op.f("uq_items_id")),
    )
    op.create_index("ix_items_thread_order", "items", ["thread_id", "ordinal"])
    op.create_table(
        "response_events",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("events", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_response_events_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_response_events")),
    )


def downgrade() -> None:
    op.drop_table("response_events")
    op.drop_table("items")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("response")
    with op.batch_alter_table("run_steps", schema=None) as batch_op:
        batch_op.drop_column("ordinal")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("item_content")
        batch_op.drop_column("ordinal")
