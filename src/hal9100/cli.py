"""`hal9100 serve | worker | migrate`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from hal9100.config import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hal9100.db.migrate import upgrade

    if args.with_worker:
        os.environ["HAL9100_WITH_WORKER"] = "1"
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Embedded mode owns its database, so it keeps it current; a production deployment
    # runs `hal9100 migrate` once instead of racing N processes at it.
    if not settings.database_url or args.migrate:
        upgrade(settings.sqlalchemy_url)
    uvicorn.run(
        "hal9100.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level,
        # Clients stream server-sent events for minutes; keep-alive must outlive a poll loop.
        timeout_keep_alive=30,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from hal9100.runs.worker import run_worker

    settings = Settings()
    asyncio.run(run_worker(settings, args.concurrency or settings.worker_concurrency))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from hal9100.db.migrate import upgrade

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.sqlalchemy_url, args.revision)
    print(f"database at revision {args.revision}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hal9100", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default=os.environ.get("HAL9100_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("HAL9100_PORT", "3000")))
    serve.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="upgrade the database first (always in embedded mode)",
    )
    serve.add_argument(
        "--with-worker",
        action="store_true",
        help="also execute runs in the API processes (the default without REDIS_URL)",
    )
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="execute runs taken from Redis (production mode)")
    worker.add_argument("--concurrency", type=int, default=None, help="runs at once")
    worker.set_defaults(func=_worker)

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=_migrate)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
