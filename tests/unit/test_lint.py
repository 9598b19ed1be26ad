"""ruff and mypy are part of the test suite: a lint or type error fails it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"


def _tool(name: str) -> Path:
    tool = BIN / name
    if not tool.exists():
        pytest.fail(f"{tool} is missing: run ci/setup-host.sh (it installs the dev extras)")
    return tool


def test_ruff() -> None:
    proc = subprocess.run([str(_tool("ruff")), "check", "xenforge", "tests", "bench"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy() -> None:
    proc = subprocess.run([str(_tool("mypy"))], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
