"""The subprocess runner: logs, failures, timeouts that kill the whole group, clean env."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenforge.core import run as runner
from xenforge.core.errors import CommandFailed, XenforgeError


@pytest.fixture(autouse=True)
def _not_cancelled() -> Iterator[None]:
    yield
    runner._cancelled.clear()  # kill_all() is process-wide; later tests must run commands


def _gone(pid: int, within: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (missing, or a zombie waiting for init)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_output_and_command_line_go_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "node.log"
    res = runner.run(["sh", "-c", "echo to-stdout; echo to-stderr >&2", "arg with space"],
                     log=log, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout == ""  # not captured: it went to the log
    text = log.read_text()
    assert "$ sh -c 'echo to-stdout; echo to-stderr >&2' 'arg with space'" in text
    assert f"# in {tmp_path}" in text
    assert "to-stdout\n" in text and "to-stderr\n" in text
    assert "[xenforge] exit 0 after" in text
    runner.run(["echo", "second"], log=log)
    text = log.read_text()
    assert text.index("to-stdout") < text.index("$ echo second") < text.index("second\n[")


def test_failure_raises_command_failed_with_code_tail_and_log(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    script = "for i in $(seq 1 40); do echo line$i; done; echo boom >&2; exit 3"
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", script], log=log)
    err = info.value
    assert err.returncode == 3
    assert err.argv == ["sh", "-c", script]
    assert err.log == log
    assert err.tail[-1] == "boom"
    assert err.tail[0] == f"line{40 - runner.TAIL_LINES + 2}"
    assert len(err.tail) == runner.TAIL_LINES
    text = err.render()
    assert "command failed with exit code 3: sh -c" in text
    assert "| boom" in text
    assert f"full log: {log}" in text
    assert err.exit_code == 1
    assert "line1\n" in log.read_text()
    assert "[xenforge] failed with exit code 3 after" in log.read_text()


def test_check_false_returns_the_code(tmp_path: Path) -> None:
    res = runner.run(["sh", "-c", "exit 7"], check=False)
    assert res.returncode == 7


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], timeout=1,
                   log=tmp_path / "log")
    assert time.monotonic() - start < 20
    assert info.value.returncode < 0
    assert "timed out after 1s" in info.value.tail[-1]
    assert _gone(int(pidfile.read_text())), "the child sleep survived the timeout"


def test_timeout_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(CommandFailed):
        runner.run(["sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"],
                   timeout=1)
    assert _gone(int(pidfile.read_text()), within=2)


def test_clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENFORGE_TEST_LEAK", "secret")
    monkeypatch.setenv("PATH", "/somewhere/else:" + os.environ["PATH"])
    monkeypatch.setenv("CC", "clang")
    env = dict(line.split("=", 1) for line in
               runner.run(["env"], capture=True).stdout.splitlines())
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "SOURCE_DATE_EPOCH"}
    assert env["PATH"] == runner.CLEAN_PATH
    assert env["LC_ALL"] == "C.UTF-8"
    assert "XENFORGE_TEST_LEAK" not in env and "CC" not in env
    extra = runner.run(["env"], capture=True, env={"CCACHE_DIR": "/x"}).stdout
    assert "CCACHE_DIR=/x\n" in extra
    inherited = runner.run(["env"], capture=True, inherit_env=True).stdout
    assert "XENFORGE_TEST_LEAK=secret\n" in inherited


def test_capture_returns_stdout_and_stderr_and_logs_both(tmp_path: Path) -> None:
    log = tmp_path / "log"
    res = runner.run(["sh", "-c", "printf 'a\\nb\\n'; echo note >&2"], capture=True, log=log)
    assert res.stdout == "a\nb\n" and res.stderr == "note\n"
    # what a stage read is in its log too; the two streams are pumped by two threads, so a
    # stderr line may land between two stdout lines (seen under load: "a\nnote\nb\n")
    lines = log.read_text().splitlines()
    assert "note" in lines and "a" in lines and "b" in lines, lines
    assert lines.index("a") < lines.index("b"), lines


def test_a_command_killed_by_a_signal_says_which(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(CommandFailed) as exc:
        runner.run(["sh", "-c", "kill -9 $$"], log=log)
    assert exc.value.returncode == -9
    assert "was killed by SIGKILL" in exc.value.render() and "exit code -9" not in \
        exc.value.render()
    assert "[xenforge] was killed by SIGKILL after" in log.read_text()


def test_a_cancel_event_stops_the_command(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(runner.Cancelled):
        runner.run(["sleep", "30"], cancel=cancel, log=tmp_path / "log")
    assert time.monotonic() - start < 10


def test_capture_failure_tail_has_stderr(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        runner.run(["sh", "-c", "echo out; echo why-it-failed >&2; exit 1"], capture=True)
    assert info.value.tail == ["why-it-failed"]


def test_stdin_data() -> None:
    assert runner.run(["cat"], capture=True, stdin_data=b"fed\n").stdout == "fed\n"


def test_missing_command_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(XenforgeError) as info:
        runner.run(["xenforge-no-such-tool"], log=tmp_path / "log")
    assert "command not found: xenforge-no-such-tool" in info.value.message
    assert "setup-host.sh" in info.value.hint


def test_kill_all_stops_running_commands_and_refuses_new_ones(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    caught: list[BaseException] = []

    def build() -> None:
        try:
            runner.run(["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"])
        except BaseException as exc:  # handed to the test thread
            caught.append(exc)

    t = threading.Thread(target=build)
    t.start()
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    runner.kill_all()
    t.join(timeout=20)
    assert not t.is_alive()
    assert caught and isinstance(caught[0], CommandFailed)
    assert _gone(int(pidfile.read_text()))
    with pytest.raises(runner.Interrupted):
        runner.run(["true"])


def test_commands_carry_their_owner_and_orphans_are_stopped(tmp_path: Path) -> None:
    with runner.owned_by("/locks/node.lock"):
        env = runner.run(["env"], capture=True).stdout
    assert f"{runner.OWNER_VAR}=/locks/node.lock\n" in env
    assert runner.OWNER_VAR not in runner.run(["env"], capture=True).stdout

    pidfile = tmp_path / "pid"
    with runner.owned_by(f"test-{os.getpid()}-dead"):
        # a daemon that outlives its command, as a killed build's commands do
        runner.run(["sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}"])
    pid = int(pidfile.read_text())
    assert not _gone(pid, within=0.2)
    assert runner.stop_orphans(lambda owner: False) == []
    assert not _gone(pid, within=0.2)
    killed = runner.stop_orphans(lambda owner: owner == f"test-{os.getpid()}-dead")
    assert killed == [pid]
    assert _gone(pid, within=1)


CALLER = """
import sys, threading
from pathlib import Path
from xenforge.core import run as runner
pidfile = Path(sys.argv[1])
die = sys.argv[2] == "die"
def vm() -> None:
    runner.run(["sh", "-c", f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile} "
                            "&& exec sleep 300"], check=False, die_with_parent=die)
