"""chunk index (PostgreSQL with pgvector only): HNSW indexes for the usual embedding sizes

`chunk_index_windows.embedding` has no fixed size (any model), and pgvector indexes only
columns of one size: each index here is on the expression `embedding::vector(N)`, partial on
`dims = N`, for the sizes of the common embedding models (all-MiniLM-L6-v2 and bge-small: 384;
bge-base and nomic: 768; bge-large and mxbai: 1024; OpenAI's small and ada-002: 1536).
`retrieval/postgres.py` asks for the nearest windows in that very expression when the query's
size has an index (`HNSW_DIMS`), and searches exactly otherwise. An index over no rows costs
nothing; sizes above 2,000 (pgvector's limit for `vector`) stay exact.

Nothing happens on SQLite or with the `bytea` layout (no pgvector).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept equal to retrieval/postgres.py's HNSW_DIMS (a migration must not import app code that
# may change after it).
HNSW_DIMS = (384, 768, 1024, 1536)


def _has_vector_column() -> bool:
    bind = op.get_bind()
    found = bind.exec_driver_sql(
        "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass('chunk_index_windows') "
        "AND a.attname = 'embedding' AND NOT a.attisdropped"
    ).scalar()
    return found == "vector"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql" or not _has_vector_column():
        return
    for dims in HNSW_DIMS:
        op.execute(
            f"CREATE INDEX chunk_index_windows_hnsw_{dims} ON chunk_index_windows "
            f"USING hnsw ((embedding::vector({dims})) vector_cosine_ops) WHERE dims = {dims}"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for dims in HNSW_DIMS:
        op.execute(f"DROP INDEX IF EXISTS chunk_index_windows_hnsw_{dims}")
