"""A shared remote cache: node objects over plain HTTP (GET, HEAD, PUT and WebDAV's MOVE),
so a stock server - nginx's dav module, or anything that stores PUT bodies - holds the
objects of many runners, and one runner's work is never repeated on another.

Layout below the cache URL::

    v1/ab/<id>.<sha>.tar.zst  the object: out/ and log, a POSIX tar (sparse files kept),
                              zstd; named by (a prefix of) its own sha256
    v1/ab/<id>.json           its manifest: the local one plus the archive's name, size
                              and sha256

Both are uploaded to a temporary name and moved into place (WebDAV MOVE; a server without
MOVE gets a plain PUT to the final name), the manifest last: an object without a manifest
does not exist for a reader, and two runners uploading the same node at once each leave a
consistent pair (the last manifest names its own archive). Only ``out/`` and ``log`` may
be in an archive, and nothing in it may be other than its manifest lists (kind, size,
sha256, mode, owner): the checks are for integrity; who may write the cache is the
server's to enforce (give untrusted jobs read-only credentials). A download is checked
against the manifest twice - the archive's sha256 as it arrives, then every extracted
file - and one that fails is never used: the node is built locally and the damaged copy
reported (and replaced, unless read-only).

Credentials come from ``XENFORGE_REMOTE_CACHE_TOKEN`` (a bearer token),
``XENFORGE_REMOTE_CACHE_USER``/``XENFORGE_REMOTE_CACHE_PASSWORD`` (basic) or a netrc
(``$NETRC`` or ``~/.netrc``), never from the URL: a URL is shown in logs and on the
command line, so one with ``user:password@`` is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from xenforge.cache.store import RECORDS, LocalStore, verify_files
from xenforge.core import run as runner
from xenforge.core.errors import InputError, XenforgeError
from xenforge.core.hashing import sha256_file
from xenforge.core.leftovers import remove_tree
from xenforge.core.units import human_size

#: environment variables of the remote cache (the command line wins, then these, then the
#: recipe's ``cache:`` section)
URL_VAR = "XENFORGE_REMOTE_CACHE"
READ_ONLY_VAR = "XENFORGE_REMOTE_CACHE_READ_ONLY"
TOKEN_VAR = "XENFORGE_REMOTE_CACHE_TOKEN"
USER_VAR = "XENFORGE_REMOTE_CACHE_USER"
PASSWORD_VAR = "XENFORGE_REMOTE_CACHE_PASSWORD"

LAYOUT = "v1"
CHUNK = 1 << 20
MAX_MANIFEST = 256 << 20  # a buildroot's manifest is a few MiB
#: connect and idle-read timeouts of every request (seconds)
TIMEOUT = (10.0, 120.0)
RETRIES = 3


class RemoteError(XenforgeError):
    """The remote cache could not be used for one request (the build goes on without it)."""


class DamagedObject(RemoteError):
    """A remote object that failed verification: never used."""


@dataclass(frozen=True)
class RemoteSettings:
    url: str  # ends with "/"; never holds credentials
    read_only: bool = False

    @classmethod
    def choose(cls, *, cli_url: str | None, cli_read_only: bool, disabled: bool,
               recipe_url: str | None = None, recipe_read_only: bool = False
               ) -> RemoteSettings | None:
        """The remote cache a command uses: ``--remote-cache``, else $XENFORGE_REMOTE_CACHE,
        else the recipe's ``cache.remote``; none with ``--no-remote-cache``. Read-only if
        any of ``--remote-cache-read-only``, $XENFORGE_REMOTE_CACHE_READ_ONLY=1 or the
        recipe's ``cache.read_only`` says so."""
        if disabled:
            return None
        env_url = os.environ.get(URL_VAR)
        url = cli_url if cli_url is not None else env_url if env_url else recipe_url
        if url is None:
            return None
        source = ("--remote-cache" if cli_url is not None else URL_VAR if env_url
                  else "the recipe's cache.remote")
        env_ro = os.environ.get(READ_ONLY_VAR, "").strip().lower()
        if env_ro not in ("", "0", "1", "true", "false", "yes", "no"):
            raise InputError(f"{READ_ONLY_VAR}={env_ro!r} is not a yes or no",
                             hint="set it to 1 (read-only) or 0")
        read_only = cli_read_only or recipe_read_only or env_ro in ("1", "true", "yes")
        return cls(url=check_url(url, source), read_only=read_only)