threading.Thread(target=vm).start()
threading.Event().wait()
"""


@pytest.mark.parametrize("die", [True, False])
def test_die_with_parent_when_the_caller_is_sigkilled(tmp_path: Path, die: bool) -> None:
    """A SIGKILLed caller (no clean-up runs) leaves no child started with die_with_parent;
    without it the child survives, which is what the option is for."""
    pidfile = tmp_path / "pid"
    caller = subprocess.Popen([sys.executable, "-c", CALLER, str(pidfile),
                               "die" if die else "keep"])
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pidfile.read_text())
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        assert _gone(child, within=5) is die
    finally:
        caller.kill()
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


AUTOGROUP = """
import sys
from xenforge.core import run as runner
with open("/proc/self/autogroup", "w") as f:  # what `echo 7 > /proc/$$/autogroup` does
    f.write("7")
print(runner.run(["cat", "/proc/self/autogroup"], capture=True).stdout.strip())
"""


def test_commands_keep_the_autogroup_nice_of_xenforge() -> None:
    """Each command runs in a session of its own, which is a scheduler autogroup of its own:
    the nice value given to xenforge's (`echo 19 > /proc/$$/autogroup` in its shell, to
    share the cores) must hold for the commands too, or a compile runs at full priority."""
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("the kernel has no autogroups (CONFIG_SCHED_AUTOGROUP)")
    # a session of its own: this test's autogroup (pytest's) stays as it is
    proc = subprocess.run([sys.executable, "-c", AUTOGROUP], capture_output=True, text=True,
                          timeout=60, start_new_session=True, check=False)
    assert proc.returncode == 0, proc.stderr
    group, _, nice = proc.stdout.strip().rpartition(" nice ")
    assert nice == "7", proc.stdout
    assert group, proc.stdout
