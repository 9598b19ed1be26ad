"""``xenforge build --check-repro``: build the same graph a second time in another place -
another cache, so other work and build directories, and an empty compiler cache, so every
object is compiled again - and compare every artifact with the first build's.

A stage whose format keeps something per build that xenforge cannot pin yet says why in
``Stage.repro_note``: its artifacts are reported as differing "as expected, because ...";
any other difference fails the check. With diffoscope installed, each differing file gets
the first lines of its diffoscope report.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from xenforge.build.executor import Executor, Reporter
from xenforge.cache import Cache
from xenforge.core import run as runner
from xenforge.core.hashing import sha256_file
from xenforge.core.leftovers import remove_tree
from xenforge.export.artifacts import Artifact, export
from xenforge.plan.graph import Graph
from xenforge.stages import get_stage

#: documents of an export that two builds must give alike (manifest.json and the
#: provenance say when and how each build ran: they differ by design)
DOCUMENTS = ("sbom.spdx.json",)
DIFFOSCOPE_LINES = 40
DIFFOSCOPE_MAX = 256 << 20  # bytes; larger files (disk images) take diffoscope hours
DIFFOSCOPE_TIMEOUT = 180.0  # seconds per file


class Viewer(Protocol):
    def view(self, recipe: str) -> Graph: ...


@dataclass
class Difference:
    path: str  # relative to the export dir
    node: str
    first: str  # sha256 of the first build's ("": it has no such file)
    second: str | None  # None: the second build has no such file
    expected: str = ""  # why this stage's output may differ ("" : it must not)
    diffoscope: str = ""


@dataclass
class ReproReport:
    recipe: str
    identical: list[str] = field(default_factory=list)
    differing: list[Difference] = field(default_factory=list)
    second_build: str = ""  # where the second export is (kept with --keep)

    @property
    def ok(self) -> bool:
        return not [d for d in self.differing if not d.expected]

    def render(self) -> str:
        lines = [f"reproducibility of {self.recipe}: {len(self.identical)} artifacts "
                 f"identical, {len(self.differing)} differ"]
        for d in self.differing:
            why = f"expected: {d.expected}" if d.expected else "NOT REPRODUCIBLE"
            lines.append(f"  DIFFERS {d.path}  ({d.node}; {why})")
            lines += [f"      {ln}" for ln in d.diffoscope.splitlines()]
        for path in self.identical:
            lines.append(f"  same    {path}")
        return "\n".join(lines)


def compare(first: list[Artifact], second: list[Artifact], graph: Graph, first_dir: Path,
            second_dir: Path) -> tuple[list[str], list[Difference]]:
    """The artifacts two exports have in common by sha256, and the ones that differ."""
    theirs = {a.path.as_posix(): a for a in second}
    same, differ = [], []
    for a in first:
        rel = a.path.as_posix()
        other = theirs.get(rel)
        if other is not None and other.sha256 == a.sha256:
            same.append(rel)
            continue
        note = get_stage(graph.nodes[a.node].stage).repro_note
        differ.append(Difference(rel, a.node, a.sha256, other.sha256 if other else None,
                                 expected=note if other else "",  # missing: never expected
                                 diffoscope=_diffoscope(first_dir / rel, second_dir / rel)
                                 if other else "the second build does not have it"))
    mine = {a.path.as_posix() for a in first}
    for b in second:  # made by the second build only
        if b.path.as_posix() not in mine:
            differ.append(Difference(b.path.as_posix(), b.node, "", b.sha256,
                                     diffoscope="only the second build has it"))
    return same, differ


def _only_listed(a: Path, b: Path, differ: list[Difference]) -> str:
    """Why two exports' JSON documents (the SBOM) may differ: only by the sha256s they list
    of artifacts that differ as expected; "" when anything else differs."""
    expected = [d for d in differ if d.expected]
    if not expected:
        return ""
    try:
        ours, theirs = json.loads(a.read_text()), json.loads(b.read_text())
    except (OSError, ValueError):
        return ""
    if _masked(ours, {d.first for d in expected}) != \
            _masked(theirs, {d.second or "" for d in expected}):
        return ""
    return ("it lists the sha256 of each artifact; it differs only in those of the artifacts "
            "above that differ as expected")


def _masked(doc: object, values: set[str]) -> object:
    """``doc`` with every string of ``values`` replaced by one placeholder."""
    if isinstance(doc, dict):
        return {k: _masked(v, values) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_masked(v, values) for v in doc]
    return "(differs as expected)" if isinstance(doc, str) and doc in values else doc


def _diffoscope(a: Path, b: Path) -> str:
    """The first lines of diffoscope's text report ("" without diffoscope; a note for a
    file too large to compare in reasonable time, e.g. a disk image)."""
    if shutil.which("diffoscope") is None:
        return ""
    if max(a.stat().st_size, b.stat().st_size) > DIFFOSCOPE_MAX:
        return (f"(over {DIFFOSCOPE_MAX >> 20} MiB: not given to diffoscope; keep both "
                "builds with --keep-repro and compare their parts)")
    res = runner.run(["diffoscope", "--no-progress", "--text", "-", "--max-report-size",
                      "200000", "--exclude-command", "^objdump", "--exclude-command",
                      "^readelf --debug-dump", a, b],  # disassembly takes hours here
                     check=False, capture=True, timeout=DIFFOSCOPE_TIMEOUT)
    if res.returncode < 0:
        return f"(diffoscope took over {DIFFOSCOPE_TIMEOUT:.0f}s: stopped)"
    lines = res.stdout.splitlines()
    more = f"... ({len(lines) - DIFFOSCOPE_LINES} more lines)" if len(lines) > \
        DIFFOSCOPE_LINES else ""
    return "\n".join(lines[:DIFFOSCOPE_LINES] + ([more] if more else []))


def check(graph: Graph, first: dict[str, tuple[Path, list[Artifact]]], *, views: Viewer,
          progress: Reporter, jobs: int | None, root: Path | None = None,
          keep: bool = False) -> list[ReproReport]:
    """Build ``graph`` again in a fresh cache below ``root`` (default: a temporary dir
    under /var/tmp) with an empty compiler cache, export each recipe, compare with
    ``first`` (recipe -> its export dir and artifacts)."""
    base = Path(tempfile.mkdtemp(prefix="xenforge-repro-", dir=root or "/var/tmp"))
    try:
        cache = Cache(base / "cache", ccache_dir=base / "ccache")
        progress.line(f"second build for the reproducibility check in {base} (no compiler "
                      "cache)")
        results = Executor(graph, cache, progress, jobs=jobs,
                           logs_dir=base / "logs").run()
        failed = [r for r in results.values() if r.status == "failed"]
        if failed:
            raise failed[0].error or RuntimeError("the second build failed")
        reports = []
        for recipe, (first_dir, first_artifacts) in first.items():
            view = views.view(recipe) if len(first) > 1 else graph
            own = {o: results[n] for n in graph.nodes if n in results
                   for r, o in graph.origins_of(n) if r == recipe}
            second_dir = base / "out" / recipe
            second = export(view, own, cache, second_dir)
            same, differ = compare(first_artifacts, second, view, first_dir, second_dir)
            for doc in DOCUMENTS:  # the export's own documents that must match too
                a, b = first_dir / doc, second_dir / doc
                if a.is_file() and b.is_file():
                    ours, theirs = sha256_file(a), sha256_file(b)
                    if ours == theirs:
                        same.append(doc)
                    else:
                        differ.append(Difference(doc, "(export)", ours, theirs,
                                                 expected=_only_listed(a, b, differ),
                                                 diffoscope=_diffoscope(a, b)))
            reports.append(ReproReport(recipe, same, differ,
                                       str(second_dir) if keep else ""))
        return reports
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                remove_tree(base)


def write_report(reports: list[ReproReport], dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps([asdict(r) | {"ok": r.ok} for r in reports], indent=2) + "\n")
    return dest