def check_url(url: str, source: str) -> str:
    """An http(s) URL without credentials, ending with a slash."""
    parts = urllib.parse.urlsplit(url.strip())
    if "@" in parts.netloc:  # before anything echoes the URL
        raise InputError(f"{source}: the URL holds credentials (they would show in logs "
                         "and in the process list)",
                         hint=f"put them in ~/.netrc (or $NETRC), or set {USER_VAR} and "
                         f"{PASSWORD_VAR} (or {TOKEN_VAR})")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{source}: {url!r} is not an http:// or https:// URL",
                         hint="e.g. https://cache.example.org/xenforge/")
    if parts.query or parts.fragment or any(c in url for c in "\n\r\t\0 "):
        raise InputError(f"{source}: {url!r} has a query, fragment or whitespace",
                         hint="give the cache's base URL only")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@dataclass
class Transfer:
    """One object moved to or from the remote."""

    node_id: str
    bytes: int  # the archive's size
    seconds: float  # the HTTP transfer
    total: float  # with packing or unpacking and verifying

    @property
    def rate(self) -> float:
        """MiB/s of the transfer itself."""
        return self.bytes / (1 << 20) / self.seconds if self.seconds > 0 else 0.0

    def describe(self, verb: str) -> str:
        return (f"{verb} {human_size(self.bytes)} in {self.total:.1f}s (transfer "
                f"{self.seconds:.1f}s, {self.rate:.0f} MiB/s)")


