"""The benchmark harness's own arithmetic (bench/): the critical path through a graph, the
largest build of a build log, dpkg's sizes, targets. The benchmarks themselves are run by
``bench/run``, not by the test suite."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.cases.sizes import dpkg_sizes  # noqa: E402
from bench.cases.timeline import critical_path, largest_build  # noqa: E402
from bench.harness import Target, clock  # noqa: E402


def test_the_critical_path_is_the_chain_with_the_most_seconds() -> None:
    deps = {"source:xen": [], "tree:xen": ["source:xen"], "hypervisor:xen": ["tree:xen"],
            "source:linux": [], "kernel:dom0": ["source:linux"],
            "image:host": ["hypervisor:xen", "kernel:dom0"]}
    seconds = {"source:xen": 5, "tree:xen": 10, "hypervisor:xen": 300, "source:linux": 60,
               "kernel:dom0": 900, "image:host": 100}
    assert critical_path(deps, seconds) == ["source:linux", "kernel:dom0", "image:host"]
    seconds["hypervisor:xen"] = 2000
    assert critical_path(deps, seconds) == ["source:xen", "tree:xen", "hypervisor:xen",
                                            "image:host"]


def test_the_largest_build_of_a_log_is_the_one_that_built_most(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    log.write_text("[01:00:00] build r: 3 nodes\n[01:00:01] built  a  1.0s\n"
                   "[02:00:00] build r: 3 nodes\n[02:00:01] built  a  1.0s\n"
                   "[02:00:02] built  b  1.0s\n[02:00:03] built  c  1.0s\n"
                   "[03:00:00] build r: 3 nodes\n[03:00:01] cached a  0123\n")
    assert largest_build(log).startswith("[02:00:00] build r")


def test_dpkg_sizes_counts_installed_packages_only() -> None:
    status = ("Package: bash\nStatus: install ok installed\nInstalled-Size: 7000\n"
              "Description: GNU shell\n Installed-Size: 1\n\n"
              "Package: gone\nStatus: deinstall ok config-files\nInstalled-Size: 99\n\n"
              "Package: zlib1g\nStatus: install ok installed\nInstalled-Size: 160\n")
    assert dpkg_sizes(status) == {"bash": 7000 * 1024, "zlib1g": 160 * 1024}


def test_targets_say_met_or_missed_with_the_ratio() -> None:
    assert Target("no-op", 0.5, 1.0).render() == \
        "no-op: 0.50 s against <= 1 s (met, ratio 0.50)"
    assert "MISSED, ratio 3.00" in Target("no-op", 3.0, 1.0).render()
    assert clock(5.123) == "5.12 s" and clock(75) == "1:15" and clock(float("nan")) == "-"
