"""The code_interpreter sandbox's own Python (`hal9100 sandbox setup`) and `hal9100 sandbox check`.

Preparing an environment installs numpy, pandas and matplotlib (a minute or more), so the tests
use the one `hal9100 sandbox setup` made at its default place (CI runs it before pytest) and
prepare one of their own only when there is none, once for the module. Where it cannot be
prepared (no network, no wheels) they skip, unless HAL9100_REQUIRE_SANDBOX=1 (as in CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hal9100.sandbox.base import SandboxUnavailable
from hal9100.sandbox.python_env import (
    MANIFEST,
    PACKAGES,
    PythonEnv,
    choose_interpreter,
    default_dir,
    inspect,
    prepare,
)

HAL9100 = [sys.executable, "-m", "hal9100"]
# Fixture setup counts against pytest-timeout: a prepare installs the data libraries.
slow = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PythonEnv:
    try:
        return inspect(default_dir())
    except SandboxUnavailable:
        pass
    target = tmp_path_factory.mktemp("sandbox") / "python"
    try:
        prepare(target, choose_interpreter(), [])
    except SandboxUnavailable as error:
        if os.environ.get("HAL9100_REQUIRE_SANDBOX") == "1":
            raise
        pytest.skip(f"cannot prepare the sandbox's Python here: {error}")
    return inspect(target)


def _hal9100(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HAL9100, *args],
        capture_output=True,
        text=True,
        timeout=110,
        env={**os.environ, **(env or {})},
    )


def test_default_dir_follows_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAL9100_SANDBOX_PYTHON_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    if os.geteuid() == 0:
        # Root's home is closed to the sandbox's uids: a system directory instead.
        assert default_dir() == Path("/var/lib/hal9100/sandbox-python")
    else:
        assert default_dir() == Path("/srv/data/hal9100/sandbox-python")
        monkeypatch.setenv("XDG_DATA_HOME", "relative")  # invalid by the XDG spec: ignored
        assert default_dir() == Path.home() / ".local/share/hal9100/sandbox-python"
    monkeypatch.setenv("HAL9100_SANDBOX_PYTHON_DIR", "/opt/sbpy")
    assert default_dir() == Path("/opt/sbpy")


def test_the_interpreter_is_outside_root_and_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAL9100_SANDBOX_INTERPRETER", raising=False)
    try:
        chosen = Path(choose_interpreter())
    except SandboxUnavailable as error:
        assert "HAL9100_SANDBOX_INTERPRETER" in str(error)
        return
    for hidden in ("/root", "/home"):
        assert not chosen.resolve().is_relative_to(hidden)
    monkeypatch.setenv("HAL9100_SANDBOX_INTERPRETER", "/opt/python/bin/python3")
    assert choose_interpreter() == "/opt/python/bin/python3"


def test_a_missing_env_says_to_run_setup(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="hal9100 sandbox setup"):
        inspect(tmp_path / "nothing")


def test_a_broken_env_says_to_run_setup(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").symlink_to(sys.executable)
    with pytest.raises(SandboxUnavailable, match="hal9100 sandbox setup"):
        inspect(tmp_path)  # no manifest
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(SandboxUnavailable, match="hal9100 sandbox setup"):
        inspect(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"interpreter": "x"}))
    with pytest.raises(SandboxUnavailable, match="hal9100 sandbox setup"):
        inspect(tmp_path)


@slow
def test_a_prepared_env_has_the_packages(prepared: PythonEnv) -> None:
    assert prepared.python == prepared.root / "bin" / "python"
    assert prepared.version.startswith("3.")
    for hidden in ("/root", "/home"):  # the sandbox could not mount the stdlib
        assert not prepared.base_prefix.is_relative_to(hidden)
    for requirement in PACKAGES:
        name = requirement.split(">=")[0]
        assert prepared.packages[name][0].isdigit()
    assert list(prepared.mplconfig.glob("fontlist-*.json"))
    # The kernel's imports work in it, and nothing is left to compile.
    probe = subprocess.run(
        [
            str(prepared.python),
            "-c",
            "import ipykernel, matplotlib_inline, numpy, pandas, matplotlib; print('ok')",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "ok", probe.stderr
    assert list(prepared.root.glob("lib/python3*/site-packages/numpy/__pycache__/*.pyc"))


@slow
def test_check_prints_a_line_per_check(prepared: PythonEnv) -> None:
    result = _hal9100("sandbox", "check", env={"HAL9100_SANDBOX_PYTHON_DIR": str(prepared.root)})
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith(("ok  ", "FAIL")) for line in lines), result.stdout
    names = [line.split()[1].rstrip(":") for line in lines]
    assert names[:2] == ["bubblewrap", "python"]
    assert len(names) >= 3  # the backend or the self-test, passed or not
    assert lines[1].startswith("ok  "), lines[1]
    assert result.returncode == (0 if all(line.startswith("ok") for line in lines) else 1)


def test_check_without_an_env_fails_cleanly(tmp_path: Path) -> None:
    result = _hal9100("sandbox", "check", "--dir", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "FAIL  python:" in result.stdout and "hal9100 sandbox setup" in result.stdout


def test_setup_with_a_bad_interpreter_fails_cleanly(tmp_path: Path) -> None:
    result = _hal9100(
        "sandbox", "setup", "--dir", str(tmp_path / "env"), "--interpreter", "/nonexistent"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "sandbox setup failed" in result.stderr and "/nonexistent" in result.stderr
    assert not (tmp_path / "env").exists()


def test_setup_into_an_unwritable_place_fails_cleanly(tmp_path: Path) -> None:
    result = _hal9100(
        "sandbox", "setup", "--dir", "/proc/no/such/dir", "--interpreter", sys.executable
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot create /proc/no/such/dir" in result.stderr


def test_setup_does_not_replace_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    result = _hal9100("sandbox", "setup", "--dir", str(tmp_path), "--interpreter", sys.executable)
    assert result.returncode == 1
    assert "is not a sandbox Python" in result.stderr
    assert (tmp_path / "precious").read_text() == "keep me"


def test_a_failed_setup_leaves_nothing_behind(tmp_path: Path) -> None:
    interpreter = shutil.which("python3") or sys.executable
    result = _hal9100(
        "sandbox",
        "setup",
        "--dir",
        str(tmp_path / "env"),
        "--interpreter",
        interpreter,
        "--",
        "--no-index",
        "--find-links",
        str(tmp_path / "no-wheels"),
    )
    assert result.returncode == 1
    assert "pip install failed" in result.stderr
    assert list(tmp_path.iterdir()) == []
