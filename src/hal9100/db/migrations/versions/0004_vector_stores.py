"""vector stores: stores, their files (with each file's ingestion lease) and file batches

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vector_stores",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("expires_after", JSON, nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        sa.Column("last_active_at", sa.BigInteger(), nullable=False),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("embedding_model", sa.String(256), nullable=True),
        sa.Column("owner_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_vector_stores")),
        sa.UniqueConstraint("id", name=op.f("uq_vector_stores_id")),
    )
    op.create_index(op.f("ix_vector_stores_created_at"), "vector_stores", ["created_at"])
    op.create_index(op.f("ix_vector_stores_owner_id"), "vector_stores", ["owner_id"])

    op.create_table(
        "vector_store_files",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("vector_store_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_error", JSON, nullable=True),
        sa.Column("usage_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunking_strategy", JSON, nullable=False),
        sa.Column("attributes", JSON, nullable=True),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["vector_stores.id"],
            name=op.f("fk_vector_store_files_vector_store_id_vector_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_vector_store_files")),
    )
    op.create_index(
        "uq_vector_store_files_store_file",
        "vector_store_files",
        ["vector_store_id", "id"],
        unique=True,
    )
    op.create_index(
        "ix_vector_store_files_store_order",
        "vector_store_files",
        ["vector_store_id", "created_at", "seq"],
    )
    op.create_index("ix_vector_store_files_status", "vector_store_files", ["status"])
    op.create_index("ix_vector_store_files_batch", "vector_store_files", ["batch_id"])

    op.create_table(
        "vector_store_file_batches",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("vector_store_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["vector_store_id"],
            ["vector_stores.id"],
            name=op.f("fk_vector_store_file_batches_vector_store_id_vector_stores"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_vector_store_file_batches")),
        sa.UniqueConstraint("id", name=op.f("uq_vector_store_file_batches_id")),
    )
    op.create_index(
        op.f("ix_vector_store_file_batches_vector_store_id"),
        "vector_store_file_batches",
        ["vector_store_id"],
    )


def downgrade() -> None:
    op.drop_table("vector_store_file_batches")
    op.drop_table("vector_store_files")
    op.drop_table("vector_stores")
