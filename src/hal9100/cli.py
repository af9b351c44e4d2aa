"""`hal9100 serve | worker | migrate | sandbox`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from hal9100 import __version__, datadir
from hal9100.config import Settings


def _claim_data_dir(settings: Settings) -> bool:
    try:
        return datadir.claim(settings)
    except datadir.DataDirInUse as error:
        raise SystemExit(f"hal9100: {error}") from None


def _wait_for_backends(settings: Settings) -> None:
    from hal9100.runtime import BackendUnavailable, check_backends, log_startup

    log_startup(settings)
    try:
        asyncio.run(check_backends(settings))
    except BackendUnavailable as error:
        raise SystemExit(f"hal9100: {error}") from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hal9100.db.migrate import upgrade

    if args.with_worker:
        os.environ["HAL9100_WITH_WORKER"] = "1"
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Held before anything touches the database; uvicorn's --workers inherit the hold.
    claimed = _claim_data_dir(settings)
    _wait_for_backends(settings)
    # Embedded mode owns its database, so it keeps it current; a production deployment
    # runs `hal9100 migrate` once instead of racing N processes at it.
    if not settings.database_url or args.migrate:
        upgrade(settings.sqlalchemy_url)
    if claimed:
        from hal9100.worker import release_leases

        asyncio.run(release_leases(settings.sqlalchemy_url))
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
    from hal9100.runtime import BackendUnavailable, log_startup
    from hal9100.worker import run_worker

    settings = Settings()
    log_startup(settings)
    try:
        asyncio.run(run_worker(settings, args.concurrency or settings.worker_concurrency))
    except BackendUnavailable as error:
        raise SystemExit(f"hal9100: {error}") from None
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from alembic.util.exc import CommandError

    from hal9100.db.migrate import upgrade

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Not under a running embedded server: its processes would go on with the old schema.
    _claim_data_dir(settings)
    try:
        upgrade(settings.sqlalchemy_url, args.revision)
    except CommandError as error:
        # A revision alembic cannot resolve is a usage error, not a crash.
        args.parser.error(str(error))
    print(f"database at revision {args.revision}")
    return 0


def _sandbox_setup(args: argparse.Namespace) -> int:
    from hal9100.sandbox.base import SandboxUnavailable
    from hal9100.sandbox.python_env import choose_interpreter, default_dir, inspect, prepare

    target = args.dir or default_dir()
    started = time.monotonic()
    try:
        interpreter = args.interpreter or choose_interpreter()
        print(f"preparing the sandbox's Python at {target} from {interpreter}", flush=True)
        prepare(target, interpreter, args.pip_args)
        env = inspect(target)
    except (SandboxUnavailable, OSError) as error:
        raise SystemExit(f"hal9100: sandbox setup failed: {error}") from None
    packages = ", ".join(f"{name} {version}" for name, version in env.packages.items())
    print(
        f"made {env.root}: Python {env.version} ({env.interpreter}); {packages}; "
        f"matplotlib font cache in {env.mplconfig}; took {time.monotonic() - started:.0f} s"
    )
    return 0


def _sandbox_check(args: argparse.Namespace) -> int:
    from hal9100.sandbox.check import run_checks

    checks = run_checks(Settings(), args.dir)
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hal9100", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument(
        "--host",
        default=os.environ.get("HAL9100_HOST", "127.0.0.1"),
        help="address to listen on (default: %(default)s; HAL9100_HOST sets it)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("HAL9100_PORT", "3000")),
        help="port to listen on (default: %(default)s; HAL9100_PORT sets it)",
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="uvicorn processes (default: %(default)s)"
    )
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="upgrade the database first; always done in embedded mode (default: off)",
    )
    serve.add_argument(
        "--with-worker",
        action="store_true",
        help="also execute runs in the API processes (default: on without REDIS_URL, else off)",
    )
    serve.set_defaults(func=_serve)

    worker = sub.add_parser("worker", help="execute runs taken from Redis (production mode)")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="runs executed at once (default: HAL9100_WORKER_CONCURRENCY, else 64)",
    )
    worker.set_defaults(func=_worker)

    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument(
        "revision",
        nargs="?",
        default="head",
        help="the alembic revision to upgrade to (default: %(default)s)",
    )
    migrate.set_defaults(func=_migrate, parser=migrate)

    sandbox = sub.add_parser("sandbox", help="the code_interpreter sandbox")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    setup = sandbox_sub.add_parser(
        "setup",
        help="prepare the sandbox's own Python (a separate venv with ipykernel, numpy, pandas, matplotlib)",
        description="Arguments after `--` go to pip, e.g. `-- --no-index --find-links DIR`.",
    )
    setup.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where (default: HAL9100_SANDBOX_PYTHON_DIR, else $XDG_DATA_HOME/hal9100/sandbox-python)",
    )
    setup.add_argument(
        "--interpreter",
        default=None,
        help="the Python it is based on, outside /root and /home (default: "
        "HAL9100_SANDBOX_INTERPRETER, else /usr/bin/python3)",
    )
    setup.add_argument("pip_args", nargs="*", help="passed to pip install (after `--`)")
    setup.set_defaults(func=_sandbox_setup)
    check = sandbox_sub.add_parser(
        "check", help="check bubblewrap, the sandbox's Python and the sandbox itself"
    )
    check.add_argument(
        "--dir", type=Path, default=None, help="the sandbox's Python (default: as for setup)"
    )
    check.set_defaults(func=_sandbox_check)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic announces each of its plugins at INFO on every start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        result: int = args.func(args)
    except ValidationError as error:
        # A setting that does not parse: name it in one line, not a traceback.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        )
        parser.exit(2, f"hal9100: invalid configuration: {problems}\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
