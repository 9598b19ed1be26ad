"""Ansible inventories (INI or YAML) as the list of hosts ``xenforge test --inventory`` checks.

Read like Ansible reads them, for the part that says how to reach a host: groups, child
groups (``[parent:children]``, YAML ``children:``), group variables (``[group:vars]``, YAML
``vars:``) inherited by the hosts below them (a child group's win over its parent's, as in
Ansible; ``all`` is the weakest), host variables winning over every group's. Of the variables,
``ansible_host``, ``ansible_user``, ``ansible_port`` and ``ansible_ssh_private_key_file`` (and
their older ``ansible_ssh_*`` spellings) are used; the others are ignored. A host in several
groups is one host. A relative key path is relative to the working directory, as in Ansible.

Which format: a ``.yml``/``.yaml``/``.json`` file is YAML; any other file is YAML when it
parses as a mapping of groups (``all:``, or groups with ``hosts:``/``children:``/``vars:``),
else INI. Every mistake is an :class:`InputError` naming the file, the line, the field and
the fix.
"""

from __future__ import annotations

import re
import shlex
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from xenforge.core.errors import InputError

#: the largest inventory read (an inventory of thousands of hosts is a few hundred KiB)
MAX_BYTES = 4 << 20

#: the variables used, each under its names (the first is the one Ansible documents)
FIELDS = {
    "address": ("ansible_host", "ansible_ssh_host"),
    "user": ("ansible_user", "ansible_ssh_user"),
    "port": ("ansible_port", "ansible_ssh_port"),
    "key": ("ansible_ssh_private_key_file", "ansible_private_key_file"),
}
_GROUP_KEYS = ("hosts", "children", "vars")
_NAME_BAD = re.compile(r"[\s,%\0/]")  # also no "/": a host's name names its log folder
_ADDRESS_BAD = re.compile(r"[\s,%\0/@?#\[\]]")  # an ssh://user@ADDRESS:port URL part
_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
_GROUP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SECTION = re.compile(r"\[([^\]:\s]*)(?::([^\]\s]*))?\]\s*(?:[#;].*)?")
_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")


@dataclass(frozen=True)
class Host:
    """One machine to test: ``ssh://user@address:port`` with ``key`` (None: the default)."""

    name: str
    address: str
    user: str = "root"
    port: int = 22
    key: Path | None = None
    groups: tuple[str, ...] = ()  # every group it is in, directly or through a child group

    @property
    def url(self) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address  # IPv6
        return f"ssh://{self.user}@{address}:{self.port}"


# -- the model both formats fill: groups, hosts, variables with the line that set them -----

@dataclass
class _Value:
    value: object
    line: int | None


@dataclass
class _Group:
    name: str
    line: int | None
    vars: dict[str, _Value] = field(default_factory=dict)
    children: dict[str, int | None] = field(default_factory=dict)  # name -> line naming it


@dataclass
class _HostDef:
    name: str
    line: int | None
    groups: list[str] = field(default_factory=list)
    vars: dict[str, _Value] = field(default_factory=dict)


class _Parsed:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.groups: dict[str, _Group] = {}
        self.hosts: dict[str, _HostDef] = {}

    def error(self, line: int | None, message: str, hint: str) -> InputError:
        return InputError(message, where=f"{self.file}:{line}" if line else str(self.file),
                          hint=hint)

    def group(self, name: str, line: int | None) -> _Group:
        if not _GROUP.fullmatch(name):
            raise self.error(line, f"{name!r} is not a group name",
                             "name groups with letters, digits, '_', '.' and '-' "
                             "(e.g. [xen_hosts])")
        if name not in self.groups:
            self.groups[name] = _Group(name, line)
        return self.groups[name]

    def host(self, name: str, line: int | None, group: str) -> _HostDef:
        self.group(group, line)
        if _RANGE.search(name):
            raise self.error(line, f"host {name!r}: host ranges ([01:50]) are not supported",
                             "list each host on its own line")
        _check_name(self, name, line, "host name")
        hdef = self.hosts.setdefault(name, _HostDef(name, line))
        if group not in hdef.groups:
            hdef.groups.append(group)
        return hdef


def _check_name(p: _Parsed, value: str, line: int | None, what: str, *,
                address: bool = False) -> None:
    bad, chars = ((_ADDRESS_BAD, "',', '%', '/', '@', '?', '#', brackets")
                  if address else (_NAME_BAD, "',', '%', '/'"))
    if not value or value.startswith("-") or bad.search(value):
        shown = value.replace("\0", "\\0")
        raise p.error(line, f"{what} {shown!r} is not a host name or address",
                      f"write one plain name or IP address: no spaces, {chars} or NUL, "
                      "not starting with '-'")


