"""xenforge as a package: a non-editable install into a new virtual environment carries its
data (recipes, Xen specs, kernel lines, elements, testinfra suites) and works from any
working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with xenforge installed from a wheel built from this checkout."""
    root = tmp_path_factory.mktemp("pkg")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels,
                    REPO], check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("xenforge-*.whl"))
    venv = root / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", venv], check=True, timeout=300)
    res = subprocess.run([venv / "bin" / "pip", "install", "-q", wheel], capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return venv / "bin"


def _xf(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "XENFORGE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([bin_dir / "xenforge", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_an_installed_xenforge_validates_and_plans_the_shipped_recipes(
        installed: Path, tmp_path: Path) -> None:
    site = subprocess.run([installed / "python", "-c",
                           "import xenforge, os; print(os.path.dirname(xenforge.__file__))"],
                          capture_output=True, text=True, check=True,
                          cwd=tmp_path).stdout.strip()
    assert not site.startswith(str(REPO)), "the install must not point into the checkout"
    listed = _xf(installed, "recipes", cwd=tmp_path)
    assert listed.returncode == 0 and "xen-host" in listed.stdout, listed.stderr
    for name in ("xen-host", "guest", "xen-hypervisor"):
        res = _xf(installed, "validate", name, cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
    plan = _xf(installed, "plan", "--json", "xen-host", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    nodes = {n["name"]: n for n in json.loads(plan.stdout)["nodes"]}
    assert {"hypervisor", "kernel:dom0", "rootfs:guest", "image:xen-host"} <= set(nodes)
    folders = [Path(f) for f in nodes["rootfs:xen-host"]["files"]["elements"]]
    assert all(str(f).startswith(site) for f in folders), folders
    assert Path(folders[0].parent, "xen-dom0", "README.rst").is_file()
    hooks = [h for f in folders for h in f.glob("*.d/*") if h.parent.name != "environment.d"]
    assert hooks and all(os.access(h, os.X_OK) for h in hooks)  # executable in the wheel
    # the same ids as the checkout computes: the data is the same
    here = subprocess.run([sys.executable, "-m", "xenforge.cli", "plan", "--json",
                           str(REPO / "recipes" / "xen-host.yaml")], capture_output=True,
                          text=True, check=True, cwd=REPO,
                          env={**os.environ, "XENFORGE_CACHE_DIR": str(tmp_path / "c2")})
    assert {n["name"]: n["id"] for n in json.loads(here.stdout)["nodes"]} == \
        {name: n["id"] for name, n in nodes.items()}
    schema = _xf(installed, "schema", cwd=tmp_path)
    assert schema.returncode == 0 and json.loads(schema.stdout)["type"] == "object"
    suites = _xf(installed, "test", "xen-host", "--list-suites", cwd=tmp_path)
    assert suites.returncode == 0, suites.stderr
    files = [Path(p) for p in suites.stdout.split()]
    assert [p.name for p in files] == ["test_dom0.py", "test_guests.py"]
    assert all(str(p).startswith(site) and p.is_file() for p in files)
    assert (files[0].parent / "conftest.py").is_file()