class RemoteCache:
    """The client: which objects the remote has, fetch one into the local store, push one."""

    def __init__(self, settings: RemoteSettings, *, tmp_dir: Path, log: Path | None = None,
                 session: requests.Session | None = None) -> None:
        self.settings = settings
        self.tmp_dir = tmp_dir
        self.log = log
        self.session = session or _session()

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def writable(self) -> bool:
        return not self.settings.read_only

    def _url(self, node_id: str, suffix: str) -> str:
        return f"{self.url}{LAYOUT}/{node_id[:2]}/{node_id}{suffix}"

    def _note(self, text: str) -> None:
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")

    # -- requests -------------------------------------------------------------------------
    def _request(self, method: str, url: str, *, ok: Iterable[int], upload: Path | None = None,
                 **kw: Any) -> requests.Response:
        """One request, retried on connection errors and 5xx answers (not on 4xx); the
        answer when its status is in ``ok``, RemoteError otherwise. ``upload``: a file sent
        as the body (streamed, opened again for each attempt). The URL is logged, never a
        credential (they travel in headers requests adds)."""
        ok = set(ok)
        last = ""
        for attempt in range(RETRIES):
            if attempt:
                time.sleep(2 ** (attempt - 1))
            try:
                if upload is not None:
                    with open(upload, "rb") as body:
                        resp = self.session.request(method, url, timeout=TIMEOUT, data=body,
                                                    **kw)
                else:
                    resp = self.session.request(method, url, timeout=TIMEOUT, **kw)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {_reason(exc)}"
                self._note(f"{method} {url}: {last}")
                continue
            self._note(f"{method} {url}: {resp.status_code}")
            if resp.status_code in ok:
                return resp
            last = f"HTTP {resp.status_code} {resp.reason}"
            if resp.status_code in (401, 403):
                raise RemoteError(f"the remote cache refused {method} {url} ({last})",
                                  hint=f"give credentials in ~/.netrc or {USER_VAR}/"
                                  f"{PASSWORD_VAR} ({TOKEN_VAR}); a job that may not write "
                                  "uses --remote-cache-read-only")
            if resp.status_code < 500:
                break
        raise RemoteError(f"{method} {url} failed: {last}")

    def has(self, node_id: str) -> bool:
        """Whether the remote holds the object (its manifest is in place)."""
        resp = self._request("HEAD", self._url(node_id, ".json"), ok=(200, 404))
        return resp.status_code == 200

    def which(self, node_ids: Iterable[str]) -> dict[str, bool]:
        """``has`` for many objects at once (a few requests in flight)."""
        ids = list(dict.fromkeys(node_ids))
        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(ids, pool.map(self.has, ids), strict=True))

    # -- download -------------------------------------------------------------------------
    def fetch(self, node_id: str, store: LocalStore) -> Transfer:
        """Download the object, verify it and put it into ``store``. DamagedObject when the
        remote copy is missing pieces, truncated or altered (nothing is stored then)."""
        start = time.monotonic()
        resp = self._request("GET", self._url(node_id, ".json"), ok=(200, 404), stream=True)
        with resp:
            if resp.status_code == 404:
                raise DamagedObject(f"remote object {node_id[:12]} has no manifest")
            body = resp.raw.read(MAX_MANIFEST + 1, decode_content=True)
        if len(body) > MAX_MANIFEST:
            raise DamagedObject(f"remote object {node_id[:12]}: its manifest is over "
                                f"{MAX_MANIFEST >> 20} MiB")
        manifest = _remote_manifest(node_id, body)
        archive = manifest.pop("archive")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        staging = self.tmp_dir / f"{node_id}.fetch.{os.getpid()}.{secrets.token_hex(4)}"
        blob = staging.with_name(staging.name + ".tar.zst")
        try:
            staging.mkdir()
            resp = self._request("GET", self._url(node_id, f".{archive['name']}"),
                                 ok=(200, 404), stream=True)
            with resp:
                if resp.status_code == 404:
                    raise DamagedObject(f"remote object {node_id[:12]}: its archive is "
                                        "missing")
                digest, size = _save(resp, blob, limit=archive["size"])
            if size != archive["size"]:
                raise DamagedObject(f"remote object {node_id[:12]}: the archive has {size} "
                                    f"bytes, its manifest says {archive['size']} (truncated?)")
            if digest != archive["sha256"]:
                raise DamagedObject(f"remote object {node_id[:12]}: the archive's sha256 is "
                                    "not its manifest's (damaged)")
            took = time.monotonic() - start
            res = runner.run(["tar", "--zstd", "-x", "--numeric-owner", "--xattrs",
                              "-f", blob, "-C", staging], check=False, log=self.log)
            if res.returncode != 0:
                raise DamagedObject(f"remote object {node_id[:12]}: its archive does not "
                                    "extract")
            _check_top(node_id, staging)
            problems = verify_files(staging / "out", manifest["files"], full=True)
            if problems:
                raise DamagedObject(f"remote object {node_id[:12]}: {problems[0]}")
            manifest["fetched_from"] = self.url
            store.adopt(node_id, staging, manifest)
            return Transfer(node_id, size, took, time.monotonic() - start)
        finally:
            blob.unlink(missing_ok=True)
            if staging.exists():
                remove_tree(staging)

    # -- upload ---------------------------------------------------------------------------
    def push(self, node_id: str, store: LocalStore) -> Transfer:
        """Upload a local object (archive, then manifest, each moved into place)."""
        if not self.writable:
            raise RemoteError("the remote cache is read-only here")
        start = time.monotonic()
        obj = store.object_dir(node_id)
        manifest = store.manifest(node_id)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        blob = self.tmp_dir / f"{node_id}.push.{os.getpid()}.{secrets.token_hex(4)}.tar.zst"
        try:
            members = ["out"] + (["log"] if (obj / "log").exists() else [])
            runner.run(["tar", "--zstd", "-c", "--format=posix", "--sparse", "--xattrs",
                        "--numeric-owner", "--sort=name", "-f", blob, "-C", obj, *members],
                       log=self.log, env={"ZSTD_CLEVEL": "3", "ZSTD_NBTHREADS": "0"})
            size = blob.stat().st_size
            digest = sha256_file(blob)
            name = f"{digest[:16]}.tar.zst"
            sent = time.monotonic()
            self._put(self._url(node_id, f".{name}"), blob)
            record = {k: v for k, v in manifest.items() if k != "fetched_from"}
            record["archive"] = {"name": name, "sha256": digest, "size": size}
            self._put_bytes(self._url(node_id, ".json"),
                            json.dumps(record, indent=2, sort_keys=True).encode())
            now = time.monotonic()
            return Transfer(node_id, size, now - sent, now - start)
        finally:
            blob.unlink(missing_ok=True)

    def _put(self, url: str, path: Path) -> None:
        tmp = f"{url}.tmp-{secrets.token_hex(6)}"
        self._request("PUT", tmp, ok=(200, 201, 204), upload=path)
        self._move(tmp, url, lambda: self._put_file_direct(url, path))

    def _put_bytes(self, url: str, body: bytes) -> None:
        tmp = f"{url}.tmp-{secrets.token_hex(6)}"
        self._request("PUT", tmp, ok=(200, 201, 204), data=body)
        self._move(tmp, url, lambda: self._request("PUT", url, ok=(200, 201, 204), data=body))

    def _put_file_direct(self, url: str, path: Path) -> None:
        self._request("PUT", url, ok=(200, 201, 204), upload=path)

    def _move(self, src: str, dest: str, fallback: Callable[[], object]) -> None:
        """WebDAV MOVE ``src`` to ``dest`` (replacing it); a server without MOVE gets the
        body again by ``fallback`` (a PUT to ``dest``: readers check sha256s anyway)."""
        resp = self._request("MOVE", src, ok=(200, 201, 204, 405, 501),
                             headers={"Destination": dest, "Overwrite": "T"})
        if resp.status_code in (405, 501):
            fallback()
            self._request("DELETE", src, ok=(200, 202, 204, 404, 405))


