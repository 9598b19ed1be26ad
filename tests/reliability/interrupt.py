"""The interruption suite: every node of a recipe's graph is interrupted with real signals
at random points of its build, and the build after that must give what an uninterrupted
build gives, use no partial object, and leave nothing on the host.

For each selected node and each signal the harness

1. makes a fresh cache state in which that node is not built and its inputs are (their
   objects hard-linked from a reference cache, which an uninterrupted build filled first);
2. starts ``xenforge build RECIPE --target NODE --progress json`` in its own process group
   (as a shell starts a job), waits for the node's ``started`` event and sleeps a random
   fraction of the node's measured duration;
3. sends the signal: SIGKILL to the xenforge process, SIGINT to its process group (what a
   terminal does on Ctrl-C); SIGINT must end xenforge with exit 130;
4. checks what is left on the host below the harness's directory: loop devices
   (``losetup``), mounts (``/proc/mounts``), processes whose cwd, root, executable, command
   line or ``XENFORGE_OWNER`` refer to it (chroot processes, QEMU); and whether the node's
   object is in the store (then it must be complete and equal the reference);
5. repeats 2-4 on the same cache (``--kills`` times: each build recovers from the one killed
   before it), then builds to the end and compares the sha256 of every file of the node's
   object and of every exported artifact with the reference; after that build nothing may
   be left on the host, nor in the cache's ``tmp/`` and ``work/``.

Before the trials each node is built once more, uninterrupted, from the same fresh state
(the *control*): its duration is what the kill points are drawn from (a warm compiler
cache, as in the trials), and files that differ between two uninterrupted builds (a
buildroot debootstrapped from a live mirror) are reported as such rather than blamed on
the interruption.

The full run (the hypervisor-only recipe: source, tree, buildroot, hypervisor, toolstack,
xen-debs), with a cache of its own - on 2 shared cores at the lowest priority the cold
reference build took 49 min and the 24 kills with their rebuilds 31 min (2026-12-02)::

    echo 19 > /proc/$$/autogroup     # share the cores politely
    .venv/bin/python tests/reliability/interrupt.py --recipe recipes/xen-hypervisor.yaml \\
        --cache /var/tmp/xf-interrupt --kills 2 --signals KILL,INT --seed 1 \\
        --json /var/tmp/xf-interrupt-report/interrupt.json
    rm -rf /var/tmp/xf-interrupt

``--stages source,tree`` limits it to those stages (or node names); the image stages of the
default recipe: ``--recipe recipes/xen-host.yaml --stages rootfs,disk,iso`` (their inputs,
two kernels among them, are built for the reference first). It writes the JSON and a
Markdown table next to it (``interrupt.md``) and exits 1 if any trial found a problem.
``tests/unit/test_interrupt.py`` runs the same functions over the engine's test stages.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from xenforge.core import leftovers as xf_leftovers  # noqa: E402

XENFORGE = REPO / ".venv" / "bin" / "xenforge"
SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "TERM": signal.SIGTERM}
#: what xenforge must exit with after each signal (SIGKILL: killed, it cannot answer)
EXPECTED_RC = {"KILL": -signal.SIGKILL, "INT": 130, "TERM": 130}
#: the command line of a build's watchdog (``python -m xenforge.build.reaper CACHE``)
WATCHDOG = re.compile(rb"\0-m\0xenforge(\.\w+)*\.reaper\0")


# -- running xenforge and reading its JSON progress ------------------------------------------

class Events:
    """The JSON progress events of a running build, read as they come (a thread keeps the
    pipe drained, so the build never blocks on its output)."""

    def __init__(self, stream: Any) -> None:
        self.items: list[dict[str, Any]] = []
        self.other: list[str] = []  # lines that are not JSON (should be none)
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, ""):
            line = raw.strip()
            if not line:
                continue
            with self._cond:
                try:
                    event = json.loads(line)
                except ValueError:
                    self.other.append(line)
                else:
                    event["_seen"] = time.monotonic()
                    self.items.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def find(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        with self._cond:
            return next((e for e in self.items if pred(e)), None)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float
             ) -> dict[str, Any] | None:
        """The first event ``pred`` accepts, waiting up to ``timeout`` seconds (None: the
        build ended or the time ran out first)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hit = next((e for e in self.items if pred(e)), None)
                left = deadline - time.monotonic()
                if hit is not None or self._eof or left <= 0:
                    return hit
                self._cond.wait(min(left, 0.5))

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)


def share_autogroup(pid: int) -> None:
    """Give a process in a new session (a scheduler autogroup of its own) the harness's
    autogroup nice value, so that ``echo 19 > /proc/$$/autogroup`` holds for the builds."""
    with contextlib.suppress(OSError, IndexError):
        nice = Path("/proc/self/autogroup").read_text().split()[-1]
        if nice != "0":
            Path(f"/proc/{pid}/autogroup").write_text(nice)


