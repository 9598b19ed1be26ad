"""The download store and HTTP(S) downloads with verification.

``<downloads>/sha256/<hash>`` holds verified files only: a download streams into a ``.part-*``
temp file, is hashed while streaming and moved into place only when the hash matches. A
killed run leaves at most a ``.part-PID-*`` file, which nothing reads and the next run
removes (its process is gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import urllib3.exceptions

from xenforge.core import run as runner
from xenforge.core.errors import SourceError
from xenforge.core.files import note, write_json_atomic
from xenforge.core.hashing import CHUNK

STALE_SECONDS = 24 * 3600
TRIES = 3
BACKOFF = 2.0  # seconds before the 2nd try; doubled for each further one
CONNECT_TIMEOUT = 15.0


def _seconds(var: str, default: float) -> float:
    """A positive number of seconds from the environment (``default`` if unset or bad)."""
    try:
        value = float(os.environ.get(var, ""))
    except ValueError:
        return default
    return value if 0 < value < 1e7 else default


#: a download that receives nothing for this long is stalled (``XENFORGE_DOWNLOAD_IDLE``)
def idle_timeout() -> float:
    return _seconds("XENFORGE_DOWNLOAD_IDLE", 60.0)


#: a download that takes longer than this in all is stalled (``XENFORGE_DOWNLOAD_TIMEOUT``;
#: a server dripping a byte a second never trips the idle timeout)
def overall_timeout() -> float:
    return _seconds("XENFORGE_DOWNLOAD_TIMEOUT", 3600.0)


class DownloadStore:
    """``<root>/sha256/<hash>``: verified blobs; ``<root>/index/<key>.json``: what a pinned
    Debian package resolved to. Temp names start with a dot and the pid of the process
    that writes them (``.part-PID-*``), and are never read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._clean_stale()

    def blob(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).is_file()

    def add(self, src: Path, sha256: str) -> Path:
        """Move a verified file (on the same filesystem) into the store."""
        target = self.blob(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(src, 0o444)
        os.replace(src, target)
        return target

    def export(self, sha256: str, dest: Path) -> bool:
        """Copy a blob to ``dest``, re-verifying it; a corrupt blob is removed (-> False)."""
        h = hashlib.sha256()
        tmp = dest.with_name(f".tmp-{dest.name}")
        with open(self.blob(sha256), "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            tmp.unlink()
            self.blob(sha256).unlink(missing_ok=True)
            return False
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
        return True

    def read_index(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / "index" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_index(self, key: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.root / "index" / f"{key}.json", data)

    @contextmanager
    def tempdir(self, prefix: str) -> Iterator[Path]:
        """A scratch folder inside the store (same filesystem: its files can be added)."""
        path = Path(tempfile.mkdtemp(prefix=f".{prefix}-{os.getpid()}-", dir=self.root))
        try:
            os.chmod(path, 0o755)  # apt downloads as the unprivileged _apt user when root
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _clean_stale(self) -> None:
        """Remove leftovers of killed runs: those whose process is gone, and old ones
        without a pid in their name (another run may be downloading)."""
        now = time.time()
        for p in self.root.glob(".*"):
            fields = p.name.split("-")
            owner = int(fields[1]) if len(fields) > 2 and fields[1].isdigit() else None
            try:
                if (owner is not None and not runner.running(owner)) or \
                        (owner is None and now - p.lstat().st_mtime > STALE_SECONDS):
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink()
            except OSError:
                pass


class _Retry(Exception):
    """A failure worth another try; ``final`` is raised instead if no try is left."""

    def __init__(self, message: str, final: SourceError | None = None) -> None:
        super().__init__(message)
        self.final = final


def download(url: str, sha256: str, store: DownloadStore, log: Path, *, tries: int = TRIES,
             backoff: float = BACKOFF) -> None:
    """Download ``url`` into the store as ``sha256/<sha256>``, verified; SourceError if not.

    Connection errors, timeouts, 5xx answers and truncated bodies are retried (``tries`` in
    all, waiting ``backoff``, 2*``backoff``, ... between them); 4xx answers and a checksum
    mismatch of a complete body fail at once, and so does a local write error (OSError
    naming the partial file, e.g. a full disk: no network fault, no reason to retry).
    """
    last: _Retry | None = None
    for attempt in range(1, tries + 1):
        runner.check_cancelled()
        note(log, f"downloading {url} (try {attempt} of {tries})")
        try:
            _download_once(url, sha256, store, log)
            return
        except _Retry as exc:
            last = exc
            note(log, f"{url}: {exc}")
            if attempt < tries:
                runner.cancel_wait(backoff * 2 ** (attempt - 1))
    assert last is not None
    if last.final is not None:
        raise last.final
    raise SourceError(f"could not download {url} after {tries} tries: {last}",
                      hint="check the network and that the server is up; run the build "
                           "again to retry")


def _download_once(url: str, sha256: str, store: DownloadStore, log: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".part-{os.getpid()}-", dir=store.root)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                received, actual, expected = _stream(url, out)
        except OSError as exc:  # writing it here failed (a full disk): not retried
            if exc.filename is None and not isinstance(exc, requests.RequestException):
                exc.filename = str(tmp)
            raise
        if expected is not None and received != expected:
            raise _Retry(f"download truncated: received {received} of {expected} bytes")
        if actual != sha256:
            mismatch = SourceError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual} "
                f"({received} bytes)",
                hint=f"if the new file is trusted, update sha256 in the recipe to {actual}")
            if expected is None:  # no length to check: it may have been cut short
                raise _Retry(f"checksum mismatch after {received} bytes without a "
                             "Content-Length (truncated?)", final=mismatch)
            note(log, mismatch.message)
            raise mismatch
        store.add(tmp, sha256)
        note(log, f"{url}: {received} bytes, sha256 verified")
    finally:
        tmp.unlink(missing_ok=True)


def _stop(resp: requests.Response) -> None:
    """Wake a read blocked on the response's socket (an interrupt, the overall deadline):
    shutting the connection down makes the read return at once; closing alone does not.
    The shutdown goes through a duplicate of the socket's descriptor (``fileno()`` is the
    public handle of a streamed body); it ends the connection for both."""
    with contextlib.suppress(OSError, ValueError), \
            socket.fromfd(resp.raw.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.shutdown(socket.SHUT_RDWR)
    # no resp.close() here: the reading thread owns the response and closes it


def _stream(url: str, out: Any) -> tuple[int, str, int | None]:
    """GET ``url`` into ``out``: (bytes received, their sha256, Content-Length or None).
    Reads return what has arrived (a drip too), so the idle timeout bounds each wait and a
    watchdog the whole download; an interrupt stops it within a moment."""
    idle, overall = idle_timeout(), overall_timeout()
    try:
        resp = requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT, idle),
                            headers={"Accept-Encoding": "identity"})
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retry(f"connection failed: {exc}") from exc
    except requests.RequestException as exc:
        raise SourceError(f"cannot download {url}: {exc}",
                          hint="check the url in the recipe") from exc
    expired = threading.Event()

    def deadline() -> None:
        expired.set()
        _stop(resp)

    watchdog = threading.Timer(overall, deadline)
    watchdog.daemon = True
    watchdog.start()
    try:
        return _read(url, resp, out, expired, overall)
    finally:
        watchdog.cancel()


