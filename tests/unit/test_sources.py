"""Sources: spec validation, and the url kind against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from stagectx import stage_context

from xenforge.core import run as runner
from xenforge.core.errors import InputError, SourceError
from xenforge.core.hashing import tree_hash
from xenforge.sources.fetch import fetch, primary_archive, unpack
from xenforge.sources.specs import (
    AptSource,
    DebSource,
    PathSource,
    SourceSpec,
    UrlSource,
    parse_source,
)
from xenforge.stages.base import StageContext
from xenforge.stages.source import SourceStage

PAYLOAD = b"xenforge test payload\n" * 5000  # ~110 kB: several chunks on the wire
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# -- a small HTTP server with scripted misbehaviour -----------------------------------------

Behaviour = Callable[[http.server.BaseHTTPRequestHandler, int], None]


def _full(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    h.wfile.write(PAYLOAD)


def _status(code: int) -> Behaviour:
    def answer(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
        h.send_error(code)
    return answer


def _truncated(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    # promise the whole file, send a third of it, close the connection
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    h.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
    h.wfile.flush()
    h.close_connection = True


def _first_truncated(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    (_truncated if n == 1 else _full)(h, n)


def _first_500(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    (_status(500) if n == 1 else _full)(h, n)


def _no_length_short(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    # no Content-Length: the end of the body is the end of the connection
    h.send_response(200)
    h.end_headers()
    h.wfile.write(PAYLOAD[:1000])
    h.close_connection = True


def _stall(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    # send a part, then nothing at all (the connection stays open) until the test is over
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    h.wfile.write(PAYLOAD[:1000])
    h.wfile.flush()
    time.sleep(3)


def _drip(h: http.server.BaseHTTPRequestHandler, n: int) -> None:
    # a byte every 50 ms: never idle for long, but never done either
    h.send_response(200)
    h.send_header("Content-Length", str(len(PAYLOAD)))
    h.end_headers()
    for i in range(60):
        try:
            h.wfile.write(PAYLOAD[i:i + 1])
            h.wfile.flush()
        except OSError:
            return
        time.sleep(0.05)


ROUTES: dict[str, Behaviour] = {
    "/files/good.tar.gz": _full,
    "/files/missing.tar.gz": _status(404),
    "/files/forbidden.tar.gz": _status(403),
    "/files/truncated.tar.gz": _truncated,
    "/files/flaky.tar.gz": _first_truncated,
    "/files/busy.tar.gz": _first_500,
    "/files/nolength.tar.gz": _no_length_short,
    "/files/stall.tar.gz": _stall,
    "/files/drip.tar.gz": _drip,
}


class Server:
    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[self.path] = hits.get(self.path, 0) + 1
                ROUTES.get(self.path, _status(404))(self, hits[self.path])

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


@pytest.fixture
def dirs(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(dest=tmp_path / "dest", downloads=tmp_path / "downloads",
                           log=tmp_path / "log")


def _fetch(spec: SourceSpec, d: SimpleNamespace, dest: Path | None = None) -> dict[str, Any]:
    return fetch(spec, dest or d.dest, downloads=d.downloads, log=d.log, backoff=0.01)


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def url_spec(url: str, sha: str = PAYLOAD_SHA, **kw: Any) -> UrlSource:
    return UrlSource(url=url, sha256=sha, **kw)


# -- url sources ----------------------------------------------------------------------------

def test_good_file_is_fetched_verified_and_described(server: Server, dirs: SimpleNamespace) -> None:
    info = _fetch(url_spec(server.url("good.tar.gz")), dirs)
    assert (dirs.dest / "good.tar.gz").read_bytes() == PAYLOAD
    assert info == json.loads((dirs.dest / "source.json").read_text())
    assert info["kind"] == "url" and info["primary"] == "good.tar.gz"
    assert info["files"] == [{"name": "good.tar.gz", "sha256": PAYLOAD_SHA}]
    assert (dirs.downloads / "sha256" / PAYLOAD_SHA).read_bytes() == PAYLOAD
    assert primary_archive(dirs.dest) == dirs.dest / "good.tar.gz"


def test_filename_overrides_the_url_name(server: Server, dirs: SimpleNamespace) -> None:
    info = _fetch(url_spec(server.url("good.tar.gz"), filename="xen-4.17.tar.gz"), dirs)
    assert info["primary"] == "xen-4.17.tar.gz"
    assert (dirs.dest / "xen-4.17.tar.gz").read_bytes() == PAYLOAD


def test_wrong_checksum_names_both_and_keeps_nothing(server: Server,
                                                     dirs: SimpleNamespace) -> None:
    wrong = "0" * 64
    with pytest.raises(SourceError) as exc:
        _fetch(url_spec(server.url("good.tar.gz"), sha=wrong), dirs)
    text = exc.value.render()
    assert server.url("good.tar.gz") in text
    assert wrong in text and PAYLOAD_SHA in text
    assert f"update sha256 in the recipe to {PAYLOAD_SHA}" in exc.value.hint
    assert _files_under(dirs.downloads) == []
    assert not (dirs.dest / "good.tar.gz").exists()
    assert server.hits["/files/good.tar.gz"] == 1  # a complete body that mismatches: no retry


@pytest.mark.parametrize(("name", "code"), [("missing.tar.gz", 404), ("forbidden.tar.gz", 403)])
def test_http_client_errors_fail_at_once(server: Server, dirs: SimpleNamespace, name: str,
                                         code: int) -> None:
    with pytest.raises(SourceError) as exc:
        _fetch(url_spec(server.url(name)), dirs)
    assert server.url(name) in exc.value.message and str(code) in exc.value.message
    assert exc.value.exit_code == 1
    assert server.hits[f"/files/{name}"] == 1
    assert _files_under(dirs.downloads) == []


def test_connection_dropped_mid_file_is_retried_then_reported(server: Server,
                                                             dirs: SimpleNamespace) -> None:
    with pytest.raises(SourceError) as exc:
        _fetch(url_spec(server.url("truncated.tar.gz")), dirs)
    assert server.hits["/files/truncated.tar.gz"] == 3
    msg = exc.value.message
    assert "after 3 tries" in msg and server.url("truncated.tar.gz") in msg
    assert str(len(PAYLOAD)) in msg  # says how much was promised
    assert _files_under(dirs.downloads) == []
    assert not dirs.dest.joinpath("truncated.tar.gz").exists()


def test_connection_dropped_once_then_succeeds(server: Server, dirs: SimpleNamespace) -> None:
    info = _fetch(url_spec(server.url("flaky.tar.gz")), dirs)
    assert server.hits["/files/flaky.tar.gz"] == 2
    assert (dirs.dest / info["primary"]).read_bytes() == PAYLOAD
    assert "connection lost" in dirs.log.read_text()


def test_server_error_is_retried(server: Server, dirs: SimpleNamespace) -> None:
    _fetch(url_spec(server.url("busy.tar.gz")), dirs)
    assert server.hits["/files/busy.tar.gz"] == 2


def test_short_body_without_length_is_retried_then_reported_as_mismatch(
        server: Server, dirs: SimpleNamespace) -> None:
    with pytest.raises(SourceError) as exc:
        _fetch(url_spec(server.url("nolength.tar.gz")), dirs)
    assert server.hits["/files/nolength.tar.gz"] == 3
    assert "checksum mismatch" in exc.value.message
    assert _files_under(dirs.downloads) == []


def test_a_stalled_download_times_out_is_retried_then_reported(
        server: Server, dirs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENFORGE_DOWNLOAD_IDLE", "0.3")
    start = time.monotonic()
    with pytest.raises(SourceError) as exc:
        _fetch(url_spec(server.url("stall.tar.gz")), dirs)
    assert time.monotonic() - start < 2.5  # three tries of 0.3 s idle, not the server's 3 s
    assert server.hits["/files/stall.tar.gz"] == 3
    assert "after 3 tries" in exc.value.message
    assert "stalled after 1000 bytes" in dirs.log.read_text()
    assert _files_under(dirs.downloads) == []


def test_a_dripping_download_hits_the_overall_timeout(
        server: Server, dirs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENFORGE_DOWNLOAD_IDLE", "1")  # each byte comes well within this
    monkeypatch.setenv("XENFORGE_DOWNLOAD_TIMEOUT", "0.4")
    start = time.monotonic()
    with pytest.raises(SourceError):
        _fetch(url_spec(server.url("drip.tar.gz")), dirs)
    assert time.monotonic() - start < 2.5
    assert "not done within" in dirs.log.read_text()  # the watchdog, not the idle timeout
    assert _files_under(dirs.downloads) == []


def test_an_interrupt_stops_a_stalled_download_at_once(
        server: Server, dirs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENFORGE_DOWNLOAD_IDLE", "30")
    result: list[BaseException] = []

    def run() -> None:
        try:
            _fetch(url_spec(server.url("stall.tar.gz")), dirs)
        except BaseException as exc:  # the thread reports what stopped it
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    while server.hits.get("/files/stall.tar.gz", 0) == 0:
        time.sleep(0.02)
    time.sleep(0.2)
    start = time.monotonic()
    try:
        runner.kill_all()
        t.join(5)
    finally:
        runner._cancelled.clear()  # process-wide: later tests must download again
    assert not t.is_alive() and time.monotonic() - start < 2
    assert result and isinstance(result[0], runner.Interrupted)
    assert server.hits["/files/stall.tar.gz"] == 1  # an interrupt is no reason to retry
    assert _files_under(dirs.downloads) == []


def test_connection_refused_is_retried_then_reported(dirs: SimpleNamespace) -> None:
    s = Server()
    url = s.url("good.tar.gz")
    s.stop()  # nobody listens on that port any more
    with pytest.raises(SourceError) as exc:
        _fetch(url_spec(url), dirs)
    assert "after 3 tries" in exc.value.message and url in exc.value.message


def test_second_fetch_is_served_locally(server: Server, dirs: SimpleNamespace,
                                        tmp_path: Path) -> None:
    spec = url_spec(server.url("good.tar.gz"))
    _fetch(spec, dirs)
    server.stop()
    info = _fetch(spec, dirs, dest=tmp_path / "again")
    assert (tmp_path / "again" / "good.tar.gz").read_bytes() == PAYLOAD
    assert info["files"] == [{"name": "good.tar.gz", "sha256": PAYLOAD_SHA}]
    assert "not downloaded" in dirs.log.read_text()
    # the same bytes under another address are the same source: still no network needed
    _fetch(url_spec("http://127.0.0.1:9/elsewhere/good.tar.gz"), dirs, dest=tmp_path / "third")
    assert server.hits["/files/good.tar.gz"] == 1


def test_a_corrupt_stored_download_is_replaced(server: Server, dirs: SimpleNamespace,
                                               tmp_path: Path) -> None:
    spec = url_spec(server.url("good.tar.gz"))
    _fetch(spec, dirs)
    blob = dirs.downloads / "sha256" / PAYLOAD_SHA
    blob.chmod(0o644)
    blob.write_bytes(b"bit rot")
    _fetch(spec, dirs, dest=tmp_path / "again")
    assert (tmp_path / "again" / "good.tar.gz").read_bytes() == PAYLOAD
    assert server.hits["/files/good.tar.gz"] == 2


def test_leftover_partial_files_are_never_used(server: Server, dirs: SimpleNamespace) -> None:
    # what a killed run leaves behind: a partial temp file next to the store
    dirs.downloads.mkdir(parents=True)
    (dirs.downloads / ".part-killed").write_bytes(PAYLOAD[:100])
    # a killed run's (its process is gone) and a live one's (this process: still writing)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (dirs.downloads / f".part-{gone.pid}-x1y2").write_bytes(PAYLOAD[:100])
    (dirs.downloads / f".part-{os.getpid()}-x3y4").write_bytes(PAYLOAD[:10])
    _fetch(url_spec(server.url("good.tar.gz")), dirs)
    assert (dirs.dest / "good.tar.gz").read_bytes() == PAYLOAD
    assert server.hits["/files/good.tar.gz"] == 1
    # the dead process's partial file is gone at once, the live one's and the old-style
    # name (no pid: removed only when old) stay
    left = sorted(p.name for p in dirs.downloads.glob(".part-*"))
    assert left == [f".part-{os.getpid()}-x3y4", ".part-killed"], left


# -- path sources ---------------------------------------------------------------------------

def test_path_file_and_dir_are_copied_and_hashed(tmp_path: Path, dirs: SimpleNamespace) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.c").write_text("int a;\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    info = _fetch(PathSource(path=src), dirs)
    assert info["primary"] == "src" and info["type"] == "dir"
    assert info["files"] == [{"name": "src", "sha256": tree_hash(src)}]
    assert (dirs.dest / "src" / "sub" / "a.c").read_text() == "int a;\n"
    assert (dirs.dest / "src" / "run.sh").stat().st_mode & 0o111

    f = tmp_path / "x.tar.gz"
    f.write_bytes(b"abc")
    info = _fetch(PathSource(path=f), dirs, dest=tmp_path / "d2")
    assert info["files"] == [{"name": "x.tar.gz",
                              "sha256": hashlib.sha256(b"abc").hexdigest()}]


def test_path_identity_is_content_not_location(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "linux", tmp_path / "b" / "linux"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "Makefile").write_text("all:\n")
    ia, ib = PathSource(path=a).identity(), PathSource(path=b).identity()
    assert ia == ib and ia["sha256"] == tree_hash(a)
    (b / "Makefile").write_text("all: x\n")
    assert PathSource(path=b).identity() != ia


# -- spec validation ------------------------------------------------------------------------

class Holder(BaseModel):
    source: SourceSpec


def _errors(data: Any, base: Path | None = None) -> list[Any]:
    with pytest.raises(ValidationError) as exc:
        Holder.model_validate({"source": data}, context={"base": base} if base else None)
    return exc.value.errors()


@pytest.mark.parametrize("bad", ["abc", "A" * 64, "g" * 64, "a" * 65, 12])
def test_bad_sha256_format(bad: Any) -> None:
    errs = _errors({"url": "https://example.org/x.tar.gz", "sha256": bad})
    assert len(errs) == 1 and errs[0]["type"] == "sha256_format"
    assert errs[0]["loc"][-1] == "sha256"
    assert "64" in errs[0]["msg"] or "lower case" in errs[0]["msg"]
    assert errs[0]["ctx"]["hint"]


def test_uppercase_sha256_hint_gives_the_fix() -> None:
    with pytest.raises(InputError) as exc:
        parse_source({"url": "https://example.org/x.tar.gz", "sha256": "AB" * 32})
    assert "ab" * 32 in exc.value.hint


@pytest.mark.parametrize("value", ["hello", "hello=", "xen"])
def test_unpinned_apt_is_refused(value: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_source({"apt": value})
    assert "not pinned" in exc.value.message
    assert "apt-cache showsrc" in exc.value.hint
    assert exc.value.exit_code == 2


def test_unpinned_deb_is_refused() -> None:
    errs = _errors({"deb": "linux-source-6.1", "member": "usr/src/linux-source-6.1.tar.xz"})
    assert [e["type"] for e in errs] == ["source_not_pinned"]


@pytest.mark.parametrize("data", [
    {"url": "https://example.org/x", "sha256": "a" * 64, "path": "."},
    {"apt": "hello=2.10-3", "deb": "hello=2.10-3"},
    {"sha256": "a" * 64},
    {},
    "https://example.org/x",
])
def test_exactly_one_kind(data: Any) -> None:
    errs = _errors(data)
    assert len(errs) == 1
    assert errs[0]["msg"] == "a source needs exactly one of url, apt, deb, path"
    with pytest.raises(InputError) as exc:
        parse_source(data)
    assert "exactly one of url, apt, deb, path" in exc.value.message


def test_two_kinds_error_names_them() -> None:
    with pytest.raises(InputError) as exc:
        parse_source({"url": "https://example.org/x", "path": "."})
    assert "found url, path" in exc.value.message


def test_missing_path_is_an_error_with_a_hint(tmp_path: Path) -> None:
    errs = _errors({"path": "no/such/dir"}, base=tmp_path)
    assert errs[0]["type"] == "source_path_missing"
    assert str(tmp_path / "no/such/dir") in errs[0]["msg"]
    assert "relative" in errs[0]["ctx"]["hint"]


def test_relative_path_resolves_against_the_base(tmp_path: Path) -> None:
    (tmp_path / "recipes" / "src").mkdir(parents=True)
    spec = parse_source({"path": "src"}, base=tmp_path / "recipes")
    assert isinstance(spec, PathSource) and spec.path == tmp_path / "recipes" / "src"
    spec = parse_source({"path": "../recipes/src"}, base=tmp_path / "recipes")
    assert isinstance(spec, PathSource) and spec.path == tmp_path / "recipes" / "src"


def test_unknown_key_in_a_source_is_refused() -> None:
    errs = _errors({"url": "https://example.org/x", "sha256": "a" * 64, "md5": "x"})
    assert [e["type"] for e in errs] == ["extra_forbidden"]


def test_other_field_checks() -> None:
    assert _errors({"url": "ftp://example.org/x", "sha256": "a" * 64})[0]["type"] == "source_url"
    assert _errors({"deb": "ab=1", "member": "../etc/passwd"})[0]["type"] == "source_member"
    assert _errors({"url": "https://e.org/x", "sha256": "a" * 64, "filename": "a/b"}
                   )[0]["type"] == "source_filename"
    deb = parse_source({"deb": "linux-source-6.1=6.1.176-1",
                        "member": "./usr/src/linux-source-6.1.tar.xz"})
    assert isinstance(deb, DebSource) and deb.member == "usr/src/linux-source-6.1.tar.xz"
    apt = parse_source({"apt": "xen=4.17.5+72-g01140da4e8-1"})
    assert isinstance(apt, AptSource) and (apt.package, apt.version) == (
        "xen", "4.17.5+72-g01140da4e8-1")
    assert parse_source({"apt": "foo=1:2.0~rc1-3"}).identity()["apt"] == "foo=1:2.0~rc1-3"


def test_specs_are_frozen_and_json_schema_works() -> None:
    spec = UrlSource(url="https://example.org/x.tar.gz", sha256="a" * 64)
    with pytest.raises(ValidationError):
        spec.sha256 = "b" * 64  # type: ignore[misc]
    schema = Holder.model_json_schema()
    assert set(schema["$defs"]) >= {"UrlSource", "AptSource", "DebSource", "PathSource"}


# -- unpack ---------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,suffix", [("-z", ".tar.gz"), ("-J", ".tar.xz"),
                                         ("--zstd", ".tar.zst"), ("-j", ".tar.bz2")])
def test_unpack_strips_the_top_folder(tmp_path: Path, flag: str, suffix: str) -> None:
    top = tmp_path / "pkg-1.0"
    (top / "src").mkdir(parents=True)
    (top / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (top / "configure").write_text("#!/bin/sh\n")
    (top / "configure").chmod(0o755)
    archive = tmp_path / f"pkg-1.0{suffix}"
    runner.run(["tar", flag, "-c", "-f", archive, "-C", tmp_path, "pkg-1.0"])
    unpack(archive, tmp_path / "tree")
    assert (tmp_path / "tree" / "src" / "main.c").is_file()
    assert (tmp_path / "tree" / "configure").stat().st_mode & 0o100


def test_unpack_refuses_a_non_archive(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    with pytest.raises(SourceError, match="not a tar archive"):
        unpack(f, tmp_path / "tree")


# -- the source stage -----------------------------------------------------------------------

def _ctx(tmp_path: Path, options: Any, files: dict[str, Path] | None = None) -> StageContext:
    return stage_context(tmp_path, node="source:x", options=options, files=files or {})


def test_source_stage_fetches_into_out(server: Server, tmp_path: Path) -> None:
    opts = SourceStage.Options.model_validate(
        {"spec": {"url": server.url("good.tar.gz"), "sha256": PAYLOAD_SHA}})
    ctx = _ctx(tmp_path, opts)
    SourceStage().run(ctx)
    assert (ctx.out / "good.tar.gz").read_bytes() == PAYLOAD
    assert json.loads((ctx.out / "source.json").read_text())["primary"] == "good.tar.gz"
    assert "primary good.tar.gz" in ctx.log.read_text()


def test_source_stage_takes_a_path_from_the_node_files(tmp_path: Path) -> None:
    # the planner keeps only the name in the options and hands the location over as a file
    src = tmp_path / "checkouts" / "xen"
    src.mkdir(parents=True)
    (src / "README").write_text("xen\n")
    opts = SourceStage.Options.model_validate({"spec": {"path": "xen"}})
    ctx = _ctx(tmp_path, opts, files={"path": src})
    SourceStage().run(ctx)
    assert (ctx.out / "xen" / "README").read_text() == "xen\n"
    assert primary_archive(ctx.out) == ctx.out / "xen"
