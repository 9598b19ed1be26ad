"""Ansible inventories for ``xenforge test --inventory``: INI and YAML, groups, child groups,
variables inherited from groups (host variables win), a host in two groups once, and every
mistake reported in one line naming the file, the line, the field and the fix (exit 2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from xenforge.cli import app as cli
from xenforge.core.errors import InputError
from xenforge.verify.inventory import Host, load_inventory

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "xen-host.yaml")

INI = """\
# the lab
loose ansible_host=192.0.2.9

[web]
web1 ansible_host=10.0.0.1 ansible_port=2222
web2:2200 ansible_user=admin   # Ansible's HOST:PORT, and a comment
both

[db]
db1 ansible_host=10.0.1.1
both ansible_port=2020

[prod:children]
web
db

[prod:vars]
ansible_user=deploy

[web:vars]
ansible_user="webadmin"

[all:vars]
ansible_port=23
"""

YAML = """\
all:
  vars:
    ansible_port: 23
  hosts:
    loose:
      ansible_host: 192.0.2.9
  children:
    prod:
      vars:
        ansible_user: deploy
      children:
        web:
          vars: {ansible_user: webadmin}
          hosts:
            web1: {ansible_host: 10.0.0.1, ansible_port: 2222}
            web2: {ansible_port: 2200, ansible_user: admin}
            both:
        db:
          hosts:
            db1:
              ansible_host: 10.0.1.1
            both:
              ansible_port: 2020
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _by_name(hosts: list[Host]) -> dict[str, Host]:
    return {h.name: h for h in hosts}


@pytest.mark.parametrize("name, text", [("hosts.ini", INI), ("hosts.yaml", YAML),
                                        ("hosts", YAML)])  # YAML told by content alone
def test_groups_children_and_inherited_vars(tmp_path: Path, name: str, text: str) -> None:
    hosts = load_inventory(_write(tmp_path, name, text))
    assert [h.name for h in hosts] == ["loose", "web1", "web2", "both", "db1"]  # both once
    h = _by_name(hosts)
    # all:vars < prod:vars < web:vars < the host's own
    assert h["web1"] == Host("web1", "10.0.0.1", "webadmin", 2222, None, ("prod", "web"))
    assert h["web2"].url == "ssh://admin@web2:2200"  # the address defaults to the name
    assert h["db1"].user == "deploy" and h["db1"].port == 23
    assert h["both"].groups == ("prod", "db", "web")
    assert (h["both"].user, h["both"].port) == ("webadmin", 2020)
    assert (h["loose"].address, h["loose"].user, h["loose"].port) == ("192.0.2.9", "root", 23)


def test_defaults_keys_ipv6_and_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_fleet").write_text("key\n")
    inv = _write(tmp_path, "inv", """\
        [xen]
        plain
        v6 ansible_host=2001:db8::1 ansible_ssh_private_key_file=~/.ssh/id_fleet
        [other]
        o1 ansible_ssh_host=10.9.9.9 ansible_ssh_user=ops ansible_ssh_port=2022
        """)
    h = _by_name(load_inventory(inv))
    assert h["plain"] == Host("plain", "plain", "root", 22, None, ("xen",))
    assert h["v6"].key == tmp_path / ".ssh" / "id_fleet"
    assert h["v6"].url == "ssh://root@[2001:db8::1]:22"
    assert h["o1"].url == "ssh://ops@10.9.9.9:2022"  # the older ansible_ssh_* names
    assert [x.name for x in load_inventory(inv, limit=["other"])] == ["o1"]
    assert [x.name for x in load_inventory(inv, limit=["plain", "o1"])] == ["plain", "o1"]
    with pytest.raises(InputError, match="--limit nope: no such group or host"):
        load_inventory(inv, limit=["nope"])
    empty = _write(tmp_path, "empty", "[web]\nweb1\n[db]\n")
    with pytest.raises(InputError, match="--limit db: no hosts in") as err:
        load_inventory(empty, limit=["db"])
    assert err.value.hint == "the groups with hosts: web"


