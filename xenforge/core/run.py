"""THE subprocess runner. Every external command xenforge starts goes through :func:`run`.

- argv lists only, never shell strings;
- a clean, explicit environment (a known PATH and locale, plus what the caller adds);
- every command, its duration and its output (captured output too) go to the stage log, and
  to the ``xenforge.run`` logger at debug level (``xenforge --debug``);
- on failure a :class:`~xenforge.core.errors.CommandFailed` carries the command, the exit code,
  the last lines of output and the log path;
- the child runs in its own process group, which is killed on timeout or interrupt.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from xenforge.core.cpuacct import Group
from xenforge.core.errors import CommandFailed, XenforgeError, exit_status

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 25

_log = logging.getLogger("xenforge.run")
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()
_cancelled = threading.Event()

#: Every command started on behalf of an owner (a node being built) carries this variable,
#: inherited by all its descendants. A SIGKILLed xenforge cannot stop its commands (they run
#: in their own process group); the next build finds them by it (:func:`stop_orphans`).
OWNER_VAR = "XENFORGE_OWNER"
_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar("xenforge_owner",
                                                                     default=None)
#: the control group that counts the CPU time of this thread's commands (a node's)
_group: contextvars.ContextVar[Group | None] = contextvars.ContextVar("xenforge_cgroup",
                                                                      default=None)


class Interrupted(XenforgeError):
    """The build was interrupted (SIGINT/SIGTERM); no new command starts."""

    exit_code = 130


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every command starts from: nothing inherited by accident."""
    env = {
        "PATH": CLEAN_PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": os.environ.get("HOME", "/root"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    if extra:
        env.update(extra)
    return env


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str  # what the command printed on stdout, with ``capture``
    duration: float
    stderr: str = ""  # what it printed on stderr, with ``capture``


class Cancelled(XenforgeError):
    """The caller's cancel event stopped the command (e.g. an input of the node failed)."""


def _pump(stream: IO[bytes], log: IO[str] | None, tail: collections.deque[str],
          keep: list[str] | None, *, to_tail: bool = True) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        if keep is not None:
            keep.append(line)
        if to_tail:
            tail.append(line.rstrip("\n"))
        if log is not None:
            log.write(line)
            log.flush()


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = False,
    timeout: float | None = None,
    check: bool = True,
    capture: bool = False,
    stdin_data: bytes | None = None,
    die_with_parent: bool = False,
    cancel: threading.Event | None = None,
) -> Result:
    """Run ``argv``; append its output to ``log``; raise CommandFailed on a non-zero exit.

    With ``capture`` the command's stdout is returned (stderr still goes to the log).
    ``env`` is added to :func:`base_env`; ``inherit_env`` starts from os.environ instead.
    ``die_with_parent``: the kernel SIGKILLs the command when the calling thread dies, so a
    SIGKILLed xenforge leaves no long-running child behind (a VM); only for commands whose
    calling thread waits for them to the end, as this function does.
    ``cancel``: when the event is set, the command is killed and :class:`Cancelled` raised.
    """
    args = [os.fspath(a) for a in argv]
    if die_with_parent:  # util-linux's setpriv sets PR_SET_PDEATHSIG, then execs the command
        args = ["setpriv", "--pdeathsig", "KILL", "--", *args]
    if _cancelled.is_set():
        raise Interrupted("interrupted; not starting: " + shlex.join(args)[:200])
    full_env = dict(os.environ) if inherit_env else base_env()
    if env:
        full_env.update(env)
    owner = _owner.get()
    if owner is not None:
        full_env[OWNER_VAR] = owner
    logf: IO[str] | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
        logf.write(f"\n$ {shlex.join(args)}" + (f"    # in {cwd}" if cwd else "") + "\n")
        logf.flush()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    out: list[str] = []
    err: list[str] = []
    _log.debug("$ %s%s", shlex.join(args), f"    # in {cwd}" if cwd else "")
    launch = args
    prelude = _prelude(_group.get(), _autogroup_nice())
    if prelude:  # the shell cannot say "not found" as Popen does: look first
        if not _findable(args[0], full_env.get("PATH", CLEAN_PATH), cwd):
            if logf:
                logf.close()
            raise _not_found(args[0])
        launch = ["/bin/sh", "-c", prelude + 'exec "$@"', "sh", *args]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            launch,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        if logf:
            logf.close()
        raise _not_found(args[0]) from exc
    with _live_lock:
        _live.add(proc)
        cancelled_meanwhile = _cancelled.is_set()  # kill_all() ran between the check and now
    if cancelled_meanwhile:
        _kill_group(proc)
    threads = []
    assert proc.stdout is not None
    # captured stdout reaches the log too, but not the failure's tail (it is data, e.g. JSON)
    threads.append(threading.Thread(target=_pump, args=(proc.stdout, logf, tail,
                                                        out if capture else None),
                                    kwargs={"to_tail": not capture}))
    if capture:
        assert proc.stderr is not None
        threads.append(threading.Thread(target=_pump, args=(proc.stderr, logf, tail, err)))
    for t in threads:
        t.daemon = True
        t.start()
    try:
        if stdin_data is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin_data)
            proc.stdin.close()
        rc = _wait(proc, timeout, cancel, args)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        rc = -signal.SIGKILL
        tail.append(f"[xenforge] timed out after {timeout:.0f}s and was killed")
    except Cancelled:
        _kill_group(proc)
        raise
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        for t in threads:
            t.join(timeout=5)
        with _live_lock:
            _live.discard(proc)
        duration = time.monotonic() - start
        if logf:
            ended = "exit 0" if proc.returncode == 0 else exit_status(proc.returncode)
            logf.write(f"[xenforge] {ended} after {duration:.1f}s\n")
            logf.close()
    result = Result(args, rc, "".join(out), duration, "".join(err))
    if check and rc != 0:
        raise CommandFailed(args, rc, list(tail), log)
    return result


