"""chunk index (PostgreSQL only): vector stores' chunks with their words and vectors

On SQLite this does nothing: the embedded index lives in a file of its own
(`vectors.sqlite3`), whose schema `retrieval/sqlite.py` creates.

`chunk_index_windows.embedding` is pgvector's `vector` (no fixed size: any embedding model)
when `CREATE EXTENSION IF NOT EXISTS vector` succeeds, tried inside a savepoint; when it fails
(pgvector not installed on the server, or no privilege to create it) the column is `bytea`
(float32) and the index searches in numpy instead. `retrieval/postgres.py` reads which one
it got from the catalogue. Installing pgvector later does not change an existing table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _has_pgvector() -> bool:
    bind = op.get_bind()
    try:
        # A failed statement would abort the whole migration transaction; the savepoint
        # confines the failure to itself.
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
    except sa.exc.DBAPIError:
        return False
    return True


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    embedding_type = "vector" if _has_pgvector() else "bytea"

    op.create_table(
        "chunk_index_stores",
        sa.Column("vector_store_id", sa.Text(), primary_key=True),
        # Bumped by every write to the store, so that caches of its vectors (the bytea
        # layout's numpy matrices) in any process know they are stale.
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "chunk_index_files",
        sa.Column("vector_store_id", sa.Text(), primary_key=True),
        sa.Column("file_id", sa.Text(), primary_key=True),
        sa.Column("attempt", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "chunk_index_chunks",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("vector_store_id", sa.Text(), nullable=False),
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "tsv",
            postgresql.TSVECTOR(),
            sa.Computed("to_tsvector('english'::regconfig, text)", persisted=True),
            nullable=False,
        ),
    )
    op.create_index("chunk_index_chunks_file", "chunk_index_chunks", ["vector_store_id", "file_id"])
    op.create_index("chunk_index_chunks_tsv", "chunk_index_chunks", ["tsv"], postgresql_using="gin")
    op.create_table(
        "chunk_index_windows",
        sa.Column(
            "chunk_id",
            sa.BigInteger(),
            sa.ForeignKey("chunk_index_chunks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("vector_store_id", sa.Text(), nullable=False),
        sa.Column("file_id", sa.Text(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
    )
    op.execute(f"ALTER TABLE chunk_index_windows ADD COLUMN embedding {embedding_type} NOT NULL")
    op.create_index("chunk_index_windows_chunk", "chunk_index_windows", ["chunk_id"])
    op.create_index("chunk_index_windows_store", "chunk_index_windows", ["vector_store_id", "dims"])
    op.create_index(
        "chunk_index_windows_file", "chunk_index_windows", ["vector_store_id", "file_id"]
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_table("chunk_index_windows")
    op.drop_table("chunk_index_chunks")
    op.drop_table("chunk_index_files")
    op.drop_table("chunk_index_stores")
