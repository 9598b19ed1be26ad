"""What a person watching a build sees: a live view of running nodes in a terminal, plain
timestamped lines otherwise (CI logs), nothing but errors with --quiet."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}" if m else f"{seconds:.1f}s"


class Progress:
    """Thread-safe progress reporting for the executor."""

    def __init__(self, *, quiet: bool = False, plain: bool | None = None,
                 stream: IO[str] | None = None, logfile: Path | None = None) -> None:
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

    def __enter__(self) -> Progress:
        if not self.quiet and not self.plain:
            self.live = Live(self._table(), console=self.console, refresh_per_second=4,
                             transient=True, get_renderable=self._table)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def _table(self) -> Table:
        table = Table(show_header=False, box=None, pad_edge=False)
        now = time.monotonic()
        with self.lock:
            for name, (start, log) in self.running.items():
                table.add_row("[cyan]running[/]", name, _fmt(now - start), f"[dim]{log}[/]")
        return table

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self.logfile is not None:
            with self.lock, open(self.logfile, "a", encoding="utf-8") as f:
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

    def finished(self, node: str, status: str, detail: str = "") -> None:
        with self.lock:
            start, _ = self.running.pop(node, (time.monotonic(), ""))
        took = _fmt(time.monotonic() - start)
        self.line(f"{status:<6} {node}  {took}" + (f"  {detail}" if detail else ""))