def _not_found(program: str) -> XenforgeError:
    return XenforgeError(
        f"command not found: {program}",
        hint="run ci/setup-host.sh as root to install the host tools xenforge needs")


def _findable(program: str, path: str, cwd: Path | None) -> bool:
    if "/" in program:
        return os.access(os.path.join(cwd or os.getcwd(), program), os.X_OK)
    return shutil.which(program, path=path) is not None


def _autogroup_nice() -> str:
    """This process's scheduler autogroup nice value ("0" without autogroups)."""
    try:
        with open("/proc/self/autogroup", encoding="ascii") as f:
            return f.read().split()[-1]  # "/autogroup-123 nice 19"
    except (OSError, IndexError):
        return "0"


def _prelude(group: Group | None, nice: str) -> str:
    """What a command's shell does before it becomes the command (``exec``), so that it holds
    from the command's first instruction: join the node's CPU-accounting group (``$$`` is the
    command once it execs), and give its new session - an autogroup of its own - xenforge's
    autogroup nice value, or ``echo 19 > /proc/$$/autogroup`` in the shell that runs xenforge
    would lower xenforge but not its compilers (a plain ``nice`` value is inherited, an
    autogroup's is not). A failed write only loses the count or the nice value, never the
    command. Empty: nothing to do, the command starts directly."""
    steps = []
    if group is not None:
        steps.append(f"echo $$ > {shlex.quote(str(group.procs))} 2>/dev/null; ")
    if nice != "0" and re.fullmatch(r"-?\d+", nice):
        steps.append(f"echo {nice} > /proc/$$/autogroup 2>/dev/null; ")
    return "".join(steps)


def _share_autogroup(pid: int) -> None:
    """Give a started process's new session this process's autogroup nice value (the
    watchdog's; a command gets it before it starts, see :func:`_prelude`)."""
    nice = _autogroup_nice()
    if nice != "0":
        try:
            with open(f"/proc/{pid}/autogroup", "w", encoding="ascii") as f:
                f.write(nice)
        except OSError:
            pass  # no longer ours to renice (setuid), or gone