class _Bearer(requests.auth.AuthBase):
    """A bearer token (as ``auth``, so that no netrc entry replaces it)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


def _session() -> requests.Session:
    s = requests.Session()
    token = os.environ.get(TOKEN_VAR)
    user = os.environ.get(USER_VAR)
    if token:
        s.auth = _Bearer(token)
    elif user:
        s.auth = (user, os.environ.get(PASSWORD_VAR, ""))
    # otherwise requests reads $NETRC or ~/.netrc for the host (trust_env)
    return s


def _remote_manifest(node_id: str, body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise DamagedObject(f"remote object {node_id[:12]}: its manifest is not JSON") from None
    ok = (isinstance(data, dict) and data.get("id") == node_id
          and data.get("records") == RECORDS
          and isinstance(data.get("files"), dict) and isinstance(data.get("archive"), dict)
          and isinstance(data["archive"].get("sha256"), str)
          and isinstance(data["archive"].get("size"), int)
          and re.fullmatch(r"[0-9a-f]{16}\.tar\.zst", str(data["archive"].get("name"))))
    if not ok:
        raise DamagedObject(f"remote object {node_id[:12]}: its manifest is not one of an "
                            "object (wrong id or shape)")
    return dict(data)


def _check_top(node_id: str, staging: Path) -> None:
    """An archive holds a real directory ``out`` and maybe a regular file ``log``, no more."""
    for entry in staging.iterdir():
        st = entry.lstat()
        ok = (entry.name == "out" and stat.S_ISDIR(st.st_mode)) or (
            entry.name == "log" and stat.S_ISREG(st.st_mode))
        if not ok:
            raise DamagedObject(f"remote object {node_id[:12]}: its archive holds "
                                f"{entry.name!r}, which an object may not")
    if not (staging / "out").is_dir():
        raise DamagedObject(f"remote object {node_id[:12]}: its archive has no out/")


def _save(resp: requests.Response, dest: Path, *, limit: int) -> tuple[str, int]:
    """Write the body to ``dest``; stop reading once it is longer than ``limit``."""
    h = hashlib.sha256()
    size = 0
    try:
        with open(dest, "wb") as f:
            for chunk in resp.iter_content(CHUNK):
                runner.check_cancelled()
                h.update(chunk)
                size += len(chunk)
                if size > limit:
                    break
                f.write(chunk)
    except requests.RequestException as exc:
        raise DamagedObject(f"download of {resp.url} broke off: {_reason(exc)}") from None
    return h.hexdigest(), size


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."
