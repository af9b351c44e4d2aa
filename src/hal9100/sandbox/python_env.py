"""The sandbox's own Python: a virtualenv with the kernel and the usual data libraries.

It is separate from the server's environment: the sandbox mounts it read-only, so it holds only
what the code may import, and it is based on a system interpreter that the sandbox can mount
without showing /root or /home. `hal9100 sandbox setup` makes it once (`prepare`); the backend
finds it with `inspect`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from hal9100.sandbox.base import SandboxUnavailable

PACKAGES: tuple[str, ...] = (
    "ipykernel>=6.29",
    # ipykernel brings it; named so that its version is recorded and a plot always displays.
    "matplotlib-inline>=0.1.6",
    "numpy>=1.26",
    "pandas>=2.1",
    "matplotlib>=3.8",
)
"""pip requirements of the sandbox's Python."""

MANIFEST = "hal9100-sandbox.json"
MIN_VERSION = (3, 10)
SETUP_HINT = "run `hal9100 sandbox setup`"

# The sandbox hides these; an interpreter under them could not run inside it.
_HIDDEN = (Path("/root"), Path("/home"))


@dataclass(frozen=True)
class PythonEnv:
    """A prepared sandbox Python, as its manifest describes it."""

    root: Path
    python: Path
    """`root/bin/python`, a symlink to `interpreter`: the sandbox must mount both."""
    interpreter: str
    """As given to `prepare` (maybe a symlink or wrapper)."""
    base_prefix: Path
    """The base interpreter's prefix (its stdlib is under it): the sandbox must mount it."""
    version: str
    packages: dict[str, str]
    """Distribution name (as in PACKAGES) to installed version."""
    mplconfig: Path
    """matplotlib's prepared font cache. matplotlib ignores a read-only MPLCONFIGDIR (it makes
    a temporary one and rebuilds the cache), so a sandbox copies this to a writable place."""