def _wait(proc: subprocess.Popen[bytes], timeout: float | None,
          cancel: threading.Event | None, args: list[str]) -> int:
    if cancel is None:
        return proc.wait(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return proc.wait(timeout=0.25)
        except subprocess.TimeoutExpired:
            if cancel.is_set():
                raise Cancelled("stopped: " + shlex.join(args)[:200]) from None
            if deadline is not None and time.monotonic() > deadline:
                raise


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def watchdog(argv: Sequence[str], *, log: Path | None = None) -> Iterator[None]:
    """Start ``argv``, a helper that outlives this process if it is killed, for the block.

    The helper's stdin is a pipe that only this process holds. When the block ends
    (normally or by an exception: xenforge cleaned up itself) it reads ``done`` and exits.
    If this process dies first (SIGKILL, the OOM killer) the kernel closes the pipe and
    the helper reads end-of-file alone: its cue to do what a dead process cannot, at once
    (:mod:`xenforge.build.reaper`). It runs in a session of its own, so neither a terminal's
    Ctrl-C nor a kill of xenforge's process group reaches it; its output goes to ``log``.
    """
    read, write = os.pipe()  # not inheritable: no command of the build holds it open
    env = {k: v for k, v in os.environ.items() if k != OWNER_VAR}
    package_root = str(Path(__file__).resolve().parents[2])  # the helper imports xenforge
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root,
                                                      env.get("PYTHONPATH")]))
    errors: IO[str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            errors = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([*argv], stdin=read, stdout=errors or subprocess.DEVNULL,
                                stderr=errors or subprocess.DEVNULL, env=env,
                                start_new_session=True)
        _share_autogroup(proc.pid)
    except OSError as exc:  # only a safety net: the next build cleans up instead
        _log.warning("no watchdog (%s): a killed build is cleaned up by the next one", exc)
    finally:
        os.close(read)
        if errors is not None:
            errors.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.write(write, b"done\n")
        os.close(write)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # still starting on a loaded host: it will go
                _log.debug("watchdog %s still running", argv)


@contextlib.contextmanager
def accounted(group: Group | None) -> Iterator[None]:
    """Start the commands this thread runs in ``group`` (a node's CPU count; None: not
    counted)."""
    token = _group.set(group)
    try:
        yield
    finally:
        _group.reset(token)


@contextlib.contextmanager
def owned_by(owner: str) -> Iterator[None]:
    """Mark the commands this thread starts as ``owner``'s (e.g. a node's lock file)."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def stop_orphans(is_orphaned: Callable[[str], bool], wait: float = 5.0) -> list[int]:
    """Kill the processes whose owner ``is_orphaned`` says is dead; return their pids."""
    by_owner: dict[str, list[int]] = {}
    prefix = f"{OWNER_VAR}=".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(os.path.join(entry.path, "environ"), "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                owner = item[len(prefix):].decode("utf-8", "replace")
                by_owner.setdefault(owner, []).append(int(entry.name))
    killed = [pid for owner, pids in by_owner.items() if is_orphaned(owner) for pid in pids]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while any(running(pid) for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.02)
    return killed


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie that is not reaped yet does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def check_cancelled() -> None:
    """Raise :class:`Interrupted` once the build was interrupted (for long Python loops)."""
    if _cancelled.is_set():
        raise Interrupted("interrupted")


def cancel_wait(seconds: float) -> None:
    """Sleep ``seconds`` unless the build is interrupted meanwhile (then raise)."""
    if _cancelled.wait(seconds):
        raise Interrupted("interrupted")


_cancel_hooks: dict[int, Callable[[], object]] = {}


@contextlib.contextmanager
def on_cancel(hook: Callable[[], object]) -> Iterator[None]:
    """Call ``hook`` (e.g. close a network stream) if the build is interrupted meanwhile."""
    key = id(hook)
    with _live_lock:
        _cancel_hooks[key] = hook
    try:
        yield
    finally:
        with _live_lock:
            _cancel_hooks.pop(key, None)


def kill_all() -> None:
    """Kill every command still running and refuse new ones (on SIGTERM/SIGINT)."""
    _cancelled.set()
    with _live_lock:
        hooks = list(_cancel_hooks.values())
    for hook in hooks:
        try:
            hook()
        except OSError as exc:  # closing a stream that already broke: it is stopped anyway
            _log.debug("cancel hook %r: %s", hook, exc)
        except Exception:  # a bug in a hook must not keep the commands running
            _log.exception("cancel hook %r failed", hook)
    with _live_lock:
        procs = list(_live)
    for p in procs:
        _kill_group(p)
