"""The generated GitLab pipeline, run for real: `gitlab-ci-local` (npm, pinned 4.73.0),
shell executor with --shell-isolation (each job its own clean copy of the repository and
its own empty local cache), jobs exchanging nodes only through a real nginx remote cache.
On the hypervisor-only recipe: every node is built exactly once, by the job that owns it;
the release job's artifacts have the sha256s of a single-machine build; a second pipeline
run builds nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import _xenbuild as xb
import nginx
import pytest

from xenforge.cache.cache import default_root
from xenforge.plan import plan
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
GCL = REPO / ".ci-tools" / "node_modules" / ".bin" / "gitlab-ci-local"
XENFORGE = REPO / ".venv" / "bin" / "xenforge"
RECIPE = "recipes/xen-hypervisor.yaml"
BUILT = re.compile(r"^(\S+)\s+> \[\d\d:\d\d:\d\d\] built  (\S+)", re.M)

pytestmark = pytest.mark.skipif(
    not GCL.exists() or shutil.which("nginx") is None,
    reason="gitlab-ci-local (npm, into .ci-tools) or nginx is missing: run ci/setup-host.sh")


def _sums(path: Path) -> dict[str, str]:
    """SHA256SUMS without the two documents that say when and how this run went."""
    return {line.split()[1]: line.split()[0] for line in path.read_text().splitlines()
            if line.split()[1] not in ("manifest.json", "provenance.intoto.json")}


def _checkout(dest: Path) -> None:
    """The repository's tracked files as a fresh git repository (what a runner clones)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = {**os.environ, "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.org",
           "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.org"}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"],
                 ["git", "commit", "-qm", "snapshot"]):
        subprocess.run(argv, cwd=dest, check=True, env=env)


def test_generated_gitlab_pipeline_shards_the_build_through_the_remote_cache(
        tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    # the single-machine build: the test cache's (built once per run, shared with the other
    # tests; a node id names the stage version and every input, so what is cached there is
    # what the jobs build - and reproducible builds give the same bytes from another cache)
    t0 = time.monotonic()
    ref = subprocess.run([XENFORGE, "--cache-dir", str(xb.test_cache().root), "build",
                          RECIPE, "--plain", "-o", str(tmp_path / "ref")], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    record_property("single_machine_export_seconds", round(time.monotonic() - t0, 1))

    proj = tmp_path / "proj"
    _checkout(proj)
    gen = subprocess.run([XENFORGE, "ci", "gitlab", RECIPE], cwd=proj, capture_output=True,
                         text=True)
    assert gen.returncode == 0, gen.stderr
    jobs = {line.split()[0]: line.split()[1:] for line in gen.stdout.splitlines()[1:]}

    srv = nginx.start(tmp_path / "nginx", user="ci", password="ci-secret-pw")
    argv = [str(GCL), "--shell-isolation", "--home", str(tmp_path / "gcl-home"),
            "--variable", f"XENFORGE={XENFORGE}",
            "--variable", f"XENFORGE_REMOTE_CACHE={srv.url}",
            "--variable", "XENFORGE_REMOTE_CACHE_USER=ci",
            "--variable", "XENFORGE_REMOTE_CACHE_PASSWORD=ci-secret-pw",
            # the runners share a compiler cache (a CI cache), as this machine's builds do
            "--variable", f"XENFORGE_CCACHE_DIR={default_root() / 'ccache'}",
            # a protected branch's pipeline: the one that may write the cache
            "--variable", "CI_COMMIT_REF_PROTECTED=true"]
    try:
        runs = []
        for attempt in (1, 2):
            shutil.rmtree(proj / ".gitlab-ci-local", ignore_errors=True)  # fresh runners
            t0 = time.monotonic()
            res = subprocess.run(argv, cwd=proj, capture_output=True, text=True,
                                 timeout=3600)
            seconds = round(time.monotonic() - t0, 1)
            record_property(f"pipeline_run{attempt}_seconds", seconds)
            (tmp_path / f"pipeline{attempt}.log").write_text(res.stdout + res.stderr)
            assert res.returncode == 0, f"pipeline run {attempt} failed:\n{res.stdout[-5000:]}"
            runs.append(res.stdout)
            if attempt == 1:
                artifacts = proj / ".gitlab-ci-local" / "artifacts"
                sums = list(artifacts.glob("*/out/xen-hypervisor/SHA256SUMS"))
                assert len(sums) == 1, list(artifacts.rglob("*"))[:20]
                assert _sums(sums[0]) == _sums(tmp_path / "ref" / "xen-hypervisor" /
                                               "SHA256SUMS")
                for rel, digest in _sums(sums[0]).items():  # the files, not only the list
                    path = sums[0].parent / rel
                    assert subprocess.run(["sha256sum", path], capture_output=True,
                                          text=True).stdout.split()[0] == digest
        built = BUILT.findall(runs[0])
        nodes = [node for _job, node in built]
        graph = plan(load_recipe(REPO / RECIPE))
        assert sorted(nodes) == sorted(graph.nodes), built  # every node, each once
        for job, node in built:  # ... by the job that owns it
            assert node in [n.rstrip(",") for n in jobs[job]], (job, node)
        assert "fetched from the remote" in runs[0]
        assert BUILT.findall(runs[1]) == [], "the second pipeline built something"
        assert runs[1].count(" 0 built,") == len(jobs)
        assert "ci-secret-pw" not in runs[0] + runs[1]
    finally:
        srv.stop()
