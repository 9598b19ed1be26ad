"""The build timeline (``xenforge build --timeline``, ``xenforge timeline``): spans from the
JSON progress stream and from a real build, drawn as an SVG with a bar per built node."""

from __future__ import annotations

import json
import shutil
import signal
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenforge.cli import app as cli
from xenforge.export.timeline import Span, read_events, render_svg, spans_from_events

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)  # cli.main installs its own
    yield
    signal.signal(signal.SIGTERM, handler)


def _bars(svg: str) -> dict[str, float]:
    """Node name -> bar width, from the rects that carry a <title> (the built nodes)."""
    root = ET.fromstring(svg)
    bars = {}
    for rect in root.iter(f"{SVG}rect"):
        title = rect.find(f"{SVG}title")
        if title is not None and title.text:
            bars[title.text.split(": ")[0]] = float(rect.get("width", "0"))
    return bars


def test_spans_follow_the_stream_relative_to_its_first_event() -> None:
    events = [
        {"event": "message", "text": "build r: 3 nodes", "time": 100.0},
        {"event": "cached", "node": "source:xen", "id": "ab", "time": 100.5},
        {"event": "started", "node": "tree:xen", "log": "l", "time": 101.0},
        {"event": "started", "node": "kernel:guest", "log": "l", "time": 102.0},
        {"event": "finished", "node": "tree:xen", "status": "built", "seconds": 9.0,
         "time": 110.0},
        {"event": "finished", "node": "kernel:guest", "status": "failed", "seconds": 1.0,
         "time": 112.0},
        {"event": "started", "node": "image:host", "log": "l", "time": 113.0},
        {"event": "summary", "ok": False, "time": 120.0},
    ]
    spans = {s.node: s for s in spans_from_events(events)}
    assert spans["source:xen"] == Span("source:xen", 0.5, 0.5, "cached")
    assert spans["tree:xen"] == Span("tree:xen", 1.0, 10.0, "built")
    assert spans["kernel:guest"].status == "failed" and spans["kernel:guest"].seconds == 10.0
    # started, never finished (the stream was cut): it ends with the stream, as a failure
    assert spans["image:host"] == Span("image:host", 13.0, 20.0, "failed")


def test_the_picture_has_a_bar_per_built_node_in_proportion() -> None:
    spans = [Span("source:linux", 0, 0, "cached"), Span("kernel:dom0", 0, 600, "built"),
             Span("kernel:guest", 0, 300, "built"), Span("image:<host>", 600, 660, "failed")]
    svg = render_svg(spans, "default & co")
    root = ET.fromstring(svg)  # well-formed: names and the title are escaped
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert "default & co" in texts and "image:<host>" in texts
    assert "cached" in texts
    bars = _bars(svg)
    assert set(bars) == {"kernel:dom0", "kernel:guest", "image:<host>"}
    assert bars["kernel:dom0"] == pytest.approx(2 * bars["kernel:guest"], rel=0.01)
    summary = next(t for t in texts if "built" in t and "wall" in t)
    assert summary.startswith("2 built, 1 cached, 1 failed; wall 11:00")


def test_build_timeline_draws_the_real_build_and_its_cached_rerun(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fx = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, fx)
    pic = tmp_path / "first.svg"
    argv = ["--cache-dir", str(tmp_path / "cache"), "build", str(fx / "kernel.yaml"),
            "--target", "tree:mini", "-o", str(tmp_path / "out"), "--progress=json"]
    assert cli.main([*argv, "--timeline", str(pic)]) == 0
    stream = tmp_path / "events.jsonl"
    stream.write_text(capsys.readouterr().out)
    assert set(_bars(pic.read_text())) == {"source:mini", "tree:mini"}
    # the same picture from the saved stream, by `xenforge timeline`
    again = tmp_path / "from-stream.svg"
    assert cli.main(["timeline", str(stream), "-o", str(again)]) == 0
    assert set(_bars(again.read_text())) == {"source:mini", "tree:mini"}
    assert {s.node for s in spans_from_events(read_events(stream))} == {"source:mini",
                                                                        "tree:mini"}
    cached = tmp_path / "cached.svg"
    assert cli.main([*argv, "--timeline", str(cached)]) == 0
    assert _bars(cached.read_text()) == {}  # nothing built: no bars, two ticks
    assert [t.text for t in ET.parse(cached).getroot().iter(f"{SVG}text")].count("cached") == 2


@pytest.mark.parametrize("where", ["nowhere/t.svg", "t.png", "."])
def test_a_bad_timeline_file_is_exit_2_before_building(
        tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = cli.main(["--cache-dir", str(tmp_path / "cache"), "build",
                     str(FIXTURES / "kernel.yaml"), "--target", "tree:mini",
                     "-o", str(tmp_path / "out"), "--timeline", where])
    assert code == 2
    assert f"--timeline {where}" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("tree*"))


def test_timeline_of_a_file_without_node_events_says_what_it_needs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "build.log"
    log.write_text("[10:00:00] build r: 2 nodes\n" + json.dumps({"event": "message"}) + "\n")
    assert cli.main(["timeline", str(log), "-o", str(tmp_path / "t.svg")]) == 2
    err = capsys.readouterr().err
    assert "no node events" in err and "--progress json" in err
    assert not (tmp_path / "t.svg").exists()


def test_the_last_build_of_a_plain_build_log_is_read_across_midnight() -> None:
    log = ("[09:00:00] build r: 3 nodes, cache /c\n[09:00:01] start  tree:old  (log: x)\n"
           "[09:00:09] built  tree:old  8.0s  abc\n"
           "[23:59:50] build r: 4 nodes, cache /c\n[23:59:51] cached source:xen  0123456789ab\n"
           "[23:59:52] start  hypervisor:xen  (log: /c/x.log)\n"
           "[23:59:55] still  hypervisor:xen  3.0s  CC foo.o\n"
           "[00:09:52] built  hypervisor:xen  10:00  0123 (waited 0s for inputs)\n"
           "[00:09:53] start  boot  (log: serial.log)\n[00:11:53] ready  boot  2:00  ssh://x\n"
           "[00:11:54] start  suites  (log: v)\n[00:12:54] failed suites  1:00  3 checks\n")
    from xenforge.export.timeline import events_from_log

    spans = {s.node: s for s in spans_from_events(events_from_log(log))}
    assert set(spans) == {"source:xen", "hypervisor:xen", "boot", "suites"}
    assert spans["hypervisor:xen"] == Span("hypervisor:xen", 1.0, 601.0, "built")
    assert spans["boot"].seconds == 120 and spans["suites"].status == "failed"