def node_event(kind: str, node: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == kind and e.get("node") == node


@dataclass
class Xenforge:
    """How to run xenforge: the command (``.venv/bin/xenforge``, or a driver script that
    registers test stages) and what to add to its environment."""

    command: Sequence[str] = (str(XENFORGE),)
    env: Mapping[str, str] = field(default_factory=dict)

    def argv(self, cache: Path, *args: str) -> list[str]:
        return [*self.command, "--cache-dir", str(cache), *args]

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XENFORGE_")}
        env.update(self.env)
        return env

    def start(self, cache: Path, recipe: Path, targets: Iterable[str], out: Path
              ) -> Running:
        """Start a build in its own process group (as a shell starts a job); its stderr
        goes to a file beside ``out``."""
        argv = self.argv(cache, "build", str(recipe), "--progress", "json", "-o", str(out))
        for t in targets:
            argv += ["--target", t]
        errors = out.with_name(out.name + ".stderr")
        errors.parent.mkdir(parents=True, exist_ok=True)
        with open(errors, "w") as err:
            proc = subprocess.Popen(argv, cwd=REPO, env=self.environ(), text=True,
                                    stdout=subprocess.PIPE, stderr=err,
                                    start_new_session=True)
        share_autogroup(proc.pid)
        assert proc.stdout is not None
        return Running(proc, Events(proc.stdout), errors)

    def build(self, cache: Path, recipe: Path, targets: Iterable[str], out: Path,
              timeout: float) -> Outcome:
        """Build to the end (no signal)."""
        t0 = time.monotonic()
        run = self.start(cache, recipe, targets, out)
        note = ""
        try:
            run.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
            note = f"\n[harness] no result after {timeout:.0f}s; killed"
        run.events.join()
        return Outcome(run.proc.returncode, run.events, time.monotonic() - t0,
                       run.stderr() + note)

    def plan(self, cache: Path, recipe: Path) -> dict[str, NodeInfo]:
        res = subprocess.run(self.argv(cache, "plan", str(recipe), "--json"), cwd=REPO,
                             env=self.environ(), capture_output=True, text=True, timeout=300,
                             check=False)
        if res.returncode != 0:
            raise RuntimeError(f"xenforge plan failed: {res.stderr.strip()}")
        nodes = {}
        for n in json.loads(res.stdout)["nodes"]:
            deps: list[str] = []
            for ref in n["inputs"].values():
                deps += [ref] if isinstance(ref, str) else list(ref)
            nodes[n["name"]] = NodeInfo(n["name"], n["id"], n["stage"], tuple(deps),
                                        n.get("options") or {})
        return nodes


@dataclass
class Running:
    proc: subprocess.Popen[str]
    events: Events
    errors: Path

    def stderr(self) -> str:
        try:
            return self.errors.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Outcome:
    rc: int
    events: Events
    seconds: float
    stderr: str = ""

    def status(self, node: str) -> str:
        """How the build reported ``node``: built, failed, cached, or '' (not at all)."""
        fin = self.events.find(node_event("finished", node))
        if fin is not None:
            return str(fin.get("status", ""))
        return "cached" if self.events.find(node_event("cached", node)) else ""

    def seconds_of(self, node: str) -> float | None:
        fin = self.events.find(node_event("finished", node))
        return float(fin["seconds"]) if fin is not None and "seconds" in fin else None

    def artifacts(self, node: str) -> dict[str, str]:
        return {str(e["path"]): str(e["sha256"]) for e in self.events.items
                if e.get("event") == "artifact" and e.get("node") == node}


@dataclass(frozen=True)
class NodeInfo:
    name: str
    id: str
    stage: str
    deps: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def upstream(nodes: Mapping[str, NodeInfo], name: str) -> list[str]:
    """Every node ``name`` needs, transitively (not itself)."""
    seen: list[str] = []
    todo = list(nodes[name].deps)
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.append(dep)
            todo.extend(nodes[dep].deps)
    return seen


# -- cache states -----------------------------------------------------------------------------

def object_dir(cache: Path, node_id: str) -> Path:
    return cache / "objects" / node_id[:2] / node_id


def fresh_state(reference: Path, cache: Path, nodes: Mapping[str, NodeInfo], node: str) -> None:
    """``cache`` as it is before ``node`` is built: the objects of everything it needs (hard
    links into the reference cache: stages read inputs, never write them), nothing else."""
    remove_tree(cache)
    for dep in upstream(nodes, node):
        src = object_dir(reference, nodes[dep].id)
        if not (src / "manifest.json").is_file():
            raise RuntimeError(f"the reference cache lacks {dep} ({src})")
        dst = object_dir(cache, nodes[dep].id)
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", "--link", str(src), str(dst)], check=True)


def digest(out: Path) -> dict[str, str]:
    """Every entry below an object's ``out/``: a file's sha256 and mode, a symlink's
    target, a directory's mode, a special file's kind and device."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(out):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, out)
            st = os.lstat(path)
            mode = f"{stat.S_IMODE(st.st_mode):o}"
            if stat.S_ISLNK(st.st_mode):
                found[rel] = "link " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = f"dir {mode}"
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                found[rel] = f"{h.hexdigest()} {mode}"
            else:
                found[rel] = f"special {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} {mode}"
    return found


def differences(want: Mapping[str, str], got: Mapping[str, str]) -> list[str]:
    """The paths whose entries differ (missing and extra ones included), sorted."""
    return sorted(p for p in set(want) | set(got) if want.get(p) != got.get(p))


def verify_object(cache: Path, node_id: str) -> list[str]:
    """What xenforge's own full check finds wrong with a stored object ([]: complete)."""
    from xenforge.cache.store import LocalStore

    return LocalStore(cache / "objects", cache / "tmp").verify(node_id, full=True)


def debris(cache: Path) -> list[str]:
    """What a build left in the cache's staging (``tmp/``) and ``work/`` areas."""
    found = []
    for area in ("tmp", "work"):
        d = cache / area
        if d.is_dir():
            found += [f"{area}/{p.name}" for p in sorted(d.iterdir())]
    return found


def stray_downloads(cache: Path) -> list[str]:
    """In-flight files (``.part-*``, ``.tmp-*``) in the cache's persistent scratch dirs: a
    killed download's; never read (the download store deletes them after a day)."""
    found = []
    scratch = cache / "scratch"
    if scratch.is_dir():
        for dirpath, _dirs, files in os.walk(scratch):
            for name in files:
                if name.startswith((".part-", ".tmp-")):
                    found.append(os.path.relpath(os.path.join(dirpath, name), cache))
    return found


def remove_tree(path: Path) -> None:
    """Delete a cache of the harness; mounts and loop devices below it released first."""
    if path.exists():
        xf_leftovers.release(path)
        xf_leftovers.remove_tree(path)


# -- what is left on the host -----------------------------------------------------------------

@dataclass
class Leftovers:
    loops: list[str] = field(default_factory=list)  # "/dev/loop3 -> backing file"
    mounts: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)  # "pid comm (why)"
    qemu: list[str] = field(default_factory=list)
    #: a killed build's watchdog still cleaning up (xenforge.build.reaper): not a leftover
    #: while it works, but it must end
    watchdog: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.loops or self.mounts or self.processes or self.qemu)

    def count(self) -> int:
        return len(self.loops) + len(self.mounts) + len(self.processes) + len(self.qemu)

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (("loop", self.loops), ("mount", self.mounts),
                                              ("process", self.processes),
                                              ("qemu", self.qemu), ("watchdog", self.watchdog))
                 if v]
        return ", ".join(parts) or "none"


