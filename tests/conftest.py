"""Shared by every test folder: the test-only helpers in ``tests/helpers`` are importable.

``pytest -n N`` runs the suite on N pytest-xdist workers (pyproject's addopts hold
``--dist loadfile --no-loadscope-reorder``): each test file is one unit of work, so that its
module fixtures (a recipe built through the test cache, a booted machine) run once, on one
worker; units start in collection order (testpaths lists the end-to-end tests first), the
longest first. Builds of the same node by two workers meet at the node's lock in the one test
cache: each node is built once per run. (Not ``--dist loadgroup``: with pytest 9 its
``xdist_group`` marks group nothing.)

One process is the default. On 2 cores (CI's), ``-n 2`` put the main job's boot beside the
unattended install's, two machines under QEMU's TCG on the 2 cores: the default dom0 was ready
after 10:50 (2-7 min alone), two of its three autostarted guests were gone before the suites
began and the PVH guest's life cycle failed. With more cores than emulated machines, ``-n``
pays."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
