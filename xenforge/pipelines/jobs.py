"""A build graph cut into CI jobs: one job per heavy node (a compiler, a debootstrap, an
image), the light nodes grouped, ``needs`` following the graph, and one release job per
recipe that exports its artifacts (and boots and tests it when it has a dom0 image). Jobs
exchange nodes through the remote cache only, so any runner can take any job.

Grouping: a light node that only one heavy node's job consumes is built in that job; the
others are grouped by the set of heavy nodes upstream of them (the sources and trees that
several compiles share are one ``prepare`` job). A group's members depend only on groups
with fewer heavy nodes upstream and on heavy jobs upstream of them, so the jobs form a DAG.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from xenforge.plan.graph import Graph
from xenforge.stages import get_stage


@dataclass
class Job:
    name: str  # unique; what the CI engine shows
    nodes: list[str] = field(default_factory=list)  # built here, in dependency order
    needs: list[str] = field(default_factory=list)  # job names
    recipe: str | None = None  # for a release job: the recipe it exports
    test: bool = False  # a release job that boots the image and runs the suites

    @property
    def slug(self) -> str:
        """The name as an identifier (GitHub job ids: letters, digits, ``-``, ``_``)."""
        return re.sub(r"[^A-Za-z0-9_-]+", "-", self.name).strip("-")


def _own_job(graph: Graph, name: str) -> bool:
    stage = get_stage(graph.nodes[name].stage)
    return stage.heavy or stage.own_job


def build_jobs(graph: Graph) -> list[Job]:
    """The build jobs of ``graph``, in an order where every job comes after its needs."""
    heavy = [n for n in graph.nodes if _own_job(graph, n)]
    upstream: dict[str, frozenset[str]] = {}  # heavy nodes a node depends on, directly or not
    for node in graph.nodes.values():
        ups: set[str] = set()
        for dep in node.deps():
            ups |= upstream[dep]
            if dep in heavy:
                ups.add(dep)
        upstream[node.name] = frozenset(ups)
    consumers: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for node in graph.nodes.values():
        for dep in node.deps():
            consumers[dep].append(node.name)

    job_of = {n: n for n in heavy}
    group_key: dict[str, frozenset[str]] = {}  # group job -> its key
    for name in reversed(list(graph.nodes)):  # consumers first
        if name in job_of:
            continue
        users = {job_of[c] for c in consumers[name]}
        if len(users) == 1 and next(iter(users)) in heavy:
            job_of[name] = next(iter(users))
            continue
        key = upstream[name]
        group = next((g for g, k in group_key.items() if k == key), None)
        if group is None:
            group = f"group:{len(group_key)}"  # named below, once its members are known
            group_key[group] = key
        job_of[name] = group

    jobs: dict[str, Job] = {}
    for name in graph.nodes:  # dependency order: a job appears once its first node does
        jobs.setdefault(job_of[name], Job(job_of[name])).nodes.append(name)
    for job in jobs.values():
        needs = {job_of[dep] for n in job.nodes for dep in graph.nodes[n].deps()}
        job.needs = [j for j in jobs if j in needs and j != job.name]
    ordered = _topological(list(jobs.values()))
    names = {}
    for job in ordered:  # groups: "prepare" (nothing heavy upstream) or their last node
        if job.name in group_key:
            names[job.name] = "prepare" if not group_key[job.name] else job.nodes[-1]
    for job in ordered:
        job.name = names.get(job.name, job.name)
        job.needs = [names.get(j, j) for j in job.needs]
    return ordered


def release_jobs(graph: Graph, builds: list[Job], recipes: dict[str, bool]) -> list[Job]:
    """One job per recipe (name -> whether it is booted and tested) that needs every build
    job holding one of the recipe's nodes."""
    out = []
    for recipe, test in recipes.items():
        mine = {name for name in graph.nodes
                if any(r == recipe for r, _own in graph.origins_of(name))}
        needs = {job.name for job in builds if mine & set(job.nodes)}
        # the last of them only: a job another one of them needs is done before that one
        implied = set().union(*(_ancestors(builds, n) for n in needs))
        out.append(Job(f"release:{recipe}", needs=[j.name for j in builds
                                                   if j.name in needs - implied],
                       recipe=recipe, test=test))
    return out


def _ancestors(jobs: list[Job], name: str) -> set[str]:
    by_name = {j.name: j for j in jobs}
    seen: set[str] = set()
    todo = list(by_name[name].needs)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(by_name[n].needs)
    return seen


@dataclass
class Pipeline:
    """What the engine-specific writers turn into a file."""

    recipes: dict[str, str]  # recipe name -> its argument as jobs pass it (repo-relative)
    jobs: list[Job]  # build jobs, then release jobs; each after its needs
    remote_cache: str | None = None  # written into the file; else the CI variable
    setup: str | None = None  # a command run before each job's build (installing xenforge)
    command: str = "xenforge"  # how jobs call xenforge (the $XENFORGE variable's default)

    def script(self, job: Job) -> str:
        """The job's command line (``$XENFORGE`` is the variable of that name)."""
        if job.recipe is not None:  # a release job: export (and test) one recipe
            arg = self.recipes[job.recipe]
            return " ".join(["$XENFORGE", "build", "--plain", "-o", "out",
                             *(["--test"] if job.test else []), shlex.quote(arg)])
        targets = [f"--target {shlex.quote(n)}" for n in job.nodes]
        return " ".join(["$XENFORGE", "build", "--plain", *targets,
                         *(shlex.quote(r) for r in self.recipes.values())])



def _topological(jobs: list[Job]) -> list[Job]:
    """``jobs`` with every job after the jobs it needs (stable otherwise)."""
    by_name = {j.name: j for j in jobs}
    done: list[Job] = []
    state: dict[str, int] = {}

    def visit(job: Job) -> None:
        if state.get(job.name) == 2:
            return
        if state.get(job.name) == 1:
            raise AssertionError(f"the jobs have a cycle through {job.name}")
        state[job.name] = 1
        for need in job.needs:
            visit(by_name[need])
        state[job.name] = 2
        done.append(job)

    for job in jobs:
        visit(job)
    return done
