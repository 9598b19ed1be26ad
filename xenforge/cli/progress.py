"""What a person watching a build sees: a live view of running nodes (elapsed time, the last
line of each node's log) in a terminal; plain timestamped lines otherwise (CI logs), with a
``still`` line per running node every minute so a long compile never looks hung; nothing but
errors with --quiet."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.markup import escape as rich_escape
from rich.table import Table

#: seconds between the ``still`` lines of a running node in plain mode
HEARTBEAT = 60.0
#: how much of a log's end is read for its last line
_TAIL_BYTES = 4096
#: terminal escape sequences (a serial console's), not worth showing
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>])")


def last_line(log: str, width: int = 100) -> str:
    """The last non-empty line of the file ``log`` (shortened to ``width``), or ''."""
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    tail = _ANSI.sub("", tail).replace("\r", "\n")
    lines = [ln for ln in map(str.strip, tail.splitlines()) if ln and ln.isprintable()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= width else line[: width - 1] + "…"


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m else f"{seconds:.1f}s"


class Progress:
    """Thread-safe progress reporting for the executor."""

    def __init__(self, *, quiet: bool = False, plain: bool | None = None,
                 stream: IO[str] | None = None, logfile: Path | None = None,
                 heartbeat: float = HEARTBEAT) -> None:
        self.stream = stream or sys.stdout
        self.logfile = logfile
        if logfile is not None:
            logfile.parent.mkdir(parents=True, exist_ok=True)
        self.quiet = quiet
        self.plain = plain if plain is not None else not self.stream.isatty()
        self.running: dict[str, tuple[float, str]] = {}  # node -> (start, stage log)
        self.lock = threading.Lock()
        self.console = Console(file=self.stream, highlight=False)
        self.live: Live | None = None
        self.heartbeat = heartbeat
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Progress:
        if not self.quiet and not self.plain:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                             transient=True, get_renderable=self._table)
            self.live.__enter__()
        elif not self.quiet:
            self._stop.clear()
            self._beat = threading.Thread(target=self._still, daemon=True)
            self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None
        if self._beat is not None:
            self._stop.set()
            self._beat.join()
            self._beat = None

    def _still(self) -> None:
        """Plain mode: every ``heartbeat`` seconds, a line per node still running."""
        while not self._stop.wait(self.heartbeat):
            now = time.monotonic()
            with self.lock:
                running = list(self.running.items())
            for name, (start, log) in running:
                last = last_line(log)
                self.line(f"still  {name}  {_fmt(now - start)}" + (f"  {last}" if last else ""))

    def _table(self) -> Table:
        table = Table(show_header=False, box=None, pad_edge=False)
        now = time.monotonic()
        with self.lock:
            for name, (start, log) in self.running.items():
                table.add_row("[cyan]running[/]", name, _fmt(now - start),
                              f"[dim]{rich_escape(last_line(log, 80) or log)}[/]")
        return table

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.logfile is not None:  # a copy of what is shown: on a full disk it loses
            with self.lock, contextlib.suppress(OSError), \
                    open(self.logfile, "a", encoding="utf-8") as f:  # the line, no more
                f.write(f"[{stamp}] {text}\n")
        if self.quiet:
            return
        if self.plain:
            with self.lock:
                print(f"[{stamp}] {text}", file=self.stream, flush=True)
        else:
            self.console.print(f"[dim]{stamp}[/] {text}")

    def started(self, node: str, log: str) -> None:
        with self.lock:
            self.running[node] = (time.monotonic(), log)
        self.line(f"start  {node}  (log: {log})")

    def finished(self, node: str, status: str, detail: str = "",
                 seconds: float | None = None) -> None:
        with self.lock:
            start, _ = self.running.pop(node, (time.monotonic(), ""))
        took = _fmt(time.monotonic() - start)
        self.line(f"{status:<6} {node}  {took}" + (f"  {detail}" if detail else ""))

    def cached(self, node: str, node_id: str, detail: str = "") -> None:
        self.line(f"cached {node}  {node_id[:12]}" + (f" ({detail})" if detail else ""))


class JsonProgress(Progress):
    """``--progress=json``: one JSON object per line on stdout, for CI front-ends::

        {"event": "started", "node": "kernel:dom0", "log": "...", "time": 1764590400.1}
        {"event": "finished", "node": "kernel:dom0", "status": "built", "seconds": 812.3, ...}
        {"event": "cached", "node": "tree:linux-6.1", "id": "...", ...}
        {"event": "message", "text": "..."}

    ``xenforge build`` adds ``artifact`` events and a final ``summary`` event."""

    def __init__(self, *, stream: IO[str] | None = None, logfile: Path | None = None) -> None:
        super().__init__(quiet=True, plain=True, stream=stream, logfile=logfile)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def emit(self, event: str, **fields: object) -> None:
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.lock:
            print(json.dumps(record, sort_keys=True), file=self.stream, flush=True)

    def line(self, text: str) -> None:
        super().line(text)  # the build.log keeps its lines
        self.emit("message", text=text)

    def started(self, node: str, log: str) -> None:
        with self.lock:
            self.running[node] = (time.monotonic(), log)
        self.emit("started", node=node, log=log)

    def finished(self, node: str, status: str, detail: str = "",
                 seconds: float | None = None) -> None:
        with self.lock:
            start, _ = self.running.pop(node, (time.monotonic(), ""))
        took = seconds if seconds is not None else time.monotonic() - start
        self.emit("finished", node=node, status=status.lower(), seconds=round(took, 1),
                  detail=detail)

    def cached(self, node: str, node_id: str, detail: str = "") -> None:
        self.emit("cached", node=node, id=node_id, detail=detail)
