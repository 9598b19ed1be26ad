"""A source server on 127.0.0.1 that misbehaves on purpose, for fault tests: a real
threaded ``http.server`` whose routes drop the connection mid-body, stall, drip a byte a
second or serve other bytes than the recipe pins. ``heal()`` makes every route serve its
file properly (the next build must then download it again, from the start)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: what a route does: ``full`` serves the file; the others are the faults
KINDS = ("drop", "stall", "drip", "wrong")

Handler = http.server.BaseHTTPRequestHandler


def source_tarball(src: Path, tag: str, pad_kib: int = 256) -> bytes:
    """``src`` as ``linux-mini/`` in a .tar.gz with a member of ``pad_kib`` KiB of random
    bytes (several chunks on the wire; ``tag`` names it, so each route's file has its own
    sha256 and becomes a node of its own)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="linux-mini")
        pad = tarfile.TarInfo(f"linux-mini/padding-{tag}.bin")
        data = os.urandom(pad_kib << 10)
        pad.size = len(data)
        tar.addfile(pad, io.BytesIO(data))
    return buf.getvalue()


class BadServer:
    """Serves ``/<name>`` -> ``files[name]`` with the fault ``faults[name]`` (one of
    :data:`KINDS`, or ``full``); counts the requests of each path in ``hits``."""

    def __init__(self, files: dict[str, bytes], faults: dict[str, str]) -> None:
        self.files = files
        self.faults = dict(faults)
        self.hits: dict[str, int] = {}
        self.bytes_sent: dict[str, int] = {}
        self.stop_event = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Route(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                with server._lock:
                    server.hits[name] = server.hits.get(name, 0) + 1
                    kind = server.faults.get(name, "full")
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(OSError):  # the client gave up: the fault's aim
                    server.behaviours[kind](self, name, body)

            def log_message(self, *args: Any) -> None:
                pass

        self.behaviours: dict[str, Callable[[Handler, str, bytes], None]] = {
            "full": self._full, "drop": self._drop, "stall": self._stall,
            "drip": self._drip, "wrong": self._wrong}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Route)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def sha256(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest()

    def heal(self) -> None:
        """From now on every route serves its file whole and right."""
        with self._lock:
            self.faults = {}

    def stop(self) -> None:
        self.stop_event.set()  # stalled and dripping handlers return at once
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- behaviours -------------------------------------------------------------------------
    def _sent(self, name: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[name] = self.bytes_sent.get(name, 0) + n

    def _head(self, h: Handler, length: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(length))
        h.end_headers()

    def _full(self, h: Handler, name: str, body: bytes) -> None:
        self._head(h, len(body))
        h.wfile.write(body)
        self._sent(name, len(body))

    def _drop(self, h: Handler, name: str, body: bytes) -> None:
        """Promise the whole file, send 40% of it, close the connection."""
        self._head(h, len(body))
        part = body[: len(body) * 2 // 5]
        h.wfile.write(part)
        h.wfile.flush()
        self._sent(name, len(part))
        h.close_connection = True

    def _stall(self, h: Handler, name: str, body: bytes) -> None:
        """Send a third, then nothing (the connection stays open) until the test ends."""
        self._head(h, len(body))
        part = body[: len(body) // 3]
        h.wfile.write(part)
        h.wfile.flush()
        self._sent(name, len(part))
        self.stop_event.wait(120)

    def _drip(self, h: Handler, name: str, body: bytes) -> None:
        """One byte a second: never idle for long, never done."""
        self._head(h, len(body))
        for i in range(len(body)):
            h.wfile.write(body[i:i + 1])
            h.wfile.flush()
            self._sent(name, 1)
            if self.stop_event.wait(1.0):
                return

    def _wrong(self, h: Handler, name: str, body: bytes) -> None:
        """A complete body of the right length, but other bytes (a bad mirror)."""
        bad = bytearray(body)
        bad[len(bad) // 2] ^= 0xFF
        self._head(h, len(bad))
        h.wfile.write(bytes(bad))
        self._sent(name, len(bad))


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``check`` until it holds (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
