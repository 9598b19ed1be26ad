"""Where a build's time went, as a picture: each node a bar over the build's time axis, like
``systemd-analyze plot``. Built nodes are bars coloured by stage, cached ones a grey tick at
the moment they were found, failed ones red. The spans come from the JSON progress stream
(``xenforge build --progress json``: ``started``/``finished``/``cached`` events), from a plain
build log (its ``start``/``built``/``cached`` lines), or straight from a build's results
(``xenforge build --timeline FILE.svg``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

#: colours of the stages' bars (a stage not listed gets the last one)
COLOURS = {"source": "#8fbcdb", "tree": "#6a9fcb", "buildroot": "#b39ddb",
           "hypervisor": "#e6a04a", "toolstack": "#d9822b", "kernel": "#5aa469",
           "rootfs": "#4f8fbf", "image": "#2f6f9f", "iso": "#7e57c2", "other": "#90a4ae"}
FAILED, CACHED = "#d9534f", "#c8c8c8"
#: drawing sizes, pixels
WIDTH, LABEL, ROW, TOP = 1100, 230, 20, 58


@dataclass(frozen=True)
class Span:
    """One node of the build: seconds from the build's start, its status and stage."""

    node: str
    start: float
    end: float
    status: str  # "built", "cached", "failed"

    @property
    def stage(self) -> str:
        return self.node.split(":", 1)[0]

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def spans_from_events(events: Iterable[dict[str, object]]) -> list[Span]:
    """The spans of a JSON progress stream's events (other events are ignored). A node that
    started and never finished (the stream was cut) ends at the last event's time."""
    started: dict[str, float] = {}
    spans: list[Span] = []
    origin = last = None
    for ev in events:
        when = float(ev.get("time", 0.0))  # type: ignore[arg-type]
        origin = when if origin is None else min(origin, when)
        last = when if last is None else max(last, when)
        kind, node = ev.get("event"), str(ev.get("node", ""))
        if kind == "started":
            started[node] = when
        elif kind == "cached":
            spans.append(Span(node, when, when, "cached"))
        elif kind == "finished":
            begin = started.pop(node, when - float(ev.get("seconds", 0.0)))  # type: ignore[arg-type]
            status = "failed" if str(ev.get("status")) == "failed" else "built"
            spans.append(Span(node, begin, when, status))
    spans += [Span(node, begin, last or begin, "failed") for node, begin in started.items()]
    base = origin or 0.0
    return sorted((Span(s.node, s.start - base, s.end - base, s.status) for s in spans),
                  key=lambda s: (s.start, s.node))


#: a plain progress line of a node (the build log's): time, what happened, the node
_PLAIN = re.compile(r"^\[(\d\d):(\d\d):(\d\d)\] (start|built|ready|ok|FAILED|failed|cached)"
                    r"\s+(\S+)")
#: the first line of each build in a build log
_BUILD = re.compile(r"(?m)^(?=\[\d\d:\d\d:\d\d\] build \S+: )")


def log_builds(text: str) -> list[str]:
    """A build log's text cut into one section per ``xenforge build`` (oldest first)."""
    return _BUILD.split(text)


def events_from_log(text: str) -> list[dict[str, object]]:
    """The node events of the last build in a plain build log (``state/logs/RECIPE/
    build.log``, which every build appends to), as the JSON stream would have them: a build
    that ran past midnight keeps counting up; a boot and the suites after it are nodes too."""
    events: list[dict[str, object]] = []
    day, previous = 0, -1
    for line in log_builds(text)[-1].splitlines():
        m = _PLAIN.match(line)
        if not m:
            continue
        clock = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
        if clock < previous:
            day += 86400
        previous = clock
        kind = {"start": "started", "cached": "cached"}.get(m[4], "finished")
        status = "failed" if m[4].lower() == "failed" else "built"
        events.append({"event": kind, "node": m[5], "time": float(day + clock),
                       "status": status})
    return events


def read_events(path: Path) -> list[dict[str, object]]:
    """The node events in ``path``: a JSON progress stream (one object per line, other lines
    skipped) or, without JSON in it, a plain build log (see :func:`events_from_log`)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                events.append(record)
    return events or events_from_log(text)


def _tick(total: float) -> float:
    """A round step for the time axis: about ten ticks over ``total`` seconds."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if total / step <= 12:
            return float(step)
    return 7200.0


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def render_svg(spans: list[Span], title: str = "xenforge build") -> str:
    """The SVG picture of ``spans`` (a self-contained document)."""
    total = max([s.end for s in spans] + [1.0])
    scale = (WIDTH - LABEL - 90) / total
    height = TOP + ROW * len(spans) + 40
    built = [s for s in spans if s.status == "built"]
    work = sum(s.seconds for s in built)
    summary = (f"{len(built)} built, {sum(s.status == 'cached' for s in spans)} cached, "
               f"{sum(s.status == 'failed' for s in spans)} failed; wall {_clock(total)}, "
               f"bars {_clock(work)} (a node's bar includes its wait for inputs)")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="10" y="38" fill="#444">{escape(summary)}</text>']
    step = _tick(total)
    t = 0.0
    while t <= total + 1e-9:
        x = LABEL + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{height - 30}" '
                   'stroke="#e4e4e4"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 14}" text-anchor="middle" '
                   f'fill="#666">{_clock(t)}</text>')
        t += step
    for row, span in enumerate(spans):
        y = TOP + row * ROW
        x = LABEL + span.start * scale
        out.append(f'<text x="{LABEL - 8}" y="{y + 14}" text-anchor="end">'
                   f'{escape(span.node)}</text>')
        if span.status == "cached":
            out.append(f'<rect x="{x:.1f}" y="{y + 4}" width="3" height="{ROW - 8}" '
                       f'fill="{CACHED}"/>')
            out.append(f'<text x="{x + 7:.1f}" y="{y + 14}" fill="#888">cached</text>')
            continue
        colour = FAILED if span.status == "failed" else COLOURS.get(span.stage,
                                                                     COLOURS["other"])
        width = max(1.0, span.seconds * scale)
        label = _clock(span.seconds) + (" FAILED" if span.status == "failed" else "")
        out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{width:.1f}" height="{ROW - 6}" '
                   f'rx="2" fill="{colour}"><title>{escape(span.node)}: {label}</title></rect>')
        out.append(f'<text x="{x + width + 5:.1f}" y="{y + 14}" fill="#333">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(spans: list[Span], path: Path, title: str = "xenforge build") -> Path:
    """Write the picture of ``spans`` to ``path`` (through a temporary name: a reader never
    sees half a picture)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_svg(spans, title), encoding="utf-8")
    tmp.replace(path)
    return path