@pytest.mark.parametrize("name, text, says", [
    ("inv.ini", "[web]\nweb1 ansible_port=ssh\n",
     ["inv.ini:2: ansible_port: 'ssh' is not a port number (host web1)",
      "hint: write a whole number from 1 to 65535"]),
    ("inv.ini", "[web]\nweb1 ansible_port=70000\n", ["inv.ini:2: ansible_port: '70000'"]),
    ("inv.ini", "[web:vars]\nansible_port=22x\n[web]\nweb1\n",
     ["inv.ini:2: ansible_port: '22x' is not a port number (host web1)"]),
    ("inv.ini", "[web\nweb1\n", ["inv.ini:1: cannot read this line: '[web'",
                                 "hint: a section header is [GROUP]"]),
    ("inv.ini", "[web]\nweb1 ansible_host\n",
     ["inv.ini:2: host web1: expected NAME=VALUE, got 'ansible_host'"]),
    ("inv.ini", "[web:vars]\n\nansible_user\n", ["inv.ini:3: [web:vars]: expected NAME=VALUE"]),
    ("inv.ini", "[web:hosts]\n", ["inv.ini:1: [web:hosts]: unknown section kind 'hosts'"]),
    ("inv.ini", "[web]\nweb1 ansible_user='root\n", ["inv.ini:2: cannot read this line"]),
    ("inv.ini", "[web]\nweb[01:20].lab\n", ["inv.ini:2: host 'web[01:20].lab': host ranges"]),
    ("inv.ini", "[web]\n-oProxyCommand=x\n",
     ["inv.ini:2: host name '-oProxyCommand=x' is not a host name or address",
      "not starting with '-'"]),
    ("inv.ini", "[web]\nweb1 ansible_host=10.0.0.1,10.0.0.2\n",
     ["inv.ini:2: ansible_host of host web1: '10.0.0.1,10.0.0.2' is not a host name"]),
    ("inv.ini", "[web]\nweb1 ansible_host=h%00\n", ["inv.ini:2: ansible_host of host web1:"]),
    ("inv.ini", "[web]\nweb1 ansible_user=-root\n",
     ["inv.ini:2: ansible_user: '-root' is not a user name (host web1)"]),
    ("inv.ini", "[web]\nweb1 ansible_ssh_private_key_file=keys/nope\n",
     ["inv.ini:2: ansible_ssh_private_key_file: key file keys/nope not found (host web1)",
      "or remove it to use --identity"]),
    ("inv.ini", "# nothing yet\n[web]\n[db:children]\nweb\n",
     ["inv.ini: no hosts in the inventory", "xen1 ansible_host="]),
    ("inv.ini", "[a:children]\nb\n[b:children]\na\n[a]\nh1\n",
     ["is its own child", "a -> b -> a"]),
    ("inv.yaml", "all:\n  hosts:\n    web1:\n      ansible_port: [22]\n",
     ["inv.yaml:4: ansible_port: must be a single value"]),
    ("inv.yaml", "all:\n  children:\n    web:\n      hosts:\n        web1:\n"
                 "          ansible_port: twenty\n",
     ["inv.yaml:6: ansible_port: 'twenty' is not a port number (host web1)"]),
    ("inv.yaml", "all:\n  host:\n    web1:\n",
     ["inv.yaml:2: group all: unknown key 'host'", "a group has hosts:"]),
    ("inv.yaml", "all:\n  hosts:\n    web1: {ansible_host: 1.2.3.4\n",
     ["inv.yaml:4: YAML syntax error"]),
    ("inv.yaml", "- web1\n", ["inv.yaml:1: not an inventory: expected a mapping of groups"]),
    ("inv.yaml", "all:\n  hosts:\n    - web1\n", ["inv.yaml:3: all.hosts must be a mapping"]),
    ("inv.yaml", "", ["inv.yaml: no hosts in the inventory"]),
    ("inv.yaml", "all:\n  hosts:\n    h1:\n      ansible_port: !!python/object:os.system x\n",
     ["inv.yaml:4: cannot read this value: could not determine a constructor",
      "hint: write plain values (no !!tags)"]),
    ("inv.yml", "all:\n  hosts:\n    h1: {ansible_host: '[::1]'}\n",
     ["inv.yml:3: ansible_host of host h1: '[::1]' is not a host name or address"]),
])
def test_bad_inventories_name_file_line_field_and_fix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str, text: str, says: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("XENFORGE_STATE_DIR", raising=False)
    (tmp_path / name).write_text(text)
    code = cli.main(["test", RECIPE, "--inventory", name, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("error: ") and "hint: " in err
    for text_ in says:
        assert text_ in err


def test_a_missing_inventory_and_options_that_need_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("XENFORGE_STATE_DIR", raising=False)
    cache = ["--cache-dir", str(tmp_path / "c")]
    missing = tmp_path / "nope.ini"
    assert cli.main(["test", RECIPE, "--inventory", str(missing), *cache]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: inventory not found" in err and "hint: check the path" in err
    assert cli.main(["test", RECIPE, "--inventory", str(tmp_path), *cache]) == 2
    assert "not a regular file" in capsys.readouterr().err
    inv = _write(tmp_path, "inv.ini", "[web]\nweb1\n")
    for argv, says in [(["--limit", "web"], "--limit applies to --inventory only"),
                       (["-j", "2"], "-j/--jobs applies to --inventory only"),
                       (["--inventory", str(inv), "--iso"], "--iso is for a VM xenforge boots"),
                       (["--inventory", str(inv), "--identity", str(tmp_path / "k")],
                        "key file not found"),
                       (["--inventory", str(inv), "--limit", "db"], "--limit db: no such")]:
        assert cli.main(["test", RECIPE, *argv, *cache]) == 2, argv
        assert says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--inventory", "i.ini", "--host", "ssh://root@h1"], "not allowed with argument"),
    (["--inventory", "i.ini", "-j", "0"], "'0' is not a whole number of at least 1"),
])
def test_usage_errors(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["test", RECIPE, *argv])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
