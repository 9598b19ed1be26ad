"""Progress output: plain lines for CI logs, with a `still` line for long-running nodes."""

from __future__ import annotations

import io
import time
from pathlib import Path

from xenforge.cli.progress import Progress, last_line


def test_last_line_of_a_log(tmp_path: Path) -> None:
    log = tmp_path / "node.log"
    assert last_line(str(log)) == ""  # not written yet
    log.write_text("$ make -j2\n  CC      kernel/fork.o\n  LD      vmlinux\n\n")
    assert last_line(str(log)) == "LD      vmlinux"
    log.write_text("x" * 10000 + "\r[ 42%] progress\r")
    assert last_line(str(log)) == "[ 42%] progress"
    log.write_text("y" * 300)
    assert last_line(str(log), width=20) == "y" * 19 + "…"


def test_plain_mode_says_what_a_long_node_is_doing(tmp_path: Path) -> None:
    log = tmp_path / "kernel.log"
    log.write_text("  CC      drivers/xen/events/events_base.o\n")
    out = io.StringIO()
    with Progress(plain=True, stream=out, heartbeat=0.1) as progress:
        progress.started("kernel:dom0", str(log))
        time.sleep(0.35)
        progress.finished("kernel:dom0", "built")
        lines_while_running = out.getvalue().count("still  kernel:dom0")
        time.sleep(0.25)  # nothing more about a node that finished
    text = out.getvalue()
    assert lines_while_running >= 2, text
    assert text.count("still  kernel:dom0") == lines_while_running
    first_still = next(ln for ln in text.splitlines() if "still  kernel:dom0" in ln)
    assert first_still.endswith("s  CC      drivers/xen/events/events_base.o"), first_still
    assert text.index("start  kernel:dom0") < text.index("still") < text.index("built")


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    out = io.StringIO()
    with Progress(quiet=True, plain=True, stream=out, heartbeat=0.05) as progress:
        progress.started("node", str(tmp_path / "log"))
        time.sleep(0.15)
        progress.finished("node", "built")
    assert out.getvalue() == ""


def test_last_line_drops_terminal_escapes(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1b[H\x1b[J\x1b[1;1H  Booting `Xen'\r\n"
                    b"[  OK  ] Started \x1b[0;1;39mssh.service\x1b[0m\r\n\x1b[?25l")
    assert last_line(str(log)) == "[  OK  ] Started ssh.service"
