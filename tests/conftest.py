"""Shared by every test folder: the test-only helpers in ``tests/helpers`` are importable, and
pytest-xdist's work units are modules.

The suite runs on every core (pyproject's addopts: ``-n auto --dist loadgroup``): each module
is one unit of work, so that its module fixtures (a recipe built through the test cache, a
booted machine) run once, on one worker. A test that marks its own ``xdist_group`` is a unit
of its own (the unattended install beside the main job's boot). Units start in collection
order (``--no-loadscope-reorder``; testpaths lists the end-to-end tests first), the longest
first, so that the shorter ones fill the other cores. Builds of the same node by two workers
meet at the node's lock in the one test cache: each node is built once per run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))


@pytest.hookimpl(tryfirst=True)  # before xdist's hook turns the marks into group names
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
