"""Before a build runs: which nodes are in the local cache, which the remote cache has,
which must be built - and which are not needed at all, because every node that consumes
them is already cached (a CI job that builds one node fetches that node's inputs, not
their inputs in turn).

:func:`resolve` fetches the remote objects the build needs (each verified; a damaged one
is built here instead, which can make its own inputs needed) and gives the executor the
part of the graph that is left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from xenforge.cache import Cache
from xenforge.cache.remote import DamagedObject, RemoteCache, RemoteError
from xenforge.plan.graph import Graph
from xenforge.stages import get_stage

State = Literal["local", "remote", "build", "unneeded"]


class Liner(Protocol):
    def line(self, text: str) -> None: ...


@dataclass
class Resolution:
    graph: Graph  # what the executor runs: the nodes not "unneeded"
    state: dict[str, State]
    remote: RemoteCache | None = None  # the remote, if it answered (uploads go there)
    fetched: dict[str, str] = field(default_factory=dict)  # node -> how it was fetched
    #: local objects the remote lacks (the executor uploads them)
    push: set[str] = field(default_factory=set)
    damaged: list[str] = field(default_factory=list)  # remote copies that failed checks


def wanted(graph: Graph, targets: list[str] | None = None) -> set[str]:
    """The nodes a build is for: the ``targets``, or else the nodes with artifacts to
    export, the graph's ends and the pinned sources (the SBOM describes them)."""
    if targets:
        return set(targets)
    consumed = {dep for n in graph.nodes.values() for dep in n.deps()}
    return {n.name for n in graph.nodes.values()
            if (n.export and get_stage(n.stage).artifacts) or n.name not in consumed
            or n.stage == "source"}


def states(graph: Graph, local: set[str], remote: Mapping[str, bool],
           targets: list[str] | None = None) -> dict[str, State]:
    """Each node's state, given the node names cached locally and the remote's answer by
    node name: a :func:`wanted` node or the input of a node to build is needed; a cached
    node (local or remote) needs nothing."""
    need = wanted(graph, targets)
    state: dict[str, State] = {}
    for node in reversed(graph.nodes.values()):  # consumers before their inputs
        if node.name in local:
            state[node.name] = "local"
        elif node.name not in need:
            state[node.name] = "unneeded"
        elif remote.get(node.name):
            state[node.name] = "remote"
        else:
            state[node.name] = "build"
            need.update(node.deps())
    return {name: state[name] for name in graph.nodes}


def opened(graph: Graph, state: Mapping[str, State],
           targets: list[str] | None = None) -> set[str]:
    """The nodes whose objects the build opens: the wanted ones, the inputs of every node
    to build and what the SBOM reads (:attr:`Stage.described`). A cached node outside it
    - a kernel's source tree, a buildroot, once everything after them is cached - is
    never read, so it is neither checked nor copied anywhere."""
    reads = wanted(graph, targets) | {
        n.name for n in graph.nodes.values() if get_stage(n.stage).described}
    for name, s in state.items():
        if s == "build":
            reads.update(graph.nodes[name].deps())
    return {name for name in reads if state.get(name, "unneeded") != "unneeded"}


def local_nodes(graph: Graph, cache: Cache) -> set[str]:
    """The nodes in the local store."""
    return {node.name for node in graph.nodes.values() if cache.has(node.id)}


def checked(graph: Graph, cache: Cache, names: set[str],
            progress: Liner | None = None) -> list[str]:
    """Verify the local objects of ``names`` (sizes and mtimes, sha256 where they differ);
    a damaged one is taken out, so that it counts as missing (and its inputs as needed),
    and reported to ``progress`` (a disk that loses bytes is worth knowing about).
    Returns the names taken out."""
    gone = []
    for name in sorted(names, key=list(graph.nodes).index):
        node = graph.nodes[name]
        if not cache.has(node.id) or not cache.verified(node.id):
            continue
        with cache.lock(node.id):
            problems = cache.verified(node.id)
            if problems:
                cache.discard(node.id)
                gone.append(name)
                if progress is not None:
                    progress.line(f"corrupt {node.name}  {node.id[:12]}: {problems[0]}; "
                                  "rebuilding it")
    return gone


def remote_nodes(graph: Graph, remote: RemoteCache | None) -> dict[str, bool]:
    """Which nodes the remote holds (every node asked; none without a remote)."""
    if remote is None:
        return {}
    have = remote.which(n.id for n in graph.nodes.values())
    return {n.name: have[n.id] for n in graph.nodes.values()}


def resolve(graph: Graph, cache: Cache, remote: RemoteCache | None,
            progress: Liner, targets: list[str] | None = None) -> Resolution:
    """Fetch what the build needs from the remote and plan the rest (see the module)."""
    try:
        on_remote = remote_nodes(graph, remote)
    except RemoteError as exc:
        progress.line(f"remote cache {remote.url if remote else ''} unusable, building "
                      f"without it: {exc.message}")
        on_remote, remote = {}, None
    available = dict(on_remote)
    fetched: dict[str, str] = {}
    damaged: list[str] = []

    def pushed(state: Mapping[str, State]) -> set[str]:
        """The local objects the remote lacks (the executor uploads them)."""
        if remote is None or not remote.writable:
            return set()
        return {name for name, s in state.items()
                if s == "local" and not on_remote.get(name) and name not in fetched}

    verified: set[str] = set()
    while True:
        state = states(graph, local_nodes(graph, cache), available, targets)
        reads = opened(graph, state, targets) | pushed(state)
        check = {n for n in reads if state[n] == "local"} - verified
        verified |= check
        if checked(graph, cache, check, progress):  # a damaged object is no object: again
            continue
        todo = [name for name, s in state.items() if s == "remote" and name not in fetched]
        if not todo or remote is None:
            break
        for name in todo:  # dependency order
            node = graph.nodes[name]
            try:
                with cache.lock(node.id):
                    if cache.has(node.id):  # another build fetched or made it meanwhile
                        fetched[name] = "fetched by another build"
                        continue
                    fetched[name] = remote.fetch(node.id, cache.store).describe(
                        "from the remote cache:")
            except DamagedObject as exc:
                damaged.append(f"{name}: {exc.message}")
                progress.line(f"damaged remote object {name}: {exc.message}; building it "
                              "here" + ("" if remote.writable else " (read-only: the remote "
                                        "copy stays)"))
                available[name] = False
            except (RemoteError, OSError) as exc:
                why = exc.message if isinstance(exc, RemoteError) else str(exc)
                progress.line(f"cannot fetch {name} from the remote cache: {why}; "
                              "building it here")
                available[name] = False
    keep = {name for name, s in state.items() if s != "unneeded"}
    return Resolution(graph=graph.subset(keep), state=state, remote=remote, fetched=fetched,
                      push=pushed(state), damaged=damaged)
