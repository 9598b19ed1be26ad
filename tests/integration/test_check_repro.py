"""Reproducible builds, for real: the hypervisor-only recipe built in the shared test cache
(``$XENFORGE_TEST_CACHE``: its nodes are the default recipe's, built once per run), then
`--check-repro` builds Xen, the toolstack and their .debs a second time in another cache
(other work and build paths) with an empty compiler cache, and every artifact - xen.gz,
xen.efi, xen-syms, the toolstack's files, each .deb, the SBOM - has the first build's
sha256. An object the test cache kept from stage code changed without a version bump
differs from the fresh build: the check then fails, as it should (bump the stage's
version)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
XENFORGE = REPO / ".venv" / "bin" / "xenforge"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the buildroot)")


def test_hypervisor_toolstack_and_debs_are_bit_for_bit_reproducible(
        tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    cache = Path(os.environ.get("XENFORGE_TEST_CACHE", "/var/tmp/xenforge-test-cache"))
    res = subprocess.run([XENFORGE, "--cache-dir", str(cache), "build", "--check-repro",
                          "recipes/xen-hypervisor.yaml", "--plain", "-o", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=3600)
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-2000:]
    report = json.loads((cache / "state" / "logs" / "xen-hypervisor" /
                         "reproducibility.json").read_text())
    (rep,) = report
    assert rep["ok"] and rep["differing"] == [], rep["differing"]
    same = set(rep["identical"])
    for want in ("hypervisor/xen.gz", "hypervisor/xen.efi", "hypervisor/xen-syms",
                 "toolstack/build-info.json", "sbom.spdx.json"):
        assert want in same, sorted(same)
    debs = [p for p in same if p.endswith(".deb")]
    assert len(debs) == 3, debs  # hypervisor, utils, dev
    assert "no compiler cache" in out
    built = [ln for ln in out.splitlines() if "] built  " in ln]
    record_property("second_build_nodes", len(built))