# -- reading -------------------------------------------------------------------------------

def _read(file: Path) -> str:
    p = _Parsed(file)
    try:
        st = file.stat()
    except FileNotFoundError:
        raise p.error(None, "inventory not found",
                      "check the path given to --inventory") from None
    except OSError as exc:
        raise p.error(None, f"cannot read the inventory: {exc.strerror}",
                      "check the path given to --inventory") from None
    if not stat.S_ISREG(st.st_mode):
        raise p.error(None, "the inventory is not a regular file (a folder or device)",
                      "give one inventory file (INI or YAML)")
    if st.st_size > MAX_BYTES:
        raise p.error(None, f"{st.st_size} bytes: larger than an inventory can be "
                      f"({MAX_BYTES} bytes)", "give the inventory file, not a data file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise p.error(None, f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                      "an inventory is an INI or YAML text file") from None
    except OSError as exc:
        raise p.error(None, f"cannot read the inventory: {exc.strerror}",
                      "check the file's permissions") from None


def _yaml_root(text: str) -> yaml.MappingNode | None:
    """The document when it reads as a YAML inventory (a mapping of groups), else None."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "all":
            return node
        if isinstance(value, yaml.MappingNode) and any(
                isinstance(k, yaml.ScalarNode) and k.value in _GROUP_KEYS
                for k, _ in value.value):
            return node
    return None


# -- YAML ----------------------------------------------------------------------------------

def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _scalar(p: _Parsed, node: yaml.Node) -> object:
    try:
        return yaml.SafeLoader("").construct_object(node)
    except yaml.YAMLError as exc:  # a tag SafeLoader refuses (!!python/...), a bad !!int
        why = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else exc
        raise p.error(_line(node), f"cannot read this value: {why}",
                      "write plain values (no !!tags)") from None


def _mapping(p: _Parsed, node: yaml.Node, what: str, example: str
             ) -> list[tuple[str, yaml.Node]]:
    """``node``'s (key, value) pairs; null is an empty mapping."""
    if isinstance(node, yaml.ScalarNode) and _scalar(p, node) is None:
        return []
    if not isinstance(node, yaml.MappingNode):
        raise p.error(_line(node), f"{what} must be a mapping", f"write it as {example}")
    out = []
    for key, value in node.value:
        name = _scalar(p, key) if isinstance(key, yaml.ScalarNode) else None
        if not isinstance(name, str | int) or isinstance(name, bool):
            raise p.error(_line(key), f"{what}: a key must be a plain name",
                          f"write it as {example}")
        out.append((str(name), value))
    return out


def _parse_yaml(p: _Parsed, root: yaml.MappingNode) -> None:
    seen: set[int] = set()  # the group nodes being read: an alias must not loop

    def group(name: str, node: yaml.Node, line: int) -> None:
        g = p.group(name, line)
        if id(node) in seen:
            raise p.error(line, f"group {name} contains itself (a YAML alias loops)",
                          "list the child group's name instead of an alias of a parent")
        seen.add(id(node))
        for key, value in _mapping(p, node, f"group {name}",
                                   "hosts:, children: and vars: mappings"):
            if key == "hosts":
                for host, hvars in _mapping(p, value, f"{name}.hosts",
                                            "`hosts: {web1: {ansible_host: 10.0.0.1}}`"):
                    hdef = p.host(host, _key_line(value, host), name)
                    _yaml_vars(p, hvars, f"host {host}", hdef.vars)
            elif key == "vars":
                _yaml_vars(p, value, f"{name}.vars", g.vars)
            elif key == "children":
                for child, cnode in _mapping(p, value, f"{name}.children",
                                             "`children: {web: {hosts: {web1:}}}`"):
                    cline = _key_line(value, child)
                    g.children.setdefault(child, cline)
                    group(child, cnode, cline)
            else:
                raise p.error(_key_line(node, key), f"group {name}: unknown key {key!r}",
                              "a group has hosts:, children: and vars: (a host's "
                              "variables go below its name in hosts:)")
        seen.discard(id(node))

    for name, node in _mapping(p, root, "the inventory", "`all: {hosts: {...}}`"):
        group(name, node, _key_line(root, name))


def _key_line(mapping: yaml.Node, key: str) -> int:
    for k, _ in mapping.value:
        if isinstance(k, yaml.ScalarNode) and str(k.value) == key:
            return _line(k)
    return _line(mapping)


def _yaml_vars(p: _Parsed, node: yaml.Node, what: str, into: dict[str, _Value]) -> None:
    for key, value in _mapping(p, node, what, "`ansible_host: 10.0.0.1`"):
        if isinstance(value, yaml.ScalarNode):
            into[key] = _Value(_scalar(p, value), _line(value))
        elif any(key in names for names in FIELDS.values()):
            raise p.error(_line(value), f"{key}: must be a single value, not a list or "
                          "mapping", f"write it as `{key}: VALUE`")


# -- INI -----------------------------------------------------------------------------------

def _split(p: _Parsed, line: str, n: int) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:  # an unclosed quote
        raise p.error(n, f"cannot read this line: {exc}", "close the quote") from None


def _parse_ini(p: _Parsed, text: str) -> None:
    kind, current = "hosts", "ungrouped"
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            m = _SECTION.fullmatch(line)
            if m is None or not m.group(1):
                raise p.error(n, f"cannot read this line: {line!r}",
                              "a section header is [GROUP], [GROUP:vars] or "
                              "[GROUP:children]")
            current, kind = m.group(1), m.group(2)
            if kind not in (None, "vars", "children"):
                raise p.error(n, f"[{current}:{kind}]: unknown section kind {kind!r}",
                              f"write [{current}], [{current}:vars] or [{current}:children]")
            kind = kind or "hosts"
            p.group(current, n)
            continue
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq or not key.strip():
                raise p.error(n, f"[{current}:vars]: expected NAME=VALUE, got {line!r}",
                              "write one variable a line, e.g. ansible_user=root")
            words = _split(p, value, n)
            p.groups[current].vars[key.strip()] = _Value(
                words[0] if len(words) == 1 else value.strip(), n)
        elif kind == "children":
            words = _split(p, line, n)
            if len(words) != 1:
                raise p.error(n, f"[{current}:children]: expected one group name, got "
                              f"{line!r}", "write one child group a line")
            p.group(words[0], n)
            p.groups[current].children.setdefault(words[0], n)
        else:
            _ini_host(p, _split(p, line, n), n, current)


def _ini_host(p: _Parsed, words: list[str], n: int, group: str) -> None:
    if not words:
        return
    name, *assignments = words
    port: str | None = None
    if name.count(":") == 1 and not _RANGE.search(name):  # Ansible's "host:port"
        name, port = name.split(":")
        if not port:
            raise p.error(n, f"host {name}: nothing after ':'",
                          "write HOST:PORT, or ansible_port=PORT")
    hdef = p.host(name, n, group)
    if port is not None:
        hdef.vars["ansible_port"] = _Value(port, n)
    for word in assignments:
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise p.error(n, f"host {name}: expected NAME=VALUE, got {word!r}",
                          "write the host's name, then its variables as NAME=VALUE "
                          "(e.g. web1 ansible_host=10.0.0.1 ansible_port=22)")
        hdef.vars[key] = _Value(value, n)


# -- from the model to hosts ---------------------------------------------------------------

def _depths(p: _Parsed) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Each group's distance below ``all`` (the longest), refusing loops; and its
    parents."""
    parents: dict[str, list[str]] = {name: [] for name in p.groups}
    for g in p.groups.values():
        for child in g.children:
            parents[child].append(g.name)
    depth: dict[str, int] = {}

    def of(name: str, path: tuple[str, ...]) -> int:
        if name in path:
            loop = " -> ".join((*path[path.index(name):], name))
            raise p.error(p.groups[name].children.get(path[-1]) or p.groups[name].line,
                          f"group {name} is its own child ({loop})",
                          "remove one of these [GROUP:children] entries")
        if name not in depth:
            ups = [u for u in parents[name] if u != "all"]
            depth[name] = 0 if name == "all" else 1 + max(
                (of(u, (*path, name)) for u in ups), default=0)
        return depth[name]

    for name in p.groups:
        of(name, ())
    return depth, parents


def _ancestors(parents: dict[str, list[str]], groups: Iterable[str]) -> set[str]:
    out: set[str] = set()
    todo = list(groups)
    while todo:
        g = todo.pop()
        if g not in out:
            out.add(g)
            todo += parents.get(g, [])
    return out


def _pick(merged: dict[str, _Value], what: str) -> tuple[str, _Value] | None:
    """The variable setting ``what`` (its first spelling that is set)."""
    for key in FIELDS[what]:
        if key in merged:
            return key, merged[key]
    return None


def _resolve(p: _Parsed, hdef: _HostDef, depth: dict[str, int],
             parents: dict[str, list[str]]) -> Host:
    groups = _ancestors(parents, hdef.groups) | {"all"}
    merged: dict[str, _Value] = {}
    for g in sorted(groups, key=lambda g: (depth[g], g)):  # weakest first, as in Ansible
        merged.update(p.groups[g].vars)
    merged.update(hdef.vars)
    name = hdef.name

    def text(what: str) -> tuple[str, str, int | None] | None:
        hit = _pick(merged, what)
        if hit is None:
            return None
        key, v = hit
        if v.value is None or isinstance(v.value, bool | list | dict):
            raise p.error(v.line, f"{key}: {v.value!r} is not a value for host {name}",
                          f"give {key} a plain value")
        return key, str(v.value), v.line

    address = name
    if (a := text("address")) is not None:
        address = a[1]
        _check_name(p, address, a[2], f"{a[0]} of host {name}:", address=True)
    elif _ADDRESS_BAD.search(name):
        raise p.error(hdef.line, f"host name {name!r} cannot be its address",
                      f"give its address: {name} ansible_host=IP")
    user = "root"
    if (u := text("user")) is not None:
        user = u[1]
        if not _USER.fullmatch(user):
            raise p.error(u[2], f"{u[0]}: {user!r} is not a user name (host {name})",
                          "a user name has letters, digits, '.', '_' and '-', not "
                          "starting with '-'")
    port = 22
    if (hit := _pick(merged, "port")) is not None:
        key, v = hit
        raw = v.value
        number = raw if isinstance(raw, int) and not isinstance(raw, bool) else (
            int(raw) if isinstance(raw, str) and raw.strip().isascii()
            and raw.strip().isdigit() else None)
        if number is None or not 1 <= number <= 65535:
            raise p.error(v.line, f"{key}: {raw!r} is not a port number (host {name})",
                          f"write a whole number from 1 to 65535, e.g. {key}=22")
        port = number
    key_path: Path | None = None
    if (k := text("key")) is not None:
        key_path = Path(k[1]).expanduser()
        if not key_path.is_file():
            raise p.error(k[2], f"{k[0]}: key file {k[1]} not found (host {name})",
                          "fix the path (a relative one is relative to the directory "
                          "xenforge runs in, as in Ansible), or remove it to use --identity")
    shown = sorted(groups - {"all"}, key=lambda g: (depth[g], g))
    return Host(name=name, address=address, user=user, port=port, key=key_path,
                groups=tuple(shown))


def load_inventory(file: Path, *, limit: Sequence[str] = ()) -> list[Host]:
    """The hosts of the inventory ``file`` in the order it first names them; only those of
    the groups or host names in ``limit`` when given."""
    text = _read(file)
    p = _Parsed(file)
    root = _yaml_root(text)
    if file.suffix in (".yml", ".yaml", ".json") and root is None:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise p.error(mark.line + 1 if mark else None,
                          f"YAML syntax error: {exc.problem or exc.context}",
                          "fix the YAML syntax (indentation, colons, quotes)") from None
        except yaml.YAMLError as exc:
            raise p.error(None, f"YAML error: {exc}", "fix the YAML syntax") from None
        if node is not None:
            raise p.error(_line(node), "not an inventory: expected a mapping of groups",
                          "start with `all:` and its `hosts:` (or rename the file for INI)")
    if root is not None:
        _parse_yaml(p, root)
    else:
        _parse_ini(p, text)
    p.group("all", None)
    for g in p.groups.values():  # a group nobody lists as a child is a child of all
        if g.name != "all" and not any(g.name in o.children for o in p.groups.values()):
            p.groups["all"].children.setdefault(g.name, None)
    depth, parents = _depths(p)
    hosts = [_resolve(p, h, depth, parents) for h in p.hosts.values()]
    if not hosts:
        raise p.error(None, "no hosts in the inventory",
                      "list a host a line below a [GROUP] header, e.g.\n"
                      "    [xen_hosts]\n    xen1 ansible_host=10.0.0.1 ansible_user=root")
    if limit:
        known = set(p.groups) | {h.name for h in hosts}
        unknown = [w for w in limit if w not in known]
        if unknown:
            raise InputError(f"--limit {', '.join(unknown)}: no such group or host in "
                             f"{file}", hint="the groups: " + ", ".join(sorted(p.groups)))
        wanted, all_hosts = set(limit), hosts
        hosts = [h for h in hosts
                 if h.name in wanted or wanted & {*h.groups, "all"}]
        if not hosts:
            raise InputError(f"--limit {', '.join(limit)}: no hosts in {file}",
                             hint="the groups with hosts: " + ", ".join(
                                 sorted({g for h in all_hosts for g in h.groups})))
    return hosts
