"""``xenforge`` with the test stages and test graphs, for builds in a subprocess:

    python tests/helpers/xf_build.py SPEC.json [XENFORGE-ARGS...]

SPEC.json maps recipe names to nodes (see :mod:`testgraphs`); the exit code is xenforge's.
"""

from __future__ import annotations

import json
import sys
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
    return app.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