def _read(url: str, resp: requests.Response, out: Any, expired: threading.Event,
          overall: float) -> tuple[int, str, int | None]:
    with resp, runner.on_cancel(lambda: _stop(resp)):
        status = resp.status_code
        if status >= 500 or status in (408, 429):
            raise _Retry(f"HTTP {status} {resp.reason}")
        if status >= 400:
            hint = {404: "the file is gone or the url is misspelt; find its current address "
                         "and keep the sha256",
                    403: "the server refuses access; check the url (or mirror) in the recipe",
                    }.get(status, "check the url in the recipe")
            raise SourceError(f"download of {url} failed: HTTP {status} {resp.reason}",
                              hint=hint)
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        h = hashlib.sha256()
        received = 0
        while True:
            try:
                chunk = resp.raw.read1(CHUNK, decode_content=False)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                runner.check_cancelled()  # stopped by an interrupt: not a network problem
                if expired.is_set():
                    break
                what = "stalled" if isinstance(exc, urllib3.exceptions.ReadTimeoutError) \
                    else "connection lost"
                raise _Retry(f"{what} after {received} bytes"
                             + (f" of {expected}" if expected is not None else "")
                             + f": {type(exc).__name__}") from exc
            runner.check_cancelled()
            if not chunk or expired.is_set():
                break
            out.write(chunk)  # only reads are network faults: a full disk here propagates
            h.update(chunk)
            received += len(chunk)
        if expired.is_set():
            raise _Retry(f"not done within {overall:.0f}s (XENFORGE_DOWNLOAD_TIMEOUT) after "
                         f"{received} bytes")
        return received, h.hexdigest(), expected


