"""Recipe -> build graph. Each node is one stage run; its id is a hash chain over the stage,
its version, its options, the ids of the nodes it consumes and the content of its files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenforge.core.data import data_dir
from xenforge.core.errors import InputError
from xenforge.core.hashing import sha256_json, tree_hash
from xenforge.lib.patches import series_files
from xenforge.recipe.load import LoadedRecipe
from xenforge.sources.specs import PathSource, SourceSpec, identity
from xenforge.stages import get_stage

#: the packaging data of the xen-debs stage (control files, maintainer scripts, overrides)
XEN_DEBS_TEMPLATES = data_dir("templates") / "xen-debs"


@dataclass
class Node:
    name: str  # unique in the graph, e.g. "kernel:dom0"
    stage: str
    options: dict[str, Any] = field(default_factory=dict)  # JSON-able; hashed
    inputs: dict[str, str] = field(default_factory=dict)  # label -> node name
    files: dict[str, Path] = field(default_factory=dict)  # label -> file/dir; content hashed
    id: str = ""
    #: what identifies the options when it differs from them (a URL mirror is not identity)
    identity: dict[str, Any] | None = None
    file_hashes: dict[str, str] = field(default_factory=dict)
    input_ids: dict[str, str] = field(default_factory=dict)
    version: int = 0

    def same_as(self, other: Node) -> bool:
        """The same work: stage, options and inputs (before ids are computed)."""
        return (self.stage, self.options, self.identity, self.inputs, self.files) == \
            (other.stage, other.options, other.identity, other.inputs, other.files)

    def key(self) -> dict[str, Any]:
        """Everything the id is computed from (also stored in the manifest and refs)."""
        options = self.options if self.identity is None else self.identity
        return {"stage": self.stage, "version": self.version, "options": options,
                "inputs": self.input_ids, "files": self.file_hashes}


@dataclass
class Graph:
    recipe: str
    nodes: dict[str, Node] = field(default_factory=dict)  # in dependency order

    def add(self, node: Node) -> Node:
        existing = self.nodes.get(node.name)
        if existing is not None:
            if not existing.same_as(node):
                raise ValueError(f"two different nodes are named {node.name}")
            return existing  # the same node asked for twice (shared tree, shared source)
        for dep in node.inputs.values():
            if dep not in self.nodes:
                raise ValueError(f"node {node.name} consumes unknown node {dep}")
        self.nodes[node.name] = node
        return node

    def add_shared(self, node: Node) -> Node:
        """Add ``node`` or reuse an identical one; a different node that would have the same
        name (e.g. the same kernel line with another source) gets a numbered name."""
        base, n = node.name, 1
        while (existing := self.nodes.get(node.name)) is not None and not existing.same_as(node):
            n += 1
            node.name = f"{base}-{n}"
        return self.add(node)

    def downstream(self, name: str) -> set[str]:
        out = {name}
        for n in self.nodes.values():  # dependency order: one pass suffices
            if any(dep in out for dep in n.inputs.values()):
                out.add(n.name)
        return out

    def upstream(self, name: str) -> set[str]:
        """``name`` and every node it consumes, directly or not."""
        out = {name}
        for n in reversed(self.nodes.values()):  # reverse dependency order: one pass
            if n.name in out:
                out.update(n.inputs.values())
        return out

    def only(self, targets: Iterable[str]) -> Graph:
        """The part of the graph that ``targets`` need (``xenforge build --target``)."""
        targets = list(targets)
        unknown = [t for t in targets if t not in self.nodes]
        if unknown:
            raise InputError(f"recipe {self.recipe} has no node {', '.join(unknown)}",
                             hint=f"its nodes: {', '.join(self.nodes)} (see `xenforge plan`)")
        keep = set().union(*(self.upstream(t) for t in targets))
        return Graph(self.recipe, {k: n for k, n in self.nodes.items() if k in keep})

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "nodes": [
            {"name": n.name, "id": n.id, "stage": n.stage, "version": n.version,
             "options": n.options, "inputs": n.inputs,
             "files": {k: str(v) for k, v in n.files.items()},
             "file_hashes": n.file_hashes}
            for n in self.nodes.values()]}


_hash_memo: dict[tuple[Path, int, int, int], str] = {}


def _content_hash(path: Path) -> str:
    st = path.stat()
    if path.is_dir() and (path / "series").is_file():
        # a patch folder: only the series and the patches it lists count (a kernel line's
        # folder also holds its .config fragments, which are inputs of other nodes)
        return sha256_json([[p.name, tree_hash(p)] for p in series_files(path)])
    if path.is_dir():
        return tree_hash(path)  # small folders (elements): always rehash
    memo = (path.resolve(), st.st_ino, st.st_mtime_ns, st.st_size)
    if memo not in _hash_memo:
        _hash_memo[memo] = tree_hash(path)
    return _hash_memo[memo]


def compute_ids(graph: Graph) -> None:
    for node in graph.nodes.values():
        stage = get_stage(node.stage)
        node.version = stage.version
        stage.Options.model_validate(node.options)  # a planner bug shows up here, not later
        node.input_ids = {label: graph.nodes[dep].id for label, dep in node.inputs.items()}
        node.file_hashes = {label: _content_hash(p) for label, p in node.files.items()}
        node.id = sha256_json(node.key())


# -- recipe sections -> nodes -------------------------------------------------------------

def _source_node(graph: Graph, name: str, spec: SourceSpec) -> Node:
    files: dict[str, Path] = {}
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(spec, PathSource):
        # identity is the content, never the location on this machine
        files["path"] = spec.path
        data["path"] = spec.path.name
    return graph.add_shared(Node(name=f"source:{name}", stage="source",
                                 options={"spec": data}, identity={"spec": identity(spec)},
                                 files=files))


def _tree_node(graph: Graph, name: str, spec: SourceSpec, patches: Path | None) -> Node:
    src = _source_node(graph, name, spec)
    files = {"patches": patches} if patches is not None else {}
    # the same line with other patches or another source is another tree
    return graph.add_shared(Node(name=f"tree:{name}", stage="tree",
                                 inputs={"source": src.name}, files=files))


def _plan_hypervisor(graph: Graph, loaded: LoadedRecipe) -> None:
    section, spec = loaded.recipe.hypervisor, loaded.hypervisor_spec
    if section is None or spec is None:
        return
    tree = _tree_node(graph, spec.name, section.source or spec.source,
                      section.patches or spec.patches)
    fragments = [*spec.config, *section.config]
    hyp = graph.add(Node(
        name="hypervisor", stage="hypervisor", inputs={"tree": tree.name},
        options={"version": spec.version, "debug": section.debug},
        files={f"config{i}": p for i, p in enumerate(fragments)}))
    if not section.toolstack:
        return
    tools = graph.add(Node(
        name="toolstack", stage="toolstack", inputs={"tree": tree.name},
        options={"version": spec.version, "configure": spec.toolstack.configure}))
    if section.packages:
        source = section.source or spec.source
        graph.add(Node(
            name="xen-debs", stage="xen-debs",
            inputs={"hypervisor": hyp.name, "toolstack": tools.name},
            options={"version": spec.version, "source": _describe(source)},
            files={"templates": XEN_DEBS_TEMPLATES}))


def _plan_kernels(graph: Graph, loaded: LoadedRecipe) -> None:
    for key, section in loaded.recipe.kernels.items():
        line = loaded.kernel_lines[key]
        tree = _tree_node(graph, line.name, section.source or line.source,
                          section.patches or line.patches)
        files: dict[str, Path] = {}
        for i, frag in enumerate(section.fragments):
            files[f"fragment{i}"] = frag if isinstance(frag, Path) else line.fragments[frag]
        if section.base_config is not None:
            files["baseconfig"] = section.base_config
        graph.add(Node(
            name=f"kernel:{key}", stage="kernel", inputs={"tree": tree.name},
            options={"base": section.base, "package": section.package}, files=files))


def _describe(spec: SourceSpec) -> str:
    """A short human description of a source, used in package versions and manifests."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for kind in ("apt", "deb", "url"):
        if kind in data:
            return f"{kind}:{data[kind]}"
    return f"path:{Path(str(data.get('path', ''))).name}"


