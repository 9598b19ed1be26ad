"""``xenforge test --inventory``: every host checked in parallel, an unreachable one failing
its ``reachable`` check without stopping the others, one JUnit XML file with a testsuite per
host, a table. (Hosts that answer are tested with real VMs by the end-to-end tests.)"""

from __future__ import annotations

import socket
import textwrap
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xenforge.cli import app as cli
from xenforge.verify import fleet
from xenforge.verify.inventory import Host
from xenforge.verify.suites import Outcome, parse_junit

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "xen-host.yaml")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
def listening() -> Iterator[int]:
    """A port that accepts TCP connections (and closes them)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def test_unreachable_hosts_fail_clearly_in_one_junit_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("XENFORGE_STATE_DIR", raising=False)
    ports = {"xen-a": _closed_port(), "xen-b": _closed_port()}
    inv = tmp_path / "inventory.ini"
    inv.write_text("[xen]\n" + "".join(f"{name} ansible_host=127.0.0.1 ansible_port={port}\n"
                                       for name, port in ports.items()))
    junit = tmp_path / "results" / "junit.xml"
    code = cli.main(["test", RECIPE, "--inventory", str(inv), "--suite", "dom0", "-j", "2",
                     "--junit", str(junit), "-o", str(tmp_path / "out"),
                     "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert code == 1
    root = ET.parse(junit).getroot()
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["xen-a", "xen-b"]
    for suite in suites:
        name = suite.get("name")
        assert name is not None
        (case,) = suite.findall("testcase")
        assert (case.get("classname"), case.get("name")) == (name, "reachable")
        failure = case.find("failure")
        assert failure is not None
        assert failure.get("message") == (
            f"cannot connect to 127.0.0.1:{ports[name]} (Connection refused)")
    assert (root.get("tests"), root.get("failures")) == ("2", "2")
    table = {line.split()[0]: line.split() for line in out.splitlines()
             if line.startswith("xen-")}
    for name, port in ports.items():
        assert table[name] == [name, f"127.0.0.1:{port}", "1", "0", "1", "0", "unreachable"]
    assert "2 hosts, 0 ok, 2 failed" in out
    assert f"FAILED xen-a::reachable: cannot connect to 127.0.0.1:{ports['xen-a']}" in out


def test_each_check_is_a_case_of_its_host(tmp_path: Path, listening: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The suites' own JUnit files (faked here: no SSH server) merged under their hosts."""
    seen: list[str] = []

    def fake_run_suites(url: str, *, junit: Path, log: Path, **_: Any) -> Outcome:
        seen.append(url)
        if "web2" in str(junit):  # pytest itself broke: no JUnit file
            out = Outcome()
            out.failures.append(fleet.Failure("pytest", "no test ran (exit 4)"))
            return out
        junit.write_text(textwrap.dedent("""\
            <testsuites><testsuite name="pytest">
              <testcase classname="test_dom0" name="test_xen[ssh://h]"/>
              <testcase classname="test_dom0" name="test_mem[ssh://h]">
                <failure message="dom0 has 512 MiB">x</failure></testcase>
            </testsuite></testsuites>"""))
        return parse_junit(junit)

    monkeypatch.setattr(fleet, "run_suites", fake_run_suites)
    hosts = [Host("web1", "127.0.0.1", port=listening), Host("web2", "127.0.0.1",
                                                             user="ops", port=listening),
             Host("gone", "127.0.0.1", port=_closed_port())]
    done: list[str] = []
    result = fleet.run_fleet(hosts, expect={}, junit=tmp_path / "j.xml", logs=tmp_path / "l",
                             builtin=["dom0"], jobs=3, on_done=lambda r: done.append(r.host.name))
    assert sorted(done) == ["gone", "web1", "web2"]
    assert sorted(seen) == [f"ssh://ops@127.0.0.1:{listening}", f"ssh://root@127.0.0.1:{listening}"]
    assert not result.ok
    assert [r.status for r in result.hosts] == ["FAILED", "FAILED", "unreachable"]
    merged = parse_junit(tmp_path / "j.xml")  # what a CI server reads: (host, check) cases
    assert merged.tests == result.total().tests == 3 + 2 + 1
    assert sorted(f.test for f in merged.failures) == sorted(
        f.test for f in result.total().failures) == [
        "gone::reachable", "web1.test_dom0::test_mem[ssh://h]", "web2::pytest"]
    root = ET.parse(tmp_path / "j.xml").getroot()
    web1 = root.find("testsuite[@name='web1']")
    assert web1 is not None and web1.get("tests") == "3" and web1.get("failures") == "1"
    assert (tmp_path / "l" / "web1" / "junit.xml").is_file()
    summary = result.summary()
    assert "3 hosts, 0 ok, 3 failed; checks: 3 passed, 3 failed" in summary
    assert f"log of web2: {tmp_path / 'l' / 'web2' / 'verify.log'}" in summary


def test_every_host_passing_is_ok(tmp_path: Path, listening: int,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run_suites(url: str, *, junit: Path, **_: Any) -> Outcome:
        junit.write_text('<testsuite><testcase classname="test_dom0" name="t"/></testsuite>')
        return parse_junit(junit)

    monkeypatch.setattr(fleet, "run_suites", fake_run_suites)
    result = fleet.run_fleet([Host("a", "127.0.0.1", port=listening)], expect={},
                             junit=tmp_path / "j.xml", logs=tmp_path / "l", builtin=["dom0"])
    assert result.ok and result.hosts[0].status == "ok"
    assert result.total().summary().startswith("2 passed, 0 failed")


def test_log_folders_are_unique_file_names(tmp_path: Path) -> None:
    hosts = [Host("a:1", "h"), Host("a_1", "h"), Host("..x", "h")]
    assert [p.name for p in fleet._folders(hosts, tmp_path)] == ["a_1", "a_1-2", "x"]


def test_probe_says_why() -> None:
    port = _closed_port()
    assert fleet.probe("127.0.0.1", port) == (
        f"cannot connect to 127.0.0.1:{port} (Connection refused)")