def _under(path: str, root: str) -> bool:
    path = path.removesuffix(" (deleted)")
    return path == root or path.startswith(root.rstrip("/") + "/")


def _octal_unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def host_leftovers(root: Path) -> Leftovers:
    """Loop devices, mounts and processes that refer to ``root`` - found with the host's
    own tools and files, not with xenforge's leftovers module (which is under test)."""
    base = os.path.realpath(root)
    found = Leftovers()
    res = subprocess.run(["losetup", "--list", "--noheadings", "--raw", "--output",
                          "NAME,BACK-FILE"], capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        name, _, backing = line.partition(" ")
        backing = backing.strip().encode().decode("unicode_escape")  # raw: \x20 for space
        if _under(backing, base):
            found.loops.append(f"{name} -> {backing}")
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1 and _under(_octal_unescape(fields[1]), base):
            found.mounts.append(_octal_unescape(fields[1]))
    mine = _ancestors()
    owner = f"XENFORGE_OWNER={base}/".encode()
    # the path itself, not a longer name it begins (another run's /var/tmp/xf-interrupt-ci-x)
    mentions = re.compile(re.escape(base.encode()) + rb"(?=[/\0=:,;\s'\"]|$)")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        pid = int(entry.name)
        why = []
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            for what in ("cwd", "root", "exe"):
                with contextlib.suppress(OSError):
                    if _under(os.readlink(f"/proc/{pid}/{what}"), base):
                        why.append(what)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if mentions.search(cmdline):
                why.append("cmdline")
            with contextlib.suppress(OSError):
                if owner in Path(f"/proc/{pid}/environ").read_bytes():
                    why.append("owner")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile
        if not why or state in ("Z", "X"):
            continue
        text = f"{pid} {comm} ({', '.join(why)}): " + cmdline.replace(b"\0", b" ").decode(
            "utf-8", "replace")[:160].strip()
        if comm.startswith("qemu-system"):
            found.qemu.append(text)
        elif WATCHDOG.search(cmdline):
            found.watchdog.append(text)
        else:
            found.processes.append(text)
    return found


def clean_host(root: Path, left: Leftovers) -> None:
    """Stop what a trial left (after recording it), so that the next trial starts clean."""
    for line in left.processes + left.qemu + left.watchdog:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    time.sleep(0.5)
    xf_leftovers.release(root)


# -- one trial: a node, a signal, several kills, then a build to the end ------------------

@dataclass
class Kill:
    attempt: int
    after: float  # seconds after the node's started event that the signal was sent
    fraction: float  # of the expected duration
    rc: int | None = None
    exit_seconds: float = 0.0  # from the signal to the end of xenforge
    doing: str = ""  # the last command in the node's log when the signal was sent
    left: Leftovers = field(default_factory=Leftovers)  # once xenforge ended (and settled)
    at_exit: Leftovers = field(default_factory=Leftovers)  # SIGKILL: the moment it died
    settled_seconds: float = 0.0  # SIGKILL: until nothing was left (or ``settle``)
    watchdog_seconds: float = 0.0  # SIGKILL: until the watchdog had finished
    debris: list[str] = field(default_factory=list)
    committed: bool = False  # the node's object was in the store after the kill
    problems: list[str] = field(default_factory=list)


@dataclass
class Trial:
    node: str
    stage: str
    signal: str
    kills: list[Kill] = field(default_factory=list)
    misses: int = 0  # builds that finished the node before the signal went out
    rebuild_status: str = ""
    rebuild_rc: int | None = None
    rebuild_seconds: float = 0.0
    left_after_rebuild: Leftovers = field(default_factory=Leftovers)
    debris_after_rebuild: list[str] = field(default_factory=list)
    equal: bool = False
    differing: list[str] = field(default_factory=list)
    nondeterministic: list[str] = field(default_factory=list)  # differ in the control too
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong

    @property
    def ok(self) -> bool:
        return not self.problems and not any(k.problems for k in self.kills)


@dataclass
class Reference:
    """What uninterrupted builds gave: per node, its object's digest, its exported
    artifacts, its duration; and which files differ between two uninterrupted builds."""

    nodes: dict[str, NodeInfo]
    digests: dict[str, dict[str, str]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    control_seconds: dict[str, float] = field(default_factory=dict)
    nondeterministic: dict[str, list[str]] = field(default_factory=dict)
    build_seconds: float = 0.0


@dataclass
class Config:
    recipe: Path
    base: Path  # everything of the harness lives below: caches, outputs
    xenforge: Xenforge = field(default_factory=Xenforge)
    kills: int = 2
    signals: tuple[str, ...] = ("KILL", "INT")
    seed: int = 0
    stages: tuple[str, ...] = ()  # stage or node names ('' : every node)
    control: bool = True
    build_timeout: float = 7200.0
    exit_timeout: float = 180.0  # after SIGINT, xenforge must end within this
    settle: float = 30.0  # after SIGKILL, what it left must be gone within this
    watchdog_timeout: float = 600.0  # ... and the watchdog done (work dirs deleted)
    log: Callable[[str], None] = print

    @property
    def reference_cache(self) -> Path:
        return self.base / "reference"


def selected(cfg: Config, nodes: Mapping[str, NodeInfo]) -> list[str]:
    if not cfg.stages:
        return list(nodes)
    unknown = [s for s in cfg.stages
               if s not in nodes and s not in {n.stage for n in nodes.values()}]
    if unknown:
        raise SystemExit(f"the recipe has no stage or node {', '.join(unknown)}; its nodes: "
                         + ", ".join(f"{n.name} ({n.stage})" for n in nodes.values()))
    return [n.name for n in nodes.values() if n.name in cfg.stages or n.stage in cfg.stages]


def _stored_seconds(cache: Path, node_id: str) -> float:
    """The build time an object's manifest records (0 if it says none)."""
    try:
        return float(json.loads((object_dir(cache, node_id) / "manifest.json").read_text())
                     .get("seconds", 0.0))
    except (OSError, ValueError, TypeError):
        return 0.0


def build_reference(cfg: Config, nodes: Mapping[str, NodeInfo], names: list[str]) -> Reference:
    """Build the selected nodes (and what they need) uninterrupted; then, unless
    ``cfg.control`` is off, build each once more from its fresh state."""
    ref = Reference(dict(nodes))
    cfg.log(f"reference build of {', '.join(names)} in {cfg.reference_cache}")
    outcome = cfg.xenforge.build(cfg.reference_cache, cfg.recipe, names,
                                 cfg.base / "out" / "reference", cfg.build_timeout)
    if outcome.rc != 0:
        raise RuntimeError(f"the reference build failed (exit {outcome.rc}): "
                           f"{outcome.stderr.strip()[-2000:]}")
    ref.build_seconds = outcome.seconds
    for name in names:
        node = nodes[name]
        if not (object_dir(cfg.reference_cache, node.id) / "manifest.json").is_file():
            raise RuntimeError(f"the reference build did not store {name}")
        ref.digests[name] = digest(object_dir(cfg.reference_cache, node.id) / "out")
        ref.artifacts[name] = outcome.artifacts(name)
        ref.seconds[name] = outcome.seconds_of(name) or _stored_seconds(
            cfg.reference_cache, node.id)  # built by an earlier run: what it took then
    cfg.log(f"reference: {outcome.seconds:.0f}s; " + ", ".join(
        f"{n} {ref.seconds[n]:.1f}s" for n in names))
    if cfg.control:
        for name in names:
            cache = cfg.base / "control"
            fresh_state(cfg.reference_cache, cache, nodes, name)
            done = cfg.xenforge.build(cache, cfg.recipe, [name], cfg.base / "out" / "control",
                                      cfg.build_timeout)
            if done.rc != 0 or done.status(name) != "built":
                raise RuntimeError(f"the control build of {name} failed (exit {done.rc}, "
                                   f"{done.status(name)!r}): {done.stderr.strip()[-2000:]}")
            ref.control_seconds[name] = done.seconds_of(name) or 0.0
            ref.nondeterministic[name] = differences(
                ref.digests[name], digest(object_dir(cache, nodes[name].id) / "out"))
            cfg.log(f"control {name}: {ref.control_seconds[name]:.1f}s, "
                    f"{len(ref.nondeterministic[name])} file(s) differ from the reference")
            remove_tree(cache)
    return ref


def _last_command(log: str) -> str:
    """The last command line (``$ ...``, a sandboxed one without its bubblewrap prefix)
    or note in a node's log."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - (16 << 20)))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(tail):
        if line.startswith(("$ ", "[xenforge] ")):
            if line.startswith("$ bwrap ") and " -- " in line:
                line = "$ [buildroot] " + line.split(" -- ", 1)[1]
            return line[:160]
    return ""


def interrupt_once(cfg: Config, ref: Reference, trial: Trial, cache: Path, out: Path,
                   expected: float, rng: random.Random, attempt: int) -> Kill | float | None:
    """One build of ``trial.node`` on ``cache``, signalled at a random point of the node.
    A miss (the node finished before the signal went out) returns how long the node took,
    so that the next attempt aims inside it; None if the node never started."""
    node = ref.nodes[trial.node]
    run = cfg.xenforge.start(cache, cfg.recipe, [trial.node], out)
    proc, events = run.proc, run.events
    try:
        started = events.wait(lambda e: node_event("started", trial.node)(e)
                              or node_event("finished", trial.node)(e)
                              or node_event("cached", trial.node)(e)
                              or e.get("event") == "summary", cfg.build_timeout)
        if started is None or started.get("event") != "started":
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            trial.problems.append(f"attempt {attempt}: the node never started "
                                  f"({started.get('event') if started else 'no event'}, "
                                  f"exit {proc.returncode}): {run.stderr().strip()[-500:]}")
            return None
        fraction = rng.uniform(0.02, 0.98)
        t0 = started["_seen"]
        deadline = t0 + fraction * expected
        done = events.wait(node_event("finished", trial.node),
                           max(0.0, deadline - time.monotonic()))
        if done is not None:  # it ended before the signal: no kill
            proc.wait(timeout=cfg.build_timeout)
            return max(0.0, float(done["_seen"]) - float(t0))
        kill = Kill(attempt=attempt, after=round(time.monotonic() - t0, 2),
                    fraction=round(fraction, 3), doing=_last_command(str(started.get("log"))))
        sent = time.monotonic()
        if trial.signal == "KILL":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, SIGNALS[trial.signal])  # the whole job, as a terminal does
        try:
            proc.wait(timeout=cfg.exit_timeout)
        except subprocess.TimeoutExpired:
            kill.problems.append(f"xenforge was still running {cfg.exit_timeout:.0f}s after "
                                 f"SIG{trial.signal}: {_last_command(str(started.get('log')))}")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill.exit_seconds = round(time.monotonic() - sent, 2)
        kill.rc = proc.returncode
        err = run.stderr()
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        events.join()
    if kill.rc != EXPECTED_RC[trial.signal]:
        kill.problems.append(f"exit {kill.rc} after SIG{trial.signal}, not "
                             f"{EXPECTED_RC[trial.signal]}: {err.strip()[-500:]}")
    if trial.signal != "KILL" and "Traceback" in err:
        kill.problems.append(f"a traceback after SIG{trial.signal}: {err.strip()[-800:]}")
    kill.left = host_leftovers(cfg.base)
    if trial.signal == "KILL":  # xenforge cannot clean up; its watchdog must, at once
        kill.at_exit = kill.left
        gone = time.monotonic()
        while kill.left and time.monotonic() - gone < cfg.settle:
            time.sleep(0.2)
            kill.left = host_leftovers(cfg.base)
        kill.settled_seconds = round(time.monotonic() - gone, 1)
        while kill.left.watchdog and time.monotonic() - gone < cfg.watchdog_timeout:
            time.sleep(0.5)  # deleting a big work dir takes a while at a low priority
            kill.left.watchdog = host_leftovers(cfg.base).watchdog
        kill.watchdog_seconds = round(time.monotonic() - gone, 1)
    if kill.left.watchdog:
        kill.problems.append(f"the watchdog still runs after SIG{trial.signal}: "
                             + "; ".join(kill.left.watchdog))
    if kill.left:
        kill.problems.append(f"left after SIG{trial.signal}"
                             + (f" (after {cfg.settle:.0f}s)" if trial.signal == "KILL" else "")
                             + f": {kill.left.summary()}: "
                             + "; ".join((kill.left.processes + kill.left.mounts
                                          + kill.left.loops + kill.left.qemu)[:5]))
    if kill.left.qemu:
        kill.problems.append("QEMU left running: " + "; ".join(kill.left.qemu))
    kill.debris = debris(cache)
    if (object_dir(cache, node.id) / "manifest.json").exists():
        kill.committed = True  # committed before the signal took effect: it must be whole
        problems = verify_object(cache, node.id)
        diff = [p for p in differences(ref.digests[trial.node],
                                       digest(object_dir(cache, node.id) / "out"))
                if p not in ref.nondeterministic.get(trial.node, [])]
        if problems or diff:
            kill.problems.append(f"a partial object of {trial.node} is in the store: "
                                 + "; ".join((problems + diff)[:5]))
    for other, info in ref.nodes.items():  # nothing downstream may appear either
        if other != trial.node and other not in upstream(ref.nodes, trial.node) and \
                object_dir(cache, info.id).exists():
            kill.problems.append(f"{other} is in the store though {trial.node} is not built")
    return kill


def run_trial(cfg: Config, ref: Reference, name: str, sig: str, rng: random.Random) -> Trial:
    node = ref.nodes[name]
    trial = Trial(node=name, stage=node.stage, signal=sig)
    cache = cfg.base / "trials" / f"{name.replace(':', '-').replace('/', '_')}-{sig}"
    out = cache.parent / (cache.name + ".out")
    expected = ref.control_seconds.get(name) or ref.seconds.get(name) or 1.0
    fresh_state(cfg.reference_cache, cache, ref.nodes, name)
    attempt = 0
    while len(trial.kills) < cfg.kills and attempt < cfg.kills + 6 and not trial.problems:
        attempt += 1
        kill = interrupt_once(cfg, ref, trial, cache, out, expected, rng, attempt)
        if kill is None:
            break  # the problem is recorded
        if isinstance(kill, float):
            trial.misses += 1
            # quicker than the reference measured (a warm page cache, a stored download):
            # aim inside what this build took; a random point of it still lands
            expected = min(expected * 0.6, kill)
            fresh_state(cfg.reference_cache, cache, ref.nodes, name)
            continue
        trial.kills.append(kill)
        cfg.log(f"  {name} SIG{sig} #{len(trial.kills)}: at {kill.after:.1f}s "
                f"({kill.fraction:.0%}), exit {kill.rc} after {kill.exit_seconds:.1f}s, "
                + (f"at death {kill.at_exit.summary()}, after {kill.settled_seconds}s "
                   if sig == "KILL" else "")
                + f"left {kill.left.summary()}, debris {len(kill.debris)}"
                + (", committed" if kill.committed else "")
                + (f"; PROBLEM {kill.problems}" if kill.problems else ""))
        if kill.left or kill.left.watchdog:
            clean_host(cfg.base, kill.left)  # recorded as a problem; do not blame the next
        if kill.committed:  # nothing left to interrupt in this state: start over
            fresh_state(cfg.reference_cache, cache, ref.nodes, name)
    if len(trial.kills) < cfg.kills and not trial.problems:
        trial.problems.append(f"only {len(trial.kills)} of {cfg.kills} kills landed "
                              f"({trial.misses} builds finished the node first)")
    committed_last = bool(trial.kills) and trial.kills[-1].committed
    done = cfg.xenforge.build(cache, cfg.recipe, [name], out, cfg.build_timeout)
    trial.rebuild_rc, trial.rebuild_seconds = done.rc, round(done.seconds, 1)
    trial.rebuild_status = done.status(name)
    if done.rc != 0:
        trial.problems.append(f"the build after the kills failed (exit {done.rc}): "
                              f"{done.stderr.strip()[-800:]}")
    elif trial.rebuild_status != "built" and not committed_last:
        trial.problems.append(f"the build after the kills did not build {name} "
                              f"({trial.rebuild_status!r}): something of a killed build "
                              "was taken for it")
    trial.left_after_rebuild = host_leftovers(cfg.base)
    if trial.left_after_rebuild or trial.left_after_rebuild.watchdog:
        trial.problems.append("left after the build that followed: "
                              + trial.left_after_rebuild.summary() + ": "
                              + "; ".join((trial.left_after_rebuild.processes
                                           + trial.left_after_rebuild.mounts
                                           + trial.left_after_rebuild.loops
                                           + trial.left_after_rebuild.watchdog)[:5]))
        clean_host(cfg.base, trial.left_after_rebuild)
    trial.debris_after_rebuild = debris(cache)
    strays = stray_downloads(cache)
    if strays:
        trial.notes.append(f"{len(strays)} in-flight download file(s) of a killed build in "
                           "the scratch dir (never read; the download store deletes them "
                           "after a day): " + ", ".join(strays[:3]))
    if trial.debris_after_rebuild:
        trial.problems.append("left in the cache after a successful build: "
                              + ", ".join(trial.debris_after_rebuild[:5]))
    if done.rc == 0:
        got = digest(object_dir(cache, node.id) / "out")
        diff = differences(ref.digests[name], got)
        trial.nondeterministic = [p for p in diff if p in ref.nondeterministic.get(name, [])]
        trial.differing = [p for p in diff if p not in trial.nondeterministic]
        arts = done.artifacts(name)
        wrong = differences(ref.artifacts[name], arts)  # paths are NODE/REL in the export
        trial.differing += [f"artifact {a}" for a in wrong
                            if a.split("/", 1)[-1] not in ref.nondeterministic.get(name, [])]
        trial.equal = not trial.differing
        if not trial.equal:
            trial.problems.append(f"{len(trial.differing)} file(s) differ from the "
                                  f"uninterrupted build: {', '.join(trial.differing[:8])}")
        problems = verify_object(cache, node.id)
        if problems:
            trial.problems.append(f"the stored object fails its check: {problems[:3]}")
    cfg.log(f"  {name} SIG{sig}: rebuilt ({trial.rebuild_status}, {trial.rebuild_seconds}s)"
            f", equal {'yes' if trial.equal else 'NO'}, left "
            f"{trial.left_after_rebuild.summary()}"
            + (f"; PROBLEMS: {trial.problems}" if trial.problems else ""))
    remove_tree(cache)
    remove_tree(out)
    out.with_name(out.name + ".stderr").unlink(missing_ok=True)
    return trial


def run_suite(cfg: Config) -> dict[str, Any]:
    """The whole suite; returns the report (see :func:`write_report`)."""
    t0 = time.monotonic()
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started in the background by a shell without job control: the builds would
        # inherit SIGINT ignored (and rightly ignore it); a terminal's job has it default
        signal.signal(signal.SIGINT, signal.default_int_handler)
        cfg.log("SIGINT was ignored here (a background job): the builds get it back")
    cfg.base.mkdir(parents=True, exist_ok=True)
    before = host_leftovers(cfg.base)
    if before:
        raise RuntimeError(f"{cfg.base} already has leftovers: {before.summary()}")
    nodes = cfg.xenforge.plan(cfg.reference_cache, cfg.recipe)
    names = selected(cfg, nodes)
    ref = build_reference(cfg, nodes, names)
    rng = random.Random(cfg.seed)
    trials = []
    for name in names:
        for sig in cfg.signals:
            cfg.log(f"{name}: SIG{sig} x{cfg.kills}")
            trials.append(run_trial(cfg, ref, name, sig, rng))
    intact = {name: verify_object(cfg.reference_cache, nodes[name].id) for name in nodes
              if object_dir(cfg.reference_cache, nodes[name].id).exists()}
    report: dict[str, Any] = {
        "recipe": str(cfg.recipe), "kills": cfg.kills, "signals": list(cfg.signals),
        "seed": cfg.seed, "seconds": round(time.monotonic() - t0, 1),
        "reference_seconds": round(ref.build_seconds, 1),
        "nodes": {n: {"stage": nodes[n].stage, "id": nodes[n].id, "deps": nodes[n].deps,
                      "reference_seconds": ref.seconds.get(n),
                      "control_seconds": ref.control_seconds.get(n),
                      "files": len(ref.digests.get(n, {})),
                      "nondeterministic": ref.nondeterministic.get(n, [])} for n in names},
        "reference_damaged": {n: p for n, p in intact.items() if p},
        "trials": [dataclasses.asdict(t) | {"ok": t.ok} for t in trials],
    }
    report["ok"] = all(t.ok for t in trials) and not report["reference_damaged"]
    return report


# -- the report -------------------------------------------------------------------------------

def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Interruption suite: {report['recipe']}", "",
             f"{len(report['trials'])} trials, {report['kills']} kill(s) each, signals "
             f"{', '.join('SIG' + s for s in report['signals'])}, seed {report['seed']}; "
             f"reference build {report['reference_seconds']:.0f}s, whole run "
             f"{report['seconds'] / 60:.1f} min; overall: "
             f"{'OK' if report['ok'] else 'PROBLEMS'}", "",
             "| node | stage | signal | kills | killed at (s after start, % of run) | exit "
             "| left after kill (SIGKILL: at death -> settled) | left after rebuild "
             "| debris after rebuild | rebuilt "
             "| equal | problems |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in report["trials"]:
        kills = t["kills"]
        at = ", ".join(f"{k['after']:.1f} ({k['fraction']:.0%})" for k in kills) or "-"
        rcs = ", ".join(str(k["rc"]) for k in kills) or "-"
        left = ", ".join((f"{_left_summary(k['at_exit'])} -> " if t["signal"] == "KILL"
                          else "") + _left_summary(k["left"]) for k in kills) or "-"
        problems = [p for k in kills for p in k["problems"]] + t["problems"]
        lines.append(
            f"| {t['node']} | {t['stage']} | SIG{t['signal']} | {len(kills)}"
            + (f" (+{t['misses']} missed)" if t["misses"] else "")
            + f" | {at} | {rcs} | {left} | {_left_summary(t['left_after_rebuild'])} | "
            f"{len(t['debris_after_rebuild'])} | {t['rebuild_status'] or '-'} "
            f"{t['rebuild_seconds']:.0f}s | {'yes' if t['equal'] else 'NO'}"
            + (f" ({len(t['nondeterministic'])} nondeterministic)" if t["nondeterministic"]
               else "")
            + f" | {'; '.join(p.replace('|', '/')[:200] for p in problems) or '-'}"
            + "".join(f" (note: {n.replace('|', '/')[:160]})" for n in t.get("notes", []))
            + " |")
    lines += ["", "Kill points (the node's last command when the signal went out):", ""]
    for t in report["trials"]:
        for i, k in enumerate(t["kills"], 1):
            lines.append(f"- {t['node']} SIG{t['signal']} #{i}: {k['after']:.1f}s, "
                         f"`{k['doing'] or '-'}`" + (" (committed before the signal took "
                                                     "effect)" if k["committed"] else ""))
    return "\n".join(lines) + "\n"


def _left_summary(left: dict[str, list[str]]) -> str:
    parts = [f"{len(v)} {k}" for k, v in left.items() if v]
    return " ".join(parts) or "none"


def write_report(report: dict[str, Any], path: Path) -> Path:
    """The report as JSON at ``path`` and as a Markdown table beside it (``.md``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(report))
    return md


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", required=True, type=Path)
    p.add_argument("--cache", required=True, type=Path,
                   help="the harness's own directory (reference and trial caches)")
    p.add_argument("--kills", type=int, default=2, help="signals per node and signal kind")
    p.add_argument("--signals", default="KILL,INT", help="comma-separated: KILL, INT, TERM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default="", help="comma-separated stage or node names")
    p.add_argument("--json", type=Path, required=True, help="the report (and a .md beside it)")
    p.add_argument("--no-control", action="store_true",
                   help="skip the second uninterrupted build of each node")
    p.add_argument("--xenforge", default=str(XENFORGE), help="the xenforge command")
    args = p.parse_args(argv)
    signals = tuple(s.strip().upper().removeprefix("SIG") for s in args.signals.split(","))
    bad = [s for s in signals if s not in SIGNALS]
    if bad:
        p.error(f"unknown signal {bad[0]} (use {', '.join(SIGNALS)})")
    base = args.cache.absolute()
    cfg = Config(recipe=args.recipe.absolute(), base=base, kills=args.kills, signals=signals,
                 seed=args.seed, control=not args.no_control,
                 stages=tuple(s for s in args.stages.split(",") if s),
                 xenforge=Xenforge((args.xenforge,),
                                   {"XENFORGE_CCACHE_DIR": str(base / "ccache")}),
                 log=lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True))
    report = run_suite(cfg)
    md = write_report(report, args.json)
    print(md.read_text())
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
