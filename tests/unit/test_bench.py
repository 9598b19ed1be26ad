"""The benchmark harness's own arithmetic (bench/): the critical path through a graph, the
largest build of a build log, dpkg's sizes, targets, a node's commands read from the log a
real build wrote. The benchmarks themselves are run by
``bench/run``, not by the test suite."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.cases.overhead import commands_in, from_logs, node_logs  # noqa: E402
from bench.cases.sizes import dpkg_sizes  # noqa: E402
from bench.cases.timeline import critical_path, largest_build  # noqa: E402
from bench.harness import Settings, Target, clock  # noqa: E402
from xenforge.cache import Cache  # noqa: E402
from xenforge.cli import app as cli  # noqa: E402


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


def test_a_nodes_commands_and_overhead_come_from_the_log_a_real_build_wrote(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture kernel recipe's tree node (fetch, unpack, patch: real commands), built
    by `xenforge build`: its log is found by the node id it names, its commands counted
    and timed, and the node's wall (its manifest) is at least their time."""
    fx = tmp_path / "fixtures"
    shutil.copytree(REPO / "tests" / "recipes" / "fixtures", fx)
    cache_dir = tmp_path / "cache"
    assert cli.main(["--cache-dir", str(cache_dir), "build", str(fx / "kernel.yaml"),
                     "--target", "tree:mini", "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert cli.main(["--cache-dir", str(cache_dir), "plan", "--json",
                     str(fx / "kernel.yaml")]) == 0
    plan = json.loads(capsys.readouterr().out)
    tree = next(n for n in plan["nodes"] if n["name"] == "tree:mini")
    logs = node_logs(Cache(cache_dir).state.root)
    assert tree["id"] in logs
    count, seconds = commands_in(logs[tree["id"]].read_text())
    assert count >= 1 and seconds >= 0
    manifest = Cache(cache_dir).store.read_manifest(tree["id"]) or {}
    assert float(manifest["seconds"]) + 0.05 >= seconds
    settings = Settings(recipe=fx / "kernel.yaml", cache=cache_dir, work=tmp_path / "w",
                        out=tmp_path / "o")
    plan["nodes"] = [{**n, "stage": "kernel"} if n["name"] == "tree:mini" else n
                     for n in plan["nodes"]]  # the tree counts as a measured stage here
    costs = from_logs(settings, plan)
    assert [(c.node, c.commands) for c in costs] == [("tree:mini", count)]
    assert costs[0].overhead >= 0 and costs[0].wall >= costs[0].tools - 0.05


def test_commands_in_reads_the_last_build_of_a_log() -> None:
    text = ("[xenforge] node n id " + "a" * 64 + "\n$ make\n[xenforge] exit 2 after 5.0s\n"
            "[xenforge] node n id " + "a" * 64 + "\n$ make\n[xenforge] exit 0 after 1.5s\n"
            "$ cp\n[xenforge] exit 0 after 0.5s\n")
    assert commands_in(text) == (2, 2.0)
