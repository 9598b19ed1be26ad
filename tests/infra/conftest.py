"""Shared fixtures of xenforge's testinfra suites.

Run them against any Xen host (a VM booted by ``xenforge boot``, or real hardware)::

    pytest tests/infra --hosts=ssh://root@host --xenforge-expect=expect.json

``expect.json`` says what the host should run (written by ``xenforge test`` from a build's
outputs; every key is optional, and a check whose expectation is absent checks only what any
healthy Xen host must show).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--xenforge-expect", metavar="FILE", default=None,
                     help="JSON file with the expected versions, memory, guests ...")


def _load(config: pytest.Config) -> dict[str, Any]:
    path = config.getoption("--xenforge-expect")
    if not path:
        return {}
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


@pytest.fixture(scope="session")
def expect(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _load(request.config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "guest" in metafunc.fixturenames:
        guests = _load(metafunc.config).get("guests", [])
        metafunc.parametrize("guest", guests, ids=[g["name"] for g in guests])
    if "hvm_guest" in metafunc.fixturenames:  # checks that only HVM guests have
        hvm = [g for g in _load(metafunc.config).get("guests", []) if g.get("type") == "hvm"]
        metafunc.parametrize("hvm_guest", hvm, ids=[g["name"] for g in hvm])
