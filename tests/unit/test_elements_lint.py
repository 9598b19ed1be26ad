"""Every element under image_elements/ follows diskimage-builder's conventions, so it works
with a plain ``disk-image-create`` as well as with xenforge."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import diskimage_builder.paths
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ELEMENTS = REPO / "image_elements"
DIB_ELEMENTS = Path(diskimage_builder.paths.get_path("elements"))

PHASES = {"root.d", "extra-data.d", "pre-install.d", "install.d", "post-install.d",
          "post-root.d", "block-device.d", "pre-finalise.d", "finalise.d", "cleanup.d"}
#: other things an element folder may hold (diskimage-builder's names)
OTHER = {"README.rst", "element-deps", "element-provides", "package-installs.yaml",
         "pkg-map", "environment.d", "bin", "static", "test-elements"}
SCRIPT_NAME = re.compile(r"^[0-9][0-9]-[A-Za-z0-9_-]+$")
ENV_NAME = re.compile(r"^[0-9][0-9]-[A-Za-z0-9_.-]+$")
ENV_ASSIGN = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")


def elements() -> list[Path]:
    return sorted(p for p in ELEMENTS.iterdir() if p.is_dir())


def element_ids() -> list[str]:
    return [p.name for p in elements()]


def first_command(text: str) -> str:
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped
    return ""


def test_there_are_elements() -> None:
    names = set(element_ids())
    assert {"xen-dom0", "xen-domu", "xenforge-access", "xenforge-apt-repo",
            "xenforge-boot"} <= names


@pytest.mark.parametrize("element", elements(), ids=element_ids())
def test_layout(element: Path) -> None:
    assert (element / "README.rst").is_file(), f"{element.name} has no README.rst"
    readme = (element / "README.rst").read_text()
    assert element.name in readme.splitlines()[:3], "README.rst is titled with the element name"
    for entry in element.iterdir():
        assert entry.name in PHASES | OTHER, (
            f"{element.name}/{entry.name}: not a diskimage-builder phase or element file")


@pytest.mark.parametrize("element", elements(), ids=element_ids())
def test_scripts(element: Path) -> None:
    for phase in sorted(p for p in element.iterdir() if p.name in PHASES):
        for script in sorted(phase.iterdir()):
            where = f"{element.name}/{phase.name}/{script.name}"
            assert SCRIPT_NAME.match(script.name), (
                f"{where}: hook names are NN-name (diskimage-builder skips others, e.g. *.sh)")
            assert 10 <= int(script.name[:2]) <= 99, f"{where}: use levels 10-99"
            assert os.access(script, os.X_OK), f"{where}: not executable"
            text = script.read_text()
            assert text.startswith("#!/bin/bash\n"), f"{where}: start with #!/bin/bash"
            assert first_command(text) == "set -eu -o pipefail", (
                f"{where}: the first command must be `set -eu -o pipefail`")
            assert "DIB_DEBUG_TRACE" in text, f"{where}: honour DIB_DEBUG_TRACE (set -x)"
            assert "\t" not in text, f"{where}: tabs (use 4 spaces)"
    for script in sorted((element / "bin").glob("*")):
        assert os.access(script, os.X_OK), f"{element.name}/bin/{script.name}: not executable"
        assert first_command(script.read_text()) == "set -eu -o pipefail", script


@pytest.mark.parametrize("element", elements(), ids=element_ids())
def test_environment(element: Path) -> None:
    env = element / "environment.d"
    if not env.is_dir():
        return
    for f in sorted(env.iterdir()):
        where = f"{element.name}/environment.d/{f.name}"
        assert ENV_NAME.match(f.name), f"{where}: name it NN-name"
        assert not os.access(f, os.X_OK), f"{where}: environment files are not executable"
        text = f.read_text()
        assert "set -x" not in text, f"{where}: must not trace"
        assert not re.search(r"export .*\$\(", text), f"{where}: split export and $(...)"
        names = [m.group(1) for line in text.splitlines() if (m := ENV_ASSIGN.match(line))]
        assert names, f"{where}: sets nothing"
        for name in names:
            assert name.startswith(("DIB_", "XENFORGE_")), (
                f"{where}: {name} must be prefixed DIB_ or XENFORGE_")


@pytest.mark.parametrize("element", elements(), ids=element_ids())
def test_dependencies_exist(element: Path) -> None:
    deps_file = element / "element-deps"
    if not deps_file.is_file():
        return
    deps = [d.strip() for d in deps_file.read_text().splitlines()
            if d.strip() and not d.startswith("#")]
    assert deps == sorted(deps), f"{element.name}/element-deps: keep it sorted"
    for dep in deps:
        assert (ELEMENTS / dep).is_dir() or (DIB_ELEMENTS / dep).is_dir(), (
            f"{element.name} depends on {dep!r}, which is neither ours nor diskimage-builder's")


@pytest.mark.parametrize("element", elements(), ids=element_ids())
def test_package_installs(element: Path) -> None:
    f = element / "package-installs.yaml"
    if not f.is_file():
        return
    data = yaml.safe_load(f.read_text())
    assert isinstance(data, dict) and data, f"{f}: a mapping of package names"
    allowed = {"phase", "uninstall", "installtype", "arch", "not-arch", "build-only", "when",
               "dib_python_version"}
    for pkg, params in data.items():
        for p in params if isinstance(params, list) else [params or {}]:
            assert set(p) <= allowed, f"{f}: {pkg}: unknown keys {set(p) - allowed}"


def test_no_name_clash_with_diskimage_builder() -> None:
    clash = [e.name for e in elements() if (DIB_ELEMENTS / e.name).exists()]
    assert not clash, f"elements shadowing diskimage-builder's: {clash}"


def test_dib_lint(tmp_path: Path) -> None:
    """diskimage-builder's own linter on our folder. Its pipefail check wants a separate
    `set -o pipefail` line; ours is one `set -eu -o pipefail` line, checked above."""
    venv_bin = Path(sys.executable).parent
    dib_lint = shutil.which("dib-lint") or shutil.which("dib-lint", path=str(venv_bin))
    if dib_lint is None:
        pytest.skip("dib-lint not installed")
    (tmp_path / "tox.ini").write_text("[dib-lint]\nignore = setpipefail\n")
    (tmp_path / "lib").mkdir()
    env = {"PATH": f"{Path(dib_lint).parent}:/usr/bin:/bin", "HOME": str(tmp_path),
           "ELEMENTS_DIR": str(ELEMENTS), "LIB_DIR": str(tmp_path / "lib"), "LC_ALL": "C.UTF-8"}
    res = subprocess.run([dib_lint], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    errors = [line for line in res.stdout.splitlines() if line.startswith("ERROR")]
    assert res.returncode == 0 and not errors, "\n".join(errors) or res.stdout[-3000:]
