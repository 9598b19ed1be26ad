"""A real nginx (Debian's package) serving a WebDAV directory on 127.0.0.1, started by a
test with a config the test writes: the remote cache's server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {run}/nginx.pid;
error_log {run}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            dav_methods PUT DELETE MKCOL COPY MOVE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
{auth}        }}
    }}
}}
"""

#: writes need the password; reads are open (what an untrusted, read-only job sees)
WRITE_AUTH = """\
            limit_except GET HEAD {{
                auth_basic "xenforge cache";
                auth_basic_user_file {run}/htpasswd;
            }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Nginx:
    root: Path  # the files it serves (the remote objects)
    run: Path
    port: int
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cache/"

    def requests(self, method: str) -> list[str]:
        """Access-log lines of requests with ``method``."""
        log = self.run / "access.log"
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if f'"{method} ' in line]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def start(base: Path, *, user: str | None = None, password: str | None = None) -> Nginx:
    """nginx on a free loopback port, serving ``base/root``; with ``user``/``password``
    every write needs them."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (ci/setup-host.sh installs nginx-light)")
    root, run = base / "root", base / "run"
    (root / "cache").mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    auth = ""
    if user is not None:
        (run / "htpasswd").write_text(f"{user}:{{PLAIN}}{password}\n")
        auth = WRITE_AUTH.format(run=run)
    for _attempt in range(5):
        port = free_port()
        (run / "nginx.conf").write_text(CONFIG.format(run=run, root=root, port=port, auth=auth))
        proc = subprocess.Popen(["nginx", "-c", str(run / "nginx.conf"), "-p", str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return Nginx(root=root, run=run, port=port, proc=proc)
            except OSError:
                time.sleep(0.1)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"nginx did not start; see {run / 'error.log'}")
