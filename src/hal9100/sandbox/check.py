"""`hal9100 sandbox check`: can this machine run code_interpreter, and why not."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from hal9100.config import Settings
from hal9100.sandbox.base import SandboxUnavailable

Check = tuple[str, bool, str]
"""A check's name, whether it passed, and what was found."""


def _bubblewrap() -> Check:
    path = shutil.which("bwrap")
    if path is None:
        return ("bubblewrap", False, "bwrap not found on PATH: install bubblewrap")
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return ("bubblewrap", False, f"{path} --version failed: {error}")
    if result.returncode != 0:
        return ("bubblewrap", False, f"{path} --version failed: {result.stderr.strip()}")
    return ("bubblewrap", True, f"{path} ({result.stdout.strip()})")


def _python_env(python_dir: Path) -> Check:
    from hal9100.sandbox.python_env import inspect

    try:
        env = inspect(python_dir)
    except SandboxUnavailable as error:
        return ("python", False, str(error))
    packages = ", ".join(f"{name} {version}" for name, version in env.packages.items())
    return ("python", True, f"{env.root}: Python {env.version} ({env.interpreter}); {packages}")


async def _backend_checks(settings: Settings) -> list[Check]:
    # The backend may be absent or broken in a partial install: a failed check, not a crash.
    try:
        from hal9100.sandbox.bwrap import make_backend
    except ImportError as error:
        return [("backend", False, f"backend not available: {error}")]
    try:
        backend = make_backend(settings)
    except Exception as error:
        return [("backend", False, f"backend not available: {type(error).__name__}: {error}")]
    try:
        problems = await backend.problems()
        if problems:
            return [
                ("backend", False, "; ".join(problems)),
                ("self-test", False, "skipped: the backend reports problems"),
            ]
        checks: list[Check] = [("backend", True, backend.name)]
        problems = await backend.self_test()
        checks.append(("self-test", not problems, "; ".join(problems) or "confined, runs code"))
        return checks
    except Exception as error:
        return [("backend", False, f"{type(error).__name__}: {error}")]
    finally:
        await backend.aclose()


def run_checks(settings: Settings, python_dir: Path | None = None) -> list[Check]:
    """bubblewrap, the sandbox's Python (at `python_dir`, default `default_dir()`), then,
    if both are there, the backend's problems and self-test."""
    from hal9100.sandbox.python_env import default_dir

    checks = [_bubblewrap(), _python_env(python_dir or default_dir())]
    if all(ok for _, ok, _ in checks):
        checks += asyncio.run(_backend_checks(settings))
    else:
        checks.append(("self-test", False, "skipped: needs bubblewrap and the sandbox's Python"))
    return checks
