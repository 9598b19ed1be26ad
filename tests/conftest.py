"""Shared by every test folder: the test-only helpers in ``tests/helpers`` are importable.

The suite runs on every core (pyproject's addopts: ``-n auto --dist loadfile``): each test
file is one unit of work, so that its module fixtures (a recipe built through the test cache,
a booted machine) run once, on one worker. Units start in collection order
(``--no-loadscope-reorder``; testpaths lists the end-to-end tests first), the longest first,
so that the shorter ones fill the other cores. Builds of the same node by two workers meet
at the node's lock in the one test cache: each node is built once per run. (Not
``--dist loadgroup``: with pytest 9 its ``xdist_group`` marks group nothing.)"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
