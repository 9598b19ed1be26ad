"""The build graph: nodes (one stage run each), their ids, and why a node rebuilds.

A node's id is a hash chain (as osbuild's): sha256 over the canonical JSON of its stage name
and version, its options (or their ``identity`` where the options hold something that does
not change the bytes, such as a download mirror), the ids of the nodes it consumes, the
content hashes of its input files and - for stages whose bytes depend on it - the build
environment (``SOURCE_DATE_EPOCH`` and the target distribution release). An input or a file
may be one value or a list (``debs: [xen-debs, kernel:dom0]``, ``fragments: [a, b]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xenforge.core.errors import InputError
from xenforge.core.hashing import sha256_json, tree_hash
from xenforge.lib.patches import series_files
from xenforge.stages import get_stage

#: an input: one node name, or a list of them
InputRef = str | list[str]
#: a file input: one path, or a list of them
FileRef = Path | list[Path]


@dataclass(frozen=True)
class BuildEnv:
    """What every byte-producing node depends on besides its own inputs."""

    epoch: int  # SOURCE_DATE_EPOCH of every command of the build
    release: str  # the target distribution's release, e.g. "bookworm"
    distribution: str = "debian"

    @property
    def target(self) -> str:
        return f"{self.distribution}/{self.release}"

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "target": self.target}


@dataclass
class Node:
    name: str  # unique in the graph, e.g. "kernel:dom0"
    stage: str
    options: dict[str, Any] = field(default_factory=dict)  # JSON-able; hashed
    inputs: dict[str, InputRef] = field(default_factory=dict)  # label -> node name(s)
    files: dict[str, FileRef] = field(default_factory=dict)  # label -> file(s); content hashed
    env: BuildEnv | None = None  # set by the planner for stages whose bytes depend on it
    #: what identifies the options when it differs from them (a URL mirror is not identity)
    identity: dict[str, Any] | None = None
    #: export this node's artifacts to out/<recipe>/ (an intermediate rootfs is not)
    export: bool = True
    #: a source node: when its pinned source was released (epoch seconds; see
    #: xenforge.plan.assign_epochs)
    released: int | None = None
    id: str = ""
    file_hashes: dict[str, str | list[str]] = field(default_factory=dict)
    input_ids: dict[str, str | list[str]] = field(default_factory=dict)
    version: int = 0

    def deps(self) -> Iterator[str]:
        """Every node this one consumes (each once, in label order)."""
        seen: set[str] = set()
        for ref in self.inputs.values():
            for name in [ref] if isinstance(ref, str) else ref:
                if name not in seen:
                    seen.add(name)
                    yield name

    def same_as(self, other: Node) -> bool:
        """The same work: stage, options and inputs (before ids are computed)."""
        return (self.stage, self.options, self.identity, self.inputs, self.files, self.env) == \
            (other.stage, other.options, other.identity, other.inputs, other.files, other.env)

    def key(self) -> dict[str, Any]:
        """Everything the id is computed from (also stored in the manifest and refs)."""
        options = self.options if self.identity is None else self.identity
        key: dict[str, Any] = {"stage": self.stage, "version": self.version,
                               "options": options, "inputs": self.input_ids,
                               "files": self.file_hashes}
        if self.env is not None:
            key["env"] = self.env.to_json()
        return key


@dataclass
class Graph:
    recipe: str  # the recipe's name (several, joined by "+", for a matrix build)
    nodes: dict[str, Node] = field(default_factory=dict)  # in dependency order
    #: node -> the (recipe, node name in that recipe) it stands for; a node of a matrix
    #: graph may stand for the same node of several recipes. Empty: (recipe, its name).
    origins: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def origins_of(self, name: str) -> list[tuple[str, str]]:
        return self.origins.get(name) or [(self.recipe, name)]

    def view(self, recipe: str) -> Graph:
        """One recipe's part of a matrix graph, under the recipe's own node names: copies
        of the matrix's nodes (same ids) named, and with inputs named, as the recipe names
        them, so that the view is a graph of its own (an export's SBOM and provenance
        follow its inputs)."""
        names = {self_name: own for self_name in self.nodes
                 for r, own in self.origins_of(self_name) if r == recipe}
        out = Graph(recipe)
        for self_name, own in names.items():
            node = self.nodes[self_name]
            inputs = {label: names.get(ref, ref) if isinstance(ref, str)
                      else [names.get(r, r) for r in ref] for label, ref in node.inputs.items()}
            out.nodes[own] = replace(node, name=own, inputs=inputs)
        return out

    def add(self, node: Node) -> Node:
        existing = self.nodes.get(node.name)
        if existing is not None:
            if not existing.same_as(node):
                raise ValueError(f"two different nodes are named {node.name}")
            return existing  # the same node asked for twice (shared tree, shared source)
        for dep in node.deps():
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
            if any(dep in out for dep in n.deps()):
                out.add(n.name)
        return out

    def upstream(self, name: str) -> set[str]:
        """``name`` and every node it consumes, directly or not."""
        out = {name}
        for n in reversed(self.nodes.values()):  # reverse dependency order: one pass
            if n.name in out:
                out.update(n.deps())
        return out

    def only(self, targets: Iterable[str]) -> Graph:
        """The part of the graph that ``targets`` need (``xenforge build --target``)."""
        targets = list(targets)
        unknown = [t for t in targets if t not in self.nodes]
        if unknown:
            raise InputError(f"recipe {self.recipe} has no node {', '.join(unknown)}",
                             hint=f"its nodes: {', '.join(self.nodes)} (see `xenforge plan`)")
        return self.subset(set().union(*(self.upstream(t) for t in targets)))

    def subset(self, keep: set[str]) -> Graph:
        """The nodes named in ``keep``, in the same order (their inputs need not be)."""
        return Graph(self.recipe, {k: n for k, n in self.nodes.items() if k in keep},
                     {k: v for k, v in self.origins.items() if k in keep})

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "nodes": [
            {"name": n.name, "id": n.id, "stage": n.stage, "version": n.version,
             "options": n.options, "inputs": n.inputs,
             "files": {k: _paths_json(v) for k, v in n.files.items()},
             "file_hashes": n.file_hashes, "env": n.env.to_json() if n.env else None}
            for n in self.nodes.values()]}


def _paths_json(ref: FileRef) -> str | list[str]:
    return str(ref) if isinstance(ref, Path) else [str(p) for p in ref]


_hash_memo: dict[tuple[Path, int, int, int], str] = {}


def content_hash(path: Path, *, memo: bool = True) -> str:
    """The hash of an input file or folder, as it goes into node ids (``memo``: a file's
    hash is remembered while its inode, mtime and size stay the same)."""
    st = path.stat()
    if path.is_dir() and (path / "series").is_file():
        # a patch folder: only the series and the patches it lists count (a kernel line's
        # folder also holds its .config fragments, which are inputs of other nodes)
        return sha256_json([[p.name, tree_hash(p)] for p in series_files(path)])
    if path.is_dir():
        return tree_hash(path)  # small folders (elements): always rehash
    if not memo:
        return tree_hash(path)
    key = (path.resolve(), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _hash_memo:
        _hash_memo[key] = tree_hash(path)
    return _hash_memo[key]


def compute_ids(graph: Graph) -> None:
    for node in graph.nodes.values():
        stage = get_stage(node.stage)
        node.version = stage.version
        stage.Options.model_validate(node.options)  # a planner bug shows up here, not later
        if stage.build_env and node.env is None:
            raise ValueError(f"node {node.name}: the planner gave it no build environment")
        if not stage.build_env:
            node.env = None
        node.input_ids = {
            label: graph.nodes[ref].id if isinstance(ref, str)
            else [graph.nodes[r].id for r in ref]
            for label, ref in node.inputs.items()}
        node.file_hashes = {
            label: content_hash(ref) if isinstance(ref, Path) else [content_hash(p) for p in ref]
            for label, ref in node.files.items()}
        node.id = sha256_json(node.key())


def explain_change(node: Node, previous: dict[str, Any] | None) -> str:
    """Why a node is not cached: which input changed since the recipe's last build of it."""
    if previous is None:
        return "never built"
    old = previous.get("key", {})
    if not isinstance(old, dict):
        old = {}
    new = node.key()
    reasons = []
    if old.get("version") != new["version"]:
        reasons.append(f"stage version {old.get('version')} -> {new['version']}")
    old_opts, new_opts = old.get("options", {}), new["options"]
    if isinstance(old_opts, dict):
        changed = sorted(k for k in {*old_opts, *new_opts} if old_opts.get(k) != new_opts.get(k))
        if changed:
            reasons.append("options changed: " + ", ".join(changed))
    old_env, new_env = old.get("env") or {}, new.get("env") or {}
    for k in sorted({*old_env, *new_env}):
        if old_env.get(k) != new_env.get(k):
            reasons.append(f"build {k} {old_env.get(k)} -> {new_env.get(k)}")
    for kind, label_word in (("files", "file"), ("inputs", "input")):
        o, n = old.get(kind) or {}, new[kind]
        for label in sorted({*o, *n}):
            if o.get(label) != n.get(label):
                reasons.append(f"{label_word} {label} changed")
    return "; ".join(reasons) or "previous output was removed from the cache"
