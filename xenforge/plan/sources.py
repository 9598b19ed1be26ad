"""Source and tree nodes: what every compiled thing starts from."""

from __future__ import annotations

from pathlib import Path

from xenforge.plan.graph import Graph, Node
from xenforge.sources.specs import PathSource, SourceSpec, identity


def source_node(graph: Graph, name: str, spec: SourceSpec, released: int | None) -> Node:
    files: dict[str, Path | list[Path]] = {}
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(spec, PathSource):
        # identity is the content, never the location on this machine
        files["path"] = spec.path
        data["path"] = spec.path.name
    return graph.add_shared(Node(name=f"source:{name}", stage="source",
                                 options={"spec": data}, identity={"spec": identity(spec)},
                                 files=files, released=released))


def tree_node(graph: Graph, name: str, spec: SourceSpec, patches: Path | None,
              released: int | None) -> Node:
    src = source_node(graph, name, spec, released)
    files: dict[str, Path | list[Path]] = {"patches": patches} if patches is not None else {}
    # the same line with other patches or another source is another tree
    return graph.add_shared(Node(name=f"tree:{name}", stage="tree",
                                 inputs={"source": src.name}, files=files))


def describe(spec: SourceSpec) -> str:
    """A short human description of a source, used in package versions and manifests."""
    data = spec.model_dump(mode="json", exclude_none=True)
    for kind in ("apt", "deb", "url"):
        if kind in data:
            return f"{kind}:{data[kind]}"
    return f"path:{Path(str(data.get('path', ''))).name}"
