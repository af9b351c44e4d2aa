"""Alembic, driven from code: `hal9100 migrate` and the embedded server's start-up.

The migration scripts ship inside the package, so an installed wheel can upgrade its
database without an alembic.ini in the working directory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` (an async SQLAlchemy URL) up to `revision`."""
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    # env.py runs its own event loop; keep it off the server's loop.
    await asyncio.to_thread(upgrade, url, revision)
