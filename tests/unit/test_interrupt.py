"""The interruption suite's CI sample: the harness of ``tests/reliability/interrupt.py``
(whose full run covers the hypervisor-only recipe) over

- the engine's test stages, run by the real command line (``xf_interrupt_driver.py``): a
  stage that does what an image stage does to the host (a loop device, mounts below its
  work dir, a chrooted command) and a stage of Python only (nothing to kill: it finishes
  and commits a whole object while xenforge stops);
- the real ``source`` and ``tree`` stages of ``recipes/xen-hypervisor.yaml`` (download and
  unpack Xen, patch it), in a cache of their own under /var/tmp;

each node interrupted with SIGKILL and with SIGINT (to the process group, as a terminal
does) at random points, several times in a row on one cache, then built again: the result
equals an uninterrupted build's (sha256 of every file), no partial object is used, and
nothing is left on the host (loop devices, mounts, processes) nor in the cache's staging
and work dirs - after SIGKILL too, within seconds, without a next build (the killed
build's watchdog, ``xenforge.build.reaper``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
XENFORGE = REPO / ".venv" / "bin" / "xenforge"
DRIVER = Path(__file__).with_name("xf_interrupt_driver.py")
FIXTURE = REPO / "tests" / "recipes" / "fixtures" / "kernel.yaml"
HYPERVISOR_ONLY = REPO / "recipes" / "xen-hypervisor.yaml"

pytestmark = pytest.mark.skipif(not XENFORGE.exists(), reason="run ci/setup-host.sh first")


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "interrupt_harness", REPO / "tests" / "reliability" / "interrupt.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


h = _harness()


def _check(report: dict[str, Any], out: Path, nodes: list[str], kills: int) -> None:
    md = h.write_report(report, out / "interrupt.json")
    text = md.read_text()
    print("\n" + text)
    trials = {(t["node"], t["signal"]): t for t in report["trials"]}
    assert set(trials) == {(n, s) for n in nodes for s in ("KILL", "INT")}
    for (node, sig), t in trials.items():
        problems = [p for k in t["kills"] for p in k["problems"]] + t["problems"]
        assert not problems, f"{node} SIG{sig}: {problems}"
        assert len(t["kills"]) == kills, f"{node} SIG{sig}: {t['kills']}"
        assert all(k["rc"] == (-9 if sig == "KILL" else 130) for k in t["kills"])
        assert t["equal"] and t["rebuild_rc"] == 0
        assert not any(t["left_after_rebuild"].values())
        assert not any(any(k["left"].values()) for k in t["kills"])
        assert t["debris_after_rebuild"] == []
    assert report["ok"] and not report["reference_damaged"], text


def test_the_test_stages_survive_kills_at_random_points(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not Path("/bin/busybox").exists():
        pytest.skip("the chroot stage needs root and a static busybox")
    cfg = h.Config(recipe=FIXTURE, base=tmp_path / "interrupt",
                   xenforge=h.Xenforge((str(PYTHON), str(DRIVER)),
                                       {"XENFORGE_CCACHE_DIR": str(tmp_path / "ccache")}),
                   kills=3, signals=("KILL", "INT"), seed=20261203, stages=("chroot", "slow"),
                   settle=20.0)
    report = h.run_suite(cfg)
    _check(report, tmp_path, ["chroot", "slow"], kills=3)
    chroot = [t for t in report["trials"] if t["node"] == "chroot"]
    # the kills hit the chrooted command while the image was mounted on its loop device
    assert any("chroot " in k["doing"] for t in chroot for k in t["kills"])
    killed = [k for t in chroot if t["signal"] == "KILL" for k in t["kills"]]
    assert all(not any(k["left"].values()) for k in killed)


@pytest.fixture
def own_cache() -> Iterator[Path]:
    """A cache of the test's own under /var/tmp (not the shared test cache)."""
    path = Path(tempfile.mkdtemp(prefix="xenforge-interrupt-ci-", dir="/var/tmp"))
    try:
        yield path
    finally:
        h.remove_tree(path)


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return True
    except OSError:
        return False


def test_the_hypervisor_recipes_source_and_tree_survive_kills(own_cache: Path,
                                                              tmp_path: Path) -> None:
    xenforge = h.Xenforge((str(XENFORGE),), {"XENFORGE_CCACHE_DIR": str(own_cache / "ccache")})
    nodes = xenforge.plan(own_cache / "reference", HYPERVISOR_ONLY)
    names = [n for n, info in nodes.items() if info.stage in ("source", "tree")]
    url = next(str(nodes[n].options["spec"].get("url", "")) for n in names
               if nodes[n].stage == "source")
    if url and not _reachable(url):
        pytest.skip(f"{url} is not reachable")
    cfg = h.Config(recipe=HYPERVISOR_ONLY, base=own_cache, xenforge=xenforge, kills=2,
                   signals=("KILL", "INT"), seed=4, stages=("source", "tree"), settle=20.0)
    report = h.run_suite(cfg)
    _check(report, tmp_path, names, kills=2)
    tree = next(t for t in report["trials"] if t["stage"] == "tree")
    assert report["nodes"][tree["node"]]["files"] > 1000  # a whole Xen tree was compared


def test_leftovers_are_what_names_the_path_not_a_longer_one(tmp_path: Path) -> None:
    """The harness stops what it finds; a process of another run whose directory only
    begins with the same name (``/var/tmp/xf-interrupt-ci-x`` for ``/var/tmp/xf-interrupt``)
    is not its own."""
    import subprocess

    base = tmp_path / "base"
    (tmp_path / "base-other").mkdir()
    base.mkdir()
    wait = [sys.executable, "-c", "import time; time.sleep(30)"]
    mine = subprocess.Popen([*wait, str(base / "f")])
    other = subprocess.Popen([*wait, str(tmp_path / "base-other" / "f")])
    in_cwd = subprocess.Popen(wait, cwd=base)
    try:
        found = h.host_leftovers(base)
        pids = {int(line.split()[0]) for line in found.processes}
        assert pids == {mine.pid, in_cwd.pid}, found.processes
        assert not found.mounts and not found.loops and not found.watchdog
    finally:
        for p in (mine, other, in_cwd):
            p.kill()
            p.wait()