def default_dir() -> Path:
    """HAL9100_SANDBOX_PYTHON_DIR, else `/var/lib/hal9100/sandbox-python` for root, else
    `$XDG_DATA_HOME/hal9100/sandbox-python`. Root's home is closed to the uids sessions run
    as, and bubblewrap, running as them, could not mount the environment from there."""
    explicit = os.environ.get("HAL9100_SANDBOX_PYTHON_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if os.geteuid() == 0:
        return Path("/var/lib/hal9100/sandbox-python")
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "hal9100" / "sandbox-python"


def _hidden(path: Path) -> bool:
    return any(p.is_relative_to(h) for p in (path, path.resolve()) for h in _HIDDEN)


def _python_version(interpreter: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [interpreter, "-c", "import sys; print(*sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        major, minor, micro = (int(part) for part in out.split())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return major, minor, micro


def choose_interpreter() -> str:
    """The system interpreter the sandbox's venv is based on.

    HAL9100_SANDBOX_INTERPRETER if set (taken as given), else /usr/bin/python3, else the
    interpreter the server's Python is based on, if it is not under /root or /home.
    """
    explicit = os.environ.get("HAL9100_SANDBOX_INTERPRETER")
    if explicit:
        return explicit
    base_executable: str | None = getattr(sys, "_base_executable", None)
    candidates = [Path("/usr/bin/python3")]
    if base_executable:
        candidates.append(Path(base_executable))
    candidates.append(Path(sys.base_prefix) / "bin" / "python3")
    for candidate in candidates:
        if not candidate.is_file() or _hidden(candidate):
            continue
        version = _python_version(str(candidate))
        if version is not None and version[:2] >= MIN_VERSION:
            return str(candidate)
    raise SandboxUnavailable(
        "no Python >= 3.10 outside /root and /home for the sandbox (tried "
        + ", ".join(str(c) for c in candidates)
        + "); install one (e.g. /usr/bin/python3) or name it with HAL9100_SANDBOX_INTERPRETER"
    )


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise SandboxUnavailable(f"{what} failed (exit {result.returncode}): {tail}")
    return result.stdout


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]


# Run by the new venv's python: its version and the installed versions of PACKAGES.
_PROBE = """
import json, platform, sys, sysconfig
from importlib.metadata import version
print(json.dumps({
    "python_version": platform.python_version(),
    "base_prefix": sys.base_prefix,
    "packages": {name: version(name) for name in sys.argv[1:]},
    "site_packages": sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}),
}))
"""


def _check_target(target: Path) -> None:
    # An existing directory is replaced, so refuse one that is not a sandbox Python we made.
    if not target.exists() and not target.is_symlink():
        return
    if target.is_dir() and not target.is_symlink():
        if (target / MANIFEST).is_file() or not any(target.iterdir()):
            return
    raise SandboxUnavailable(
        f"{target} exists and is not a sandbox Python made by `hal9100 sandbox setup`; "
        "remove it or choose another --dir"
    )


def prepare(target: Path, interpreter: str, pip_args: list[str]) -> None:
    """Make (or remake) the sandbox's Python at `target` from `interpreter`.

    Built in a sibling temporary directory and renamed into place, so a failed setup leaves
    the previous environment as it was. `pip_args` go to `pip install` (e.g. `--no-index
    --find-links DIR`). pip's own output goes to this process's stdout and stderr.
    Raises SandboxUnavailable with what went wrong.
    """
    target = target.absolute()
    version = _python_version(interpreter)
    if version is None:
        raise SandboxUnavailable(f"interpreter {interpreter!r} does not run as Python")
    if version[:2] < MIN_VERSION:
        raise SandboxUnavailable(
            f"interpreter {interpreter} is Python {'.'.join(map(str, version))}; "
            "the sandbox needs >= 3.10"
        )
    _check_target(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    except OSError as error:
        raise SandboxUnavailable(f"cannot create {target}: {error}") from None
    try:
        _build(build, target, interpreter, pip_args)
        _swap_in(build, target)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _build(build: Path, target: Path, interpreter: str, pip_args: list[str]) -> None:
    python = build / "bin" / "python"
    venv = subprocess.run(
        [interpreter, "-m", "venv", "--clear", str(build)], capture_output=True, text=True
    )
    if venv.returncode == 0:
        pip = [str(python), "-m", "pip"]
    elif "ensurepip" in venv.stdout + venv.stderr:
        # Debian's python3 without python3-venv: a venv without pip, filled by our own pip.
        _run(
            [interpreter, "-m", "venv", "--clear", "--without-pip", str(build)],
            f"{interpreter} -m venv --without-pip",
        )
        pip = [sys.executable, "-m", "pip", "--python", str(python)]
    else:
        tail = (venv.stderr or venv.stdout).strip()[-2000:]
        raise SandboxUnavailable(f"{interpreter} -m venv failed: {tail}")

    install = subprocess.run(
        [*pip, "install", "--disable-pip-version-check", "--no-input", *pip_args, *PACKAGES]
    )
    if install.returncode != 0:
        raise SandboxUnavailable(
            f"pip install failed (exit {install.returncode}; its output is above)"
        )

    names = [_requirement_name(requirement) for requirement in PACKAGES]
    probe = json.loads(_run([str(python), "-c", _PROBE, *names], "reading the versions"))
    # The sandbox mounts site-packages read-only: compile now, or every kernel start would.
    # -d names the final location in the .pyc files, not the temporary one.
    for site in probe["site_packages"]:
        relative = Path(site).relative_to(build)
        _run(
            [str(python), "-m", "compileall", "-q", "-j", "0", "-d", str(target / relative), site],
            "compileall",
        )

    # matplotlib scans the fonts and writes its cache at first import: do it once, here.
    mplconfig = build / "mplconfig"
    mplconfig.mkdir()
    env = {**os.environ, "MPLCONFIGDIR": str(mplconfig)}
    _run(
        [str(python), "-c", "import matplotlib.font_manager"],
        "building matplotlib's font cache",
        env,
    )

    manifest = {
        "interpreter": interpreter,
        "python_version": probe["python_version"],
        "base_prefix": probe["base_prefix"],
        "packages": probe["packages"],
        "mplconfig": str(target / "mplconfig"),
        "requirements": list(PACKAGES),
        "pip_args": pip_args,
        "prepared_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (build / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _swap_in(build: Path, target: Path) -> None:
    # mkdtemp made it private; the sandbox's uid must read it.
    build.chmod(0o755)
    if not target.exists():
        build.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    target.rename(old)
    try:
        build.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def inspect(target: Path) -> PythonEnv:
    """The prepared sandbox Python at `target`; SandboxUnavailable if missing or broken."""
    hint = SETUP_HINT if target == default_dir() else f"{SETUP_HINT} --dir {target}"
    python = target / "bin" / "python"
    # exists() follows the symlink: a removed base interpreter counts as missing too.
    if not python.exists():
        raise SandboxUnavailable(
            f"the code_interpreter sandbox's Python is not prepared at {target} "
            f"(no {python}): {hint}"
        )
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        packages = manifest["packages"]
        env = PythonEnv(
            root=target,
            python=python,
            interpreter=str(manifest["interpreter"]),
            base_prefix=Path(manifest["base_prefix"]),
            version=str(manifest["python_version"]),
            packages={str(name): str(version) for name, version in packages.items()},
            mplconfig=Path(manifest["mplconfig"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SandboxUnavailable(
            f"the code_interpreter sandbox's Python at {target} is broken "
            f"({MANIFEST}: {type(error).__name__}: {error}): {hint}"
        ) from None
    missing = [n for n in map(_requirement_name, PACKAGES) if n not in env.packages]
    if missing:
        raise SandboxUnavailable(
            f"the code_interpreter sandbox's Python at {target} lacks {', '.join(missing)}: {hint}"
        )
    return env
