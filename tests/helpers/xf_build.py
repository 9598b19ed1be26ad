"""``xenforge`` with the test stages and test graphs, for builds in a subprocess:

    python tests/helpers/xf_build.py SPEC.json [XENFORGE-ARGS...]

SPEC.json maps recipe names to nodes (see :mod:`testgraphs`); the exit code is xenforge's.
With ``$XF_GATE`` set, it first writes ``$XF_GATE.ready.<pid>`` and waits until the file
``$XF_GATE`` exists (so that several builds start at the same moment, imports done).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import testgraphs

import xenforge.plan
from xenforge import stages
from xenforge.cli import app


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    stages.REGISTRY.update(testgraphs.test_stages())
    xenforge.plan.plan = testgraphs.planner(spec)  # type: ignore[assignment]
    gate = os.environ.get("XF_GATE")
    if gate:
        Path(f"{gate}.ready.{os.getpid()}").touch()
        deadline = time.monotonic() + 120
        while not Path(gate).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return app.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