#: the planners of each recipe section, in order (later issues add images, iso, ...)
def _plan_images(graph: Graph, loaded: LoadedRecipe) -> None:
    from xenforge.plan.images import plan_images

    plan_images(graph, loaded)


SECTION_PLANNERS = (_plan_hypervisor, _plan_kernels, _plan_images)


def plan(loaded: LoadedRecipe) -> Graph:
    graph = Graph(recipe=loaded.name)
    for planner in SECTION_PLANNERS:
        planner(graph, loaded)
    compute_ids(graph)
    return graph


def explain_change(node: Node, previous: dict[str, Any] | None) -> str:
    """Why a node is not cached: which input changed since the recipe's last build of it."""
    if previous is None:
        return "never built"
    old = previous.get("key", {})
    new = node.key()
    reasons = []
    if old.get("version") != new["version"]:
        reasons.append(f"stage version {old.get('version')} -> {new['version']}")
    old_opts, new_opts = old.get("options", {}), new["options"]
    changed = sorted(k for k in {*old_opts, *new_opts} if old_opts.get(k) != new_opts.get(k))
    if changed:
        reasons.append("options changed: " + ", ".join(changed))
    for kind, label_word in (("files", "file"), ("inputs", "input")):
        o, n = old.get(kind, {}), new[kind]
        for label in sorted({*o, *n}):
            if o.get(label) != n.get(label):
                reasons.append(f"{label_word} {label} changed")
    return "; ".join(reasons) or "previous output was removed from the cache"
