"""The remote cache against a real nginx (Debian's, WebDAV on 127.0.0.1, writes behind a
password): a node built through one local cache is fetched by a second, empty one and not
rebuilt; a flipped byte, a truncated and a missing remote object are each found and
rebuilt (never used); a read-only client never writes; the password shows nowhere."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import nginx
import pytest

from xenforge.cli import app as cli
from xenforge.plan import plan
from xenforge.recipe.load import load_recipe

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "recipes" / "fixtures"
USER, PASSWORD = "builder", "s3cret-PW-do-not-log-42"

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None,
                                reason="nginx is not installed (ci/setup-host.sh does it)")


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    handler = signal.getsignal(signal.SIGTERM)  # cli.main installs its own
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def fx(tmp_path: Path) -> Path:
    dest = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, dest)
    return dest


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[nginx.Nginx]:
    srv = nginx.start(tmp_path / "nginx", user=USER, password=PASSWORD)
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_USER", USER)
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_PASSWORD", PASSWORD)
    monkeypatch.delenv("XENFORGE_REMOTE_CACHE", raising=False)
    monkeypatch.delenv("XENFORGE_REMOTE_CACHE_READ_ONLY", raising=False)
    yield srv
    srv.stop()


def _build(fx: Path, tmp_path: Path, cache: str, srv: nginx.Nginx, *extra: str,
           capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["--cache-dir", str(tmp_path / cache), "build", str(fx / "kernel.yaml"),
            "--target", "tree:mini", "-o", str(tmp_path / f"out-{cache}"), "--plain",
            "--remote-cache", srv.url, *extra]
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _remote_file(srv: nginx.Nginx, fx: Path, node: str, suffix: str) -> Path:
    """The node's manifest (``.json``) or its archive (``.tar.zst``: the one it names)."""
    node_id = plan(load_recipe(fx / "kernel.yaml")).nodes[node].id
    folder = srv.root / "cache" / "v1" / node_id[:2]
    if suffix == ".tar.zst":
        name = json.loads((folder / f"{node_id}.json").read_text())["archive"]["name"]
        return folder / f"{node_id}.{name}"
    return folder / f"{node_id}{suffix}"


def _tree_sums(tmp_path: Path, cache: str, fx: Path) -> dict[str, str]:
    node_id = plan(load_recipe(fx / "kernel.yaml")).nodes["tree:mini"].id
    mf = tmp_path / cache / "objects" / node_id[:2] / node_id / "manifest.json"
    return {k: v.get("sha256", "") for k, v in json.loads(mf.read_text())["files"].items()}


