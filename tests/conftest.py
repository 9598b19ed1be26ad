"""Shared by every test folder: the test-only helpers in ``tests/helpers`` are importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
