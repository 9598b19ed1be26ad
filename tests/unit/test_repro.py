"""The reproducibility check: a second build in another cache, compared artifact by
artifact. A build step that writes its clock into an artifact (a test-only stage) is
caught, with the file named; without it, everything is identical. The real recipes'
check is tests/integration/test_check_repro.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import xf_test_stages

from xenforge import stages as stage_registry
from xenforge.build.executor import Executor
from xenforge.build.repro import check, write_report
from xenforge.cache import Cache
from xenforge.cli.progress import Progress
from xenforge.export.artifacts import export
from xenforge.plan import plan
from xenforge.plan.graph import Graph, Node, compute_ids
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"


def _graph(fx: Path, stamp: bool, stage: str = "stamp-test") -> Graph:
    graph = plan(load_recipe(fx / "kernel.yaml")).only(["tree:mini"])
    graph.add(Node(name="info", stage=stage, inputs={"tree": "tree:mini"},
                   options={"stamp": stamp}))
    compute_ids(graph)
    return graph


@pytest.mark.parametrize("stamp", [False, True], ids=["pinned", "clock-in-artifact"])
def test_check_repro_names_the_file_that_differs(tmp_path: Path, stamp: bool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    graph = _graph(fx, stamp)
    cache = Cache(tmp_path / "cache")
    progress = Progress(quiet=True)
    results = Executor(graph, cache, progress).run()
    first = tmp_path / "out" / graph.recipe
    artifacts = export(graph, results, cache, first)
    reports = check(graph, {graph.recipe: (first, artifacts)}, views=graph,
                    progress=progress, jobs=2, root=tmp_path)
    (report,) = reports
    assert report.identical == (["info/files.txt"] if stamp else
                                ["info/build-info.txt", "info/files.txt", "sbom.spdx.json"])
    if stamp:  # the artifact, and the SBOM that lists its sha256
        diff, sbom = report.differing
        assert sbom.path == "sbom.spdx.json" and not sbom.expected
        assert diff.path == "info/build-info.txt" and diff.node == "info"
        assert not diff.expected and not report.ok
        assert "DIFFERS info/build-info.txt  (info; NOT REPRODUCIBLE)" in report.render()
        if shutil.which("diffoscope"):  # its report shows the two lines
            assert "-built at" in diff.diffoscope and "+built at" in diff.diffoscope
    else:
        assert report.differing == [] and report.ok
    assert not list(tmp_path.glob("xenforge-repro-*"))  # the second build is removed
    saved = write_report(reports, tmp_path / "repro.json").read_text()
    assert '"ok": %s' % ("false" if stamp else "true") in saved


def test_an_expected_difference_and_the_sbom_listing_its_sha256_pass(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage that declares why its artifact differs (as the image stages do): the check
    passes, and the SBOM, which differs only in that artifact's sha256, is expected too."""
    for name, target in xf_test_stages.TEST_STAGES.items():
        monkeypatch.setitem(stage_registry.REGISTRY, name, target)
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    graph = _graph(fx, True, stage="noted-stamp-test")
    cache = Cache(tmp_path / "cache")
    progress = Progress(quiet=True)
    results = Executor(graph, cache, progress).run()
    first = tmp_path / "out" / graph.recipe
    artifacts = export(graph, results, cache, first)
    (report,) = check(graph, {graph.recipe: (first, artifacts)}, views=graph,
                      progress=progress, jobs=2, root=tmp_path)
    diff, sbom = report.differing
    assert diff.path == "info/build-info.txt" and "on purpose" in diff.expected
    assert sbom.path == "sbom.spdx.json" and "only in those" in sbom.expected
    assert report.ok, report.render()