def test_a_second_empty_cache_fetches_instead_of_building(
        fx: Path, tmp_path: Path, server: nginx.Nginx,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _build(fx, tmp_path, "a", server, capsys=capsys)
    assert code == 0, out
    assert "2 built" in out and "uploaded tree:mini" in out
    assert _remote_file(server, fx, "tree:mini", ".json").is_file()
    assert len(server.requests("MOVE")) == 4  # archive and manifest of each node, moved

    # plan through the remote: the tree is there, its source is not needed
    assert cli.main(["--cache-dir", str(tmp_path / "b"), "plan", str(fx / "kernel.yaml"),
                     "--remote-cache", server.url]) == 0
    shown = capsys.readouterr().out
    assert "tree:mini" in shown and "remote (fetched, not built)" in shown

    code, out = _build(fx, tmp_path, "b", server, capsys=capsys)
    assert code == 0, out
    assert "0 built" in out and "1 fetched from the remote" in out
    assert "from the remote cache:" in out
    assert not (tmp_path / "b" / "state" / "logs" / "mini-kernel" / "tree-mini.log").exists()
    assert _tree_sums(tmp_path, "b", fx) == _tree_sums(tmp_path, "a", fx)
    assert (tmp_path / "out-b" / "mini-kernel" / "manifest.json").is_file()

    # the password is in no log, manifest or output of ours
    seen = out
    for root in (tmp_path / "a", tmp_path / "b", server.root):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix != ".zst":
                seen += path.read_text(errors="replace")
    assert PASSWORD not in seen
    assert server.url in seen  # the logs do name the cache


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing", "manifest"])
def test_a_damaged_remote_object_is_rebuilt_never_used(
        fx: Path, tmp_path: Path, server: nginx.Nginx, damage: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert _build(fx, tmp_path, "a", server, capsys=capsys)[0] == 0
    archive = _remote_file(server, fx, "tree:mini", ".tar.zst")
    good = archive.read_bytes()
    if damage == "flip":
        data = bytearray(good)
        data[len(data) // 2] ^= 0x01
        archive.write_bytes(bytes(data))
    elif damage == "truncate":
        archive.write_bytes(good[: len(good) // 2])
    elif damage == "missing":
        archive.unlink()
    else:  # the manifest lies about a file (a consistent archive of other content)
        mf = _remote_file(server, fx, "tree:mini", ".json")
        record = json.loads(mf.read_text())
        first = sorted(k for k, v in record["files"].items() if "sha256" in v)[0]
        record["files"][first]["sha256"] = "0" * 64
        mf.write_text(json.dumps(record))

    code, out = _build(fx, tmp_path, "b", server, capsys=capsys)
    assert code == 0, out
    assert "damaged remote object tree:mini" in out and "building it here" in out
    assert "built  tree:mini" in out
    assert _tree_sums(tmp_path, "b", fx) == _tree_sums(tmp_path, "a", fx)
    # the rebuilt object replaced the bad copy: a third cache fetches it cleanly
    code, out = _build(fx, tmp_path, "c", server, capsys=capsys)
    assert code == 0 and "1 fetched from the remote" in out, out
    assert "damaged remote object" not in out


def test_a_read_only_client_never_writes(fx: Path, tmp_path: Path, server: nginx.Nginx,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # an untrusted job: no credentials at all, read-only by the environment
    monkeypatch.delenv("XENFORGE_REMOTE_CACHE_USER")
    monkeypatch.delenv("XENFORGE_REMOTE_CACHE_PASSWORD")
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_READ_ONLY", "1")
    code, out = _build(fx, tmp_path, "a", server, capsys=capsys)
    assert code == 0, out
    assert "(read-only)" in out and "2 built" in out and "uploaded" not in out
    for method in ("PUT", "MOVE", "DELETE", "MKCOL"):
        assert server.requests(method) == []
    assert not list((server.root / "cache").rglob("*.json"))

    # once a trusted job shared it, the read-only one fetches
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_USER", USER)
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_PASSWORD", PASSWORD)
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_READ_ONLY", "0")
    assert _build(fx, tmp_path, "b", server, capsys=capsys)[0] == 0
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_READ_ONLY", "1")
    puts = len(server.requests("PUT"))
    code, out = _build(fx, tmp_path, "c", server, capsys=capsys)
    assert code == 0 and "1 fetched from the remote" in out, out
    assert len(server.requests("PUT")) == puts


def test_writes_without_credentials_are_reported_and_the_build_succeeds(
        fx: Path, tmp_path: Path, server: nginx.Nginx, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_PASSWORD", "wrong")
    code, out = _build(fx, tmp_path, "a", server, capsys=capsys)
    assert code == 0, out
    assert "upload of tree:mini to the remote cache failed" in out and "401" in out
    assert "--remote-cache-read-only" in out


def test_bad_remote_settings_are_input_errors(fx: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--cache-dir", str(tmp_path / "c"), "build", str(fx / "kernel.yaml"),
            "--target", "tree:mini", "-o", str(tmp_path / "out")]
    assert cli.main([*base, "--remote-cache", "http://u:pw@127.0.0.1:9/"]) == 2
    err = capsys.readouterr().err
    assert "holds credentials" in err and "netrc" in err and "pw@" not in err
    assert cli.main([*base, "--remote-cache", "ftp://127.0.0.1/"]) == 2
    assert "not an http:// or https:// URL" in capsys.readouterr().err
    monkeypatch.setenv("XENFORGE_REMOTE_CACHE_READ_ONLY", "maybe")
    assert cli.main([*base, "--remote-cache", "http://127.0.0.1:9/"]) == 2
    assert "XENFORGE_REMOTE_CACHE_READ_ONLY" in capsys.readouterr().err


def test_an_unreachable_remote_is_reported_and_the_build_goes_on(
        fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("xenforge.cache.remote.RETRIES", 1)
    url = f"http://127.0.0.1:{nginx.free_port()}/"
    assert os.environ.get("XENFORGE_REMOTE_CACHE") is None
    code = cli.main(["--cache-dir", str(tmp_path / "c"), "build", str(fx / "kernel.yaml"),
                     "--target", "tree:mini", "-o", str(tmp_path / "out"), "--plain",
                     "--remote-cache", url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "unusable, building without it" in out and "2 built" in out


def test_the_recipe_names_the_remote_cache_and_the_command_line_wins(
        fx: Path, tmp_path: Path, server: nginx.Nginx,
        capsys: pytest.CaptureFixture[str]) -> None:
    recipe = fx / "kernel.yaml"
    recipe.write_text(recipe.read_text() +
                      f"cache:\n  remote: {server.url}\n  read_only: true\n")
    base = ["build", str(recipe), "--target", "tree:mini", "--plain"]
    assert cli.main(["--cache-dir", str(tmp_path / "a"), *base, "-o", str(tmp_path / "o1")]) == 0
    out = capsys.readouterr().out
    assert f"remote cache {server.url} (read-only)" in out and "uploaded" not in out
    assert server.requests("PUT") == []
    heads = len(server.requests("HEAD"))
    assert heads > 0
    assert cli.main(["--cache-dir", str(tmp_path / "b"), *base, "-o", str(tmp_path / "o2"),
                     "--no-remote-cache"]) == 0
    out = capsys.readouterr().out
    assert "remote cache" not in out and "2 built" in out
    assert len(server.requests("HEAD")) == heads  # not asked at all


def _forge(srv: nginx.Nginx, node_id: str, build: Path, manifest_files: dict[str, object],
           tmp_path: Path) -> None:
    """A hostile server's object: the archive of ``build`` (as it is) and a manifest that
    matches the archive's sha256 and lists ``manifest_files``."""
    import hashlib
    import subprocess

    blob = tmp_path / "forged.tar.zst"
    subprocess.run(["tar", "--zstd", "-c", "--format=posix", "-f", str(blob), "-C", str(build),
                    *sorted(p.name for p in build.iterdir())], check=True)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    folder = srv.root / "cache" / "v1" / node_id[:2]
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{digest[:16]}.tar.zst"
    (folder / f"{node_id}.{name}").write_bytes(blob.read_bytes())
    (folder / f"{node_id}.json").write_text(json.dumps({
        "id": node_id, "node": "tree:mini", "stage": "tree", "records": 2,
        "files": manifest_files,
        "archive": {"name": name, "sha256": digest, "size": blob.stat().st_size}}))


@pytest.mark.parametrize("attack", ["symlink-beside-out", "fifo-as-file", "unlisted-device",
                                    "setuid", "absolute-member"])
def test_a_hostile_archive_is_refused_and_touches_nothing(
        fx: Path, tmp_path: Path, server: nginx.Nginx, attack: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    from xenforge.cache.store import file_records

    node_id = plan(load_recipe(fx / "kernel.yaml")).nodes["tree:mini"].id
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    build = tmp_path / "forge"
    (build / "out" / "tree").mkdir(parents=True)
    (build / "out" / "tree" / "Makefile").write_text("all:\n")
    records = file_records(build / "out")
    if attack == "symlink-beside-out":  # adopt() would write the manifest through it
        (build / "manifest.tmp").symlink_to(victim)
        want = "holds 'manifest.tmp'"
    elif attack == "fifo-as-file":  # hashing it would block for ever
        os.mkfifo(build / "out" / "tree" / "fifo")
        records["tree/fifo"] = {"size": 0, "mtime_ns": 0, "sha256": "0" * 64, "mode": 0o644,
                                "uid": 0, "gid": 0}
        want = "tree/fifo: a fifo, not a regular file"
    elif attack == "unlisted-device":  # a stage reading its input would read the device
        os.mknod(build / "out" / "tree" / "disk", 0o600 | 0o060000, os.makedev(1, 3))
        want = "tree/disk: not in the manifest"
    elif attack == "setuid":
        (build / "out" / "tree" / "Makefile").chmod(0o4755)
        want = "tree/Makefile: mode or owner changed"
    else:  # tar strips the leading "/": it lands beside out/ and is refused
        (build / "etc").mkdir()
        (build / "etc" / "evil").write_text("x")
        want = "holds 'etc'"
    _forge(server, node_id, build, records, tmp_path)
    code, out = _build(fx, tmp_path, "b", server, "--remote-cache-read-only", capsys=capsys)
    assert code == 0, out
    assert "damaged remote object tree:mini" in out and want in out, out
    assert "built  tree:mini" in out  # built here instead
    assert victim.read_text() == "precious\n"
    manifest = tmp_path / "b" / "objects" / node_id[:2] / node_id / "manifest.json"
    assert not manifest.is_symlink() and "fetched_from" not in manifest.read_text()
