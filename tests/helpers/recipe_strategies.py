"""Hypothesis strategies for fuzzing recipes, spec files, patch series and argv
(tests/unit/test_fuzz.py).

Recipes are generated from the real shapes (extends chains, hypervisor, kernels, images,
guests, iso, tests, cache and signing sections, pinned sources), each value either a good
one or a mistake: a wrong type, a boundary number, a YAML date, a bad tag (``!!float abc``),
a 4,000-digit integer, deep nesting, an alias, a NUL byte, a lone surrogate, an over-long
name. They are written as YAML text by :func:`to_yaml` (so YAML-level mistakes can be
spliced in as :class:`Raw` text) and may then be damaged byte by byte (:func:`damage`).

A generated :class:`Case` is a small tree of files: ``recipe.yaml`` and what it names
(bases it extends, a guest recipe, a Xen spec, a kernel line with its series), relative to a
"world" folder that holds a copy of tests/recipes/fixtures (valid specs, lines, sources).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

# ---------------------------------------------------------------------------------------------
# YAML text with raw pieces
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """YAML text written as it is (a tag, an alias, a date, a huge number, deep nesting)."""

    text: str


_PLAIN = re.compile(r"^[a-z][a-z0-9._/-]*$")
_RESOLVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _scalar(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    text = str(value)
    if _PLAIN.match(text) and text not in _RESOLVED:
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    """A YAML double-quoted string of exactly ``text`` (every other character escaped)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif " " <= c <= "~":
            out.append(c)
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return _scalar(value)


def _key(key: Any) -> str:
    return _scalar(key)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block style for mappings and lists of mappings, flow style inside."""
    pad = "  " * indent
    if isinstance(value, dict) and value:
        lines = []
        for k, v in value.items():
            if (isinstance(v, dict) and v) or (isinstance(v, list) and v and \
                    all(isinstance(i, dict) and i for i in v)):
                lines.append(f"{pad}{_key(k)}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{_key(k)}: {_flow(v)}")
        return "\n".join(lines)
    if isinstance(value, list) and value and all(isinstance(i, dict) and i for i in value):
        out = []
        for item in value:
            body = to_yaml(item, indent + 1).lstrip()
            out.append(f"{pad}- {body}")
        return "\n".join(out)
    return pad + _flow(value)


# ---------------------------------------------------------------------------------------------
# values: good ones and mistakes
# ---------------------------------------------------------------------------------------------

HUGE_DECIMAL = Raw("9" * 4000)
HUGEST_DECIMAL = Raw("1" * 4400)  # past Python's int-from-text limit
HUGE_HEX = Raw("0x" + "f" * 4000)  # ~4,800 decimal digits, parsed without the limit

YAML_MISTAKES = [
    Raw("2024-13-45"), Raw("2024-02-30"), Raw("0000-01-01"), Raw("2024-01-01"),
    Raw("2024-01-01T00:00:00+25:00"), Raw("9999-12-31T23:59:59-23:59"),
    Raw("!!float abc"), Raw("!!int abc"), Raw("!!bool maybe"), Raw("!!timestamp abc"),
    Raw("!!binary ~~~"), Raw("!!str 12"), Raw("!!null x"), Raw("!!map x"), Raw("!!seq x"),
    Raw("!!set {a, b}"), Raw("!!omap [a: 1]"), Raw("!!python/object:os.system x"),
    Raw("!custom x"), Raw("!!int 0x1_0"), Raw("!!float 1e99999"),
    Raw("1e400"), Raw("-1e400"), Raw(".nan"), Raw("-.inf"), Raw("0o777"), Raw("0b101"),
    Raw("1_000"), Raw("+12"), Raw("190:20:30"), Raw("~"), Raw("''"), Raw('""'),
    HUGE_DECIMAL, HUGEST_DECIMAL, HUGE_HEX, Raw("-" + "9" * 4000),
    Raw("*nowhere"), Raw("&anchor 1"), Raw("&a [*a]"), Raw("[&b x, *b]"),
    Raw('"\\0"'), Raw('"a\\0b"'), Raw('"\\ud800"'), Raw('"\\udfff.yaml"'), Raw('"\\x00x"'),
    Raw('"\\u2028"'), Raw('"\\x85"'), Raw('"\\t"'), Raw('"\\e"'),
    Raw("[" * 60 + "]" * 60), Raw("[" * 1000 + "]" * 1000), Raw("{a: " * 300 + "1" + "}" * 300),
    Raw("[" * 5000 + "]" * 5000),
]

NUMBERS = [0, 1, -1, 2, 63, 64, 65, 255, 256, 257, 1023, 1024, 4096, 65535, 65536, 65537,
           2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -2**63, 10**30]


def _same(value: Any) -> Any:
    return value


def _first(value: tuple[Any, ...]) -> Any:
    return value[0]


@functools.cache
def junk() -> st.SearchStrategy[Any]:
    """A value of the wrong kind for any field (one branch: wrapped in a tuple so that the
    one_of of ``maybe`` does not flatten its branches into its own and weighs it as one)."""
    return st.tuples(st.one_of(
        st.sampled_from(YAML_MISTAKES),
        st.sampled_from(NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=20),
        st.sampled_from(["", " ", "a" * 300, "A" * 70, "x" * 5000, "ünïcödé", "\x00", "\n",
                         "-o/tmp/x", "../../../../etc/passwd", "/dev/zero", "/", ".", "..",
                         "recipe.yaml", "4G", "yes", "no", "null", "0x10", "1e3"]),
        st.lists(st.sampled_from([1, "a", None, Raw("2024-01-01")]), max_size=3),
        st.dictionaries(st.sampled_from(["a", "role", "x"]), st.sampled_from([1, "b"]),
                        max_size=2),
    )).map(_first)


def maybe(good: st.SearchStrategy[Any], bad: float = 0.15) -> st.SearchStrategy[Any]:
    """``good`` most of the time, a mistake with probability about ``bad`` (one_of picks
    its branches alike: ``good`` is listed that many more times)."""
    if not bad:
        return good
    return st.one_of(*_copies(good, round((1 - bad) / bad)), junk())


def _mix(good: list[Any], bad_values: list[Any], bad: float) -> st.SearchStrategy[Any]:
    """One of ``good`` or, about ``bad`` of the time, one of ``bad_values``."""
    if not bad_values:
        return st.sampled_from(good)
    return st.one_of(*_copies(st.sampled_from(good), round((1 - bad) / bad)),
                     st.tuples(st.sampled_from(bad_values)).map(_first))


def _copies(strategy: st.SearchStrategy[Any], n: int) -> list[st.SearchStrategy[Any]]:
    """``n`` distinct strategies drawing like ``strategy`` (one_of counts one object once)."""
    return [strategy.map(_same) for _ in range(max(1, n))]


@functools.cache
def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["dom0", "guest", "g1", "web", "a.b", "x_y", "0"]),
                     st.from_regex(r"[a-z0-9][a-z0-9._-]{0,70}", fullmatch=True))


def ints(*good: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(good), st.sampled_from(NUMBERS),
                     st.integers(min_value=-10, max_value=10**6))


# references a case makes (relative to the case folder); MISSING and friends do not exist
W = "../fixtures"
SPEC_REFS = [f"{W}/hypervisor/xen-mini.yaml", "spec.yaml", "missing.yaml", f"{W}/hypervisor",
             "/dev/null", "/dev/zero", "a" * 300 + ".yaml", "recipe.yaml", "line/series"]
LINE_REFS = [f"{W}/kernel_patches/mini", "line", "missing", f"{W}/no-line", "spec.yaml",
             "l" * 300, "/proc/self"]
FILE_REFS = [f"{W}/extra.config", f"{W}/hypervisor/mini.config", "missing.config",
             "line/x.config", "f" * 300 + ".config", "/dev/null", "line"]
DIR_REFS = [f"{W}/hypervisor/patches", "line", "patches", "missing", f"{W}/extra.config"]
GUEST_REFS = ["guest.yaml", f"{W}/guest.yaml", "recipe.yaml", "base1.yaml", "missing.yaml",
              "g" * 300 + ".yaml", f"{W}/host.yaml"]
EXTENDS_REFS = ["base1.yaml", "base2.yaml", "recipe.yaml", f"{W}/kernel.yaml",
                f"{W}/guest.yaml", "missing.yaml", "e" * 300 + ".yaml", "", "line",
                f"{W}/../broken/yaml-syntax.yaml"]
SHA = "0" * 64


@functools.cache
def sources(bad: float = 0.15) -> st.SearchStrategy[Any]:
    """A pinned source: url, apt, deb or path (and mixtures, and mistakes in each, about
    ``bad`` of the fields)."""
    sha = _mix([SHA, "f" * 64], ["A" * 64, "0" * 63, "0" * 65, SHA + "\n", " " + SHA,
                                  "g" * 64, 12], bad)
    pin = _mix(["hello=2.10-3", "xen=4.20.3+127-g1-0+deb13u1", "h1=1:2.0~rc1-1"],
               ["hello", "hello=", "Hello=1", "hello=1.0\n", "hello=a", "=1", "he llo=1",
                "hello==1", "hello=1:2:3", "h=1", "hello=1.0 extra", 5], bad)
    url = st.one_of(_mix(["https://example.org/x.tar.gz", "http://example.org/a/b.tar.xz",
                          "https://h/x.tar.gz?q=1#f"],
                         ["http://example.org/", "ftp://example.org/x", "https://",
                          "example.org/x", "https://example.org/a%2F..%2Fb", "https://h/a\nb",
                          "https://h/" + "u" * 300, "file:///etc/passwd", "https://h/%00"],
                         bad), st.text(max_size=15))
    member = _mix(["usr/src/linux.tar.xz", "./usr/src/x"],
                  ["/abs", "a/../b", "a//b", "", ".", "usr/a\nb", "usr/\x1b[2J"], bad)
    path = _mix([f"{W}/src/linux-mini", f"{W}/src/xen-mini-4.17.5.tar.gz",
                 f"../{W}/src/linux-mini", f"../{W}/src/xen-mini-4.17.5.tar.gz"],
                ["missing", "p" * 300, "/dev/zero", "/dev/null", "a\x00b", ""], bad)
    filename = _mix(["x.tar.gz", "linux.tar.xz"], ["a/b", ".", "..", "source.json", "",
                                                    "n" * 300, "x\x00", "a\nb", "\t"], bad)
    kinds = st.one_of(
        st.fixed_dictionaries({"url": maybe(url, bad), "sha256": maybe(sha, bad)},
                              optional={"filename": maybe(filename, bad)}),
        st.fixed_dictionaries({"apt": maybe(pin, bad)}, optional={"dsc_sha256": maybe(sha, bad)}),
        st.fixed_dictionaries({"deb": maybe(pin, bad), "member": maybe(member, bad)},
                              optional={"sha256": maybe(sha, bad)}),
        st.fixed_dictionaries({"path": maybe(path, bad)}),
    )
    mixed = st.fixed_dictionaries({}, optional={"url": url, "apt": pin, "deb": pin, "path": path,
                                                "extra": st.just(1)})
    kinds = st.one_of(*_copies(kinds, round(1 / bad)), mixed)
    return maybe(kinds, bad * 2 / 3)


def _bool() -> st.SearchStrategy[Any]:
    return maybe(st.booleans(), 0.1)


def _list(of: st.SearchStrategy[Any], max_size: int = 3) -> st.SearchStrategy[Any]:
    return maybe(st.lists(of, max_size=max_size), 0.1)


def _section(required: dict[str, st.SearchStrategy[Any]],
             optional: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A mapping of these fields, sometimes with a misspelt or unknown key, sometimes junk."""
    base = st.fixed_dictionaries(required, optional=optional)
    typo = st.sampled_from(["sizee", "Role", "kernal", "unknown", "", "ä"])
    with_typo = st.tuples(base, typo, junk()).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(*_copies(base, 12), with_typo, junk())


SIZES = st.one_of(st.sampled_from(["4G", "2G", "1024M", "512MiB", "1GiB", " 3 G ", "0M", "63M",
                                   "64M", "255M", "256M", "lots", "1.5G", "-1G", "4T",
                                   "9" * 5000 + "G", "1e3G"]),
                  ints(4096, 256, 2048))


@functools.cache
def hypervisor_section() -> st.SearchStrategy[Any]:
    return _section(
        {"spec": maybe(st.sampled_from(SPEC_REFS))},
        {"config": _list(st.sampled_from(FILE_REFS)), "patches": st.sampled_from(DIR_REFS),
         "source": sources(), "toolstack": _bool(), "packages": _bool(), "debug": _bool(),
         "cmdline": maybe(st.sampled_from(["console=com1", "dom0_mem=1G", "a'b", "x$y",
                                           "a\\b", "new\nline", "c" * 1100, "é"]))})


@functools.cache
def kernel_section() -> st.SearchStrategy[Any]:
    frag = st.sampled_from(["base", "dom0", "domu", "nosuch", "extra.config",
                            f"{W}/extra.config", "line/x.config", "f" * 300 + ".config", "a/b"])
    return _section(
        {"line": maybe(st.sampled_from(LINE_REFS))},
        {"base": maybe(st.sampled_from(["tinyconfig", "defconfig", "allnoconfig", "file",
                                        "bigconfig"])),
         "base_config": st.sampled_from(FILE_REFS), "fragments": _list(frag, 4),
         "patches": st.sampled_from(DIR_REFS), "source": sources(), "package": _bool(),
         "cmdline": maybe(st.sampled_from(["console=hvc0", "quiet", "a\"b"]))})


@functools.cache
def image_section(kernels: tuple[str, ...]) -> st.SearchStrategy[Any]:
    return _section(
        {"role": maybe(st.sampled_from(["dom0", "guest", "domU"]))},
        {"kernel": maybe(st.sampled_from([*kernels, "nokernel"])),
         "elements": _list(st.sampled_from(["vm", "my-element", "-o/tmp/x", "a b", "é"])),
         "packages": _list(st.sampled_from(["vim", "a,b", "vim; rm", "x", "libc6", "Vim"])),
         "size": maybe(SIZES, 0.1),
         "formats": _list(st.sampled_from(["raw", "qcow2", "vmdk"])),
         "firmware": _list(st.sampled_from(["bios", "uefi", "coreboot"])),
         "access": _bool(), "compress": _bool(),
         "bridge": maybe(st.sampled_from(["xenbr0", "br0", "b" * 16, "a b"])),
         "bootloader": _bool()})


@functools.cache
def guest_entry() -> st.SearchStrategy[Any]:
    return _section(
        {"name": maybe(names(), 0.1), "recipe": maybe(st.sampled_from(GUEST_REFS)),
         "type": maybe(st.sampled_from(["pv", "pvh", "hvm", "kvm"]))},
        {"pv_drivers": _bool(), "firmware": maybe(st.sampled_from(["seabios", "ovmf"])),
         "memory": maybe(ints(256, 64, 65536), 0.1), "vcpus": maybe(ints(1, 2, 64), 0.1),
         "autostart": _bool(), "hostname": maybe(st.sampled_from(["web1", "a.b", "-x", "A"])),
         "bridge": maybe(st.sampled_from(["xenbr0", "br1"])),
         "tsc_mode": maybe(st.sampled_from(["default", "native", "always_emulate", "x"])),
         "hap": _bool()})


@functools.cache
def recipe_data(kind: str = "host") -> st.SearchStrategy[dict[Any, Any]]:
    """The data of one recipe file (``kind``: host, base or guest; each leans that way)."""
    kernel_keys = ["dom0", "guest"]
    optional: dict[Any, st.SearchStrategy[Any]] = {
        "name": maybe(names(), 0.1),
        "description": maybe(st.text(max_size=30), 0.1),
        "maintainer": maybe(st.sampled_from([
            "xenforge <xenforge@example.org>", "A B <a@b.org>", "nobody", "a <a@localhost>",
            "A <a@b.org>\n", "A <a@b.org> x", "<a@b.org>"])),
        "epoch": maybe(ints(1700000000, 0, 2**32 - 1, 2**32)),
        "target": _section({}, {"distribution": maybe(st.sampled_from(["debian", "ubuntu"])),
                                "release": maybe(st.sampled_from(["trixie", "bookworm", "sid",
                                                                  "Trixie", "../x"])),
                                "mirror": st.sampled_from(["http://deb.debian.org/debian",
                                                           "", "x"]),
                                "security_mirror": st.just("http://security.debian.org")}),
        "extends": maybe(st.one_of(st.sampled_from(EXTENDS_REFS),
                                   st.lists(st.sampled_from(EXTENDS_REFS), max_size=3))),
        "hypervisor": st.one_of(st.none(), hypervisor_section()),
        "kernels": maybe(st.dictionaries(
            st.one_of(st.sampled_from(kernel_keys), junk_key()),
            st.one_of(st.none(), kernel_section()), max_size=3), 0.1),
        "images": maybe(st.dictionaries(
            st.one_of(st.sampled_from(["xen-host", "guest", "d"]), junk_key()),
            st.one_of(st.none(), image_section(tuple(kernel_keys))), max_size=2), 0.1),
        "guests": _list(guest_entry(), 3),
        "iso": st.one_of(st.none(), _section(
            {"image": maybe(st.sampled_from(["xen-host", "guest", "none"]))},
            {"modes": _list(st.sampled_from(["live", "install", "dvd"])),
             "firmware": _list(st.sampled_from(["bios", "uefi"])),
             "label": maybe(st.sampled_from(["XENFORGE", "lower", "A" * 33, ""])),
             "name": maybe(names()),
             "version": maybe(st.sampled_from(["1.0", "-1", "v" * 65, "20240101"])),
             "guests": _bool()})),
        "tests": st.one_of(st.none(), _section({}, {
            "builtin": _list(st.sampled_from(["dom0", "guests", "x"])),
            "suites": _list(st.sampled_from(FILE_REFS)),
            "services": _list(st.sampled_from(["xendomains", "ssh.service", "a b", "getty@1"])),
            "boot": _section({}, {"memory": maybe(ints(2048, 256, 255)),
                                  "cpus": maybe(ints(2, 1, 64, 65)),
                                  "firmware": maybe(st.sampled_from(["bios", "uefi"])),
                                  "timeout": maybe(ints(900, 10, 9))}),
            "guest_boots": maybe(st.one_of(ints(1, 2, 0, 3), st.dictionaries(
                names(), ints(1, 2, 0, 3), max_size=2))),
            "after_build": _bool()})),
        "signing": st.one_of(st.none(), _section({}, {"key": maybe(st.sampled_from(
            ["ABCDEF0123456789", "me@example.org", "a\nb", "k" * 201]))})),
        "cache": st.one_of(st.none(), _section({}, {
            "remote": maybe(st.sampled_from(["https://cache.example.org/x",
                                             "http://u:p@h/", "ftp://h", "https://h/a b"])),
            "read_only": _bool()})),
    }
    schema = maybe(st.just(1), 0.08)
    data = st.fixed_dictionaries({"schema": schema} if kind != "base" else {},
                                 optional=optional)
    odd = st.tuples(data, junk_key(), junk()).map(lambda t: {**t[0], t[1]: t[2]})
    return st.one_of(*_copies(data, 10), odd)


@functools.cache
def junk_key() -> Any:
    """A key no section has (or one YAML makes into no string)."""
    return st.sampled_from(["unknown", "Kernels", Raw("1"), Raw("~"), Raw("2024-01-01"),
                            Raw("? [a]"), Raw("<<"), Raw('"\\ud800"'), Raw("!!float abc"),
                            Raw(".nan"), "k" * 100])


@functools.cache
def hypervisor_spec_data(bad: float = 0.15) -> st.SearchStrategy[dict[str, Any]]:
    """hypervisor/NAME.yaml."""
    return st.fixed_dictionaries(
        {"schema": maybe(st.just(1), bad), "name": maybe(names(), bad),
         "version": maybe(st.sampled_from(["4.17.5", "4.20.4-pre", "x"]), bad),
         "source": sources(bad)},
        optional={"patches": maybe(st.sampled_from(["patches", f"{W}/hypervisor/patches",
                                                    "missing", "."]), bad),
                  "config": _list(st.sampled_from(["x.config", f"{W}/hypervisor/mini.config",
                                                   "missing.config"])),
                  "released": maybe(st.sampled_from([
                      Raw("2026-07-31T21:59:26Z"), Raw("2024-05-01"), Raw("0001-01-01"),
                      Raw("1969-12-31"), Raw("9999-12-31"), Raw("2106-02-07T06:28:16Z"),
                      "2025-07-31", "yesterday", 1700000000, -1, 2**40]), bad),
                  "package_version": maybe(st.sampled_from(["4.20.3+127", "x", "1.0\n"]), bad),
                  "toolstack": maybe(st.fixed_dictionaries({}, optional={
                      "configure": _list(st.sampled_from([
                          "--disable-docs", "--prefix=/usr", "no-dashes", "--enable-stubdom",
                          "--enable-ipxe=yes", "", "-x"]))}), bad)})


@functools.cache
def kernel_line_data(bad: float = 0.15) -> st.SearchStrategy[dict[str, Any]]:
    """kernel_patches/LINE/line.yaml (in the case: line/line.yaml)."""
    frag = st.sampled_from(["x.config", "x.config", "missing.config", ".", "series",
                            f"../{W}/extra.config"])
    return st.fixed_dictionaries(
        {"schema": maybe(st.just(1), bad), "name": maybe(names(), bad),
         "source": sources(bad)},
        optional={"patches": maybe(st.sampled_from([".", "patches", "missing", "x.config"]),
                                   bad),
                  "fragments": maybe(st.fixed_dictionaries({"base": maybe(frag, bad)}, optional={
                      "dom0": frag, "domu": frag, junk_key(): frag}), bad),
                  "released": maybe(st.sampled_from([Raw("2026-11-12T09:30:20Z"),
                                                     Raw("2024-02-30"), "2024-05-01"]), bad)})


# ---------------------------------------------------------------------------------------------
# patch series
# ---------------------------------------------------------------------------------------------

PATCHES = ["0001-a.patch", "sub/0002-b.patch", "0003 space.patch"]


@functools.cache
def series_lines() -> st.SearchStrategy[bytes]:
    """The bytes of a ``series`` file: names, -p options, comments, and mistakes."""
    word = st.sampled_from([*PATCHES, "missing.patch", "../outside.patch", "/etc/passwd",
                            "sub", ".", "n" * 300, "ü.patch", "a\x00b", "0001-a.patch#c"])
    opt = st.sampled_from(["-p0", "-p1", "-p2", "-p", "-pX", "-p" + "9" * 5000, "-p-1", "-R",
                           "--fuzz=3", "#", "-p01"])
    line = st.one_of(
        st.tuples(word, st.lists(opt, max_size=2)).map(lambda t: " ".join([t[0], *t[1]])),
        st.sampled_from(["", "   ", "# comment", "\t0001-a.patch", "0001-a.patch\r",
                         "\x0c", "\x1c", "\u2028", "\x85"]),
        st.text(max_size=20))
    text = st.lists(line, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8", "replace"))
    good = st.sampled_from([b"", b"0001-a.patch\n", b"# ours\n0001-a.patch -p1\n\n",
                            b"0001-a.patch -p0 # comment\n"])
    return st.one_of(*_copies(good, 3), text, st.tuples(text, st.binary(max_size=8)).map(
        lambda t: t[0] + t[1]), st.binary(max_size=40),
        st.just(b"\xff\xfe0001-a.patch\n"), st.just(b"0001-a.patch\n" * 2))


# ---------------------------------------------------------------------------------------------
# byte-level damage
# ---------------------------------------------------------------------------------------------

_INSERTS = [b"\x00", b"\xff", b"\xc3", b"\t", b":", b"- ", b"{", b"[", b"&a ", b"*a", b"!!",
            b"\r", b"\xef\xbb\xbf", b"%YAML 1.1\n", b"---\n", b"...\n", b"'", b'"', b"#",
            b"\n  ", b"? ", b"|", b">", b"@", b"`", b"\x1b", b"\xed\xa0\x80"]


def damage(text: bytes) -> st.SearchStrategy[bytes]:
    """``text`` unchanged, or with a few bytes inserted, deleted or replaced, or cut short."""
    edit = st.tuples(st.sampled_from(["insert", "delete", "replace", "cut"]),
                     st.floats(0, 1), st.sampled_from(_INSERTS))

    def apply(edits: list[tuple[str, float, bytes]]) -> bytes:
        out = text
        for op, where, ins in edits:
            i = int(where * len(out))
            if op == "insert":
                out = out[:i] + ins + out[i:]
            elif op == "delete":
                out = out[:i] + out[i + 1:]
            elif op == "replace":
                out = out[:i] + ins + out[i + len(ins):]
            else:
                out = out[:i]
        return out

    return st.lists(edit, max_size=3).map(apply)


# ---------------------------------------------------------------------------------------------
# a case: the files of one fuzzed recipe
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """File name (relative to the case folder) -> bytes; ``recipe.yaml`` is the one loaded."""

    files: dict[str, bytes] = field(default_factory=dict)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        shown = {k: v.decode("utf-8", "backslashreplace") for k, v in self.files.items()}
        return f"Case({shown!r})"


def _text(data: Any) -> bytes:
    return (to_yaml(data) + "\n").encode("utf-8")


@st.composite
def cases(draw: st.DrawFn, damaged: bool = True) -> Case:
    """A recipe (and what it names) of the real shapes, with mistakes."""
    case = Case()
    recipe = _text(draw(recipe_data("host")))
    case.files["recipe.yaml"] = draw(damage(recipe)) if damaged and draw(
        st.integers(0, 5)) == 0 else recipe
    for base in ("base1.yaml", "base2.yaml"):
        if draw(st.booleans()):
            case.files[base] = _text(draw(recipe_data("base")))
    if draw(st.booleans()):
        case.files["guest.yaml"] = _text(draw(recipe_data("guest")))
    if draw(st.integers(0, 2)) == 0:
        case.files["spec.yaml"] = _text(draw(hypervisor_spec_data()))
        case.files["x.config"] = b"CONFIG_X=y\n"
    if draw(st.integers(0, 2)) == 0:
        case.files["line/line.yaml"] = _text(draw(kernel_line_data()))
        case.files["line/x.config"] = b"CONFIG_Y=y\n"
    if draw(st.integers(0, 2)) == 0:
        where = draw(st.sampled_from(["line", "patches"]))
        case.files[f"{where}/series"] = draw(series_lines())
        for p in PATCHES[: draw(st.integers(0, len(PATCHES)))]:
            case.files[f"{where}/{p}"] = b"--- a/x\n+++ b/x\n"
    return case


@functools.cache
def raw_yaml() -> st.SearchStrategy[bytes]:
    """Garbage: arbitrary bytes, arbitrary text, and YAML-looking text."""
    yamlish = st.lists(st.one_of(st.sampled_from(
        ["schema: 1", "images:", "  x:", "    role: dom0", "- a", "? x", ": y", "{", "[", "&a",
         "*a", "!!float abc", "'", '"', "\t", "---", "...", "%TAG ! x", "key: value", "  - ",
         "kernels: {dom0: {line: ../fixtures/kernel_patches/mini}}"]),
        st.text(max_size=12)), max_size=12).map(lambda ls: "\n".join(ls).encode())
    return st.one_of(st.binary(max_size=200), st.text(max_size=200).map(
        lambda t: t.encode("utf-8", "surrogatepass")), yamlish)


# ---------------------------------------------------------------------------------------------
# argv
# ---------------------------------------------------------------------------------------------

#: what a fuzzed command line may run: nothing that builds, boots or connects anywhere
SAFE_COMMANDS = ["validate", "plan", "schema", "recipes", "cache", "ci", "verify-release"]
#: these get only recipes that cannot load (they would build or boot otherwise)
FAILING_COMMANDS = ["build", "test", "boot"]
WORDS = ["--json", "--help", "-h", "--version", "-j", "-j0", "-j-1", "--jobs=99999999999",
         "-o", "-", "--out", "--target", "-t", "--progress", "--progress=xml", "json", "-q",
         "--plain", "--check-repro", "--keep-repro", "--remote-cache-read-only",
         "--no-remote-cache", "--max-size", "--max-size=1e400G", "--older-than", "nan",
         "--older-than=1e308", "--dry-run", "ls", "du", "gc", "gitlab", "github", "--tag",
         "--image", "--setup", "--no-test", "--keyring", "--require-signature", "--firmware",
         "uefi", "--suite", "dom0", "--list-suites", "--iso", "--install", "--limit", "",
         "--", "-", "--cache-dir", "--cache-dir=", "=", "-x", "--unknown", "\x00",
         "a" * 5000, "--" + "z" * 300, "ü", "\udcff", "--remote-cache=ftp://x", "-jx",
         "--cache-dir=\x00", "--cache-dir=" + "c" * 300, "--cache-dir=/dev/null",
         "--cache-dir=/proc", "--output=-", "--keyring=/dev/null", "-o=fifo"]


@functools.cache
def argv(recipes: tuple[str, ...], broken: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    """A command line: a command (sometimes none or a wrong one) and fuzzed words, recipes
    and values; ``build``/``test``/``boot`` only ever get ``broken`` recipes."""
    def line(cmd: str, failing: bool) -> st.SearchStrategy[list[str]]:
        pool = broken if failing else [*recipes, *broken]
        tokens = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(pool),
                                    st.text(max_size=8)), max_size=6)
        return tokens.map(lambda ts: [cmd, *ts])

    safe = st.sampled_from(SAFE_COMMANDS).flatmap(lambda c: line(c, False))
    failing = st.sampled_from(FAILING_COMMANDS).flatmap(lambda c: line(c, True))
    other = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=8)), max_size=4)
    return st.one_of(safe, safe, failing, other)


# ---------------------------------------------------------------------------------------------
# a valid recipe with a few fields changed (reaches the planner far more often)
# ---------------------------------------------------------------------------------------------

#: a valid host recipe of the fixtures using every section
VALID_HOST: dict[str, Any] = {
    "schema": 1, "name": "fuzz-host", "description": "every section",
    "hypervisor": {"spec": f"{W}/hypervisor/xen-mini.yaml", "debug": True},
    "kernels": {"dom0": {"line": f"{W}/kernel_patches/mini", "fragments": ["base", "dom0"]},
                "guest": {"line": f"{W}/kernel_patches/mini", "fragments": ["base", "domu"]}},
    "images": {"xen-host": {"role": "dom0", "kernel": "dom0", "size": "2G",
                            "formats": ["raw", "qcow2"], "firmware": ["bios", "uefi"]}},
    "guests": [{"name": "web1", "recipe": "guest.yaml", "type": "pvh", "memory": 256},
               {"name": "hvm1", "recipe": "guest.yaml", "type": "hvm"}],
    "iso": {"image": "xen-host"},
    "tests": {"boot": {"memory": 1024}},
}
#: the guest recipe it names (written to the case as guest.yaml)
VALID_GUEST: dict[str, Any] = {
    "schema": 1, "name": "fuzz-guest",
    "kernels": {"guest": {"line": f"{W}/kernel_patches/mini", "fragments": ["base", "domu"]}},
    "images": {"guest": {"role": "guest", "kernel": "guest", "size": "1024M"}},
}


def _field(good: list[Any], bad_values: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(_mix(good, bad_values, 0.4), junk())


_NAMES = (["web2", "a", "x.y", "g-1", "n" * 64], ["web_1", "Web", "-a", "a" * 65, "a b", "é"])
_CMDLINES = (["console=hvc0", "quiet loglevel=3", "a" * 1024],
             ["a'b", 'a"b', "a\\b", "x$y", "a\nb", "a" * 1025, "\x7f", "é\u200b"])
HOST_FIELDS: dict[tuple[str | int, ...], st.SearchStrategy[Any]] = {
    ("name",): _field(*_NAMES),
    ("maintainer",): _field(["A B <a@b.org>"], ["A <a@b.org>\n", "a <a@localhost>", "x"]),
    ("epoch",): _field([0, 1700000000, 2**32 - 1], [-1, 2**32, 2**63, "1700000000"]),
    ("target", "release"): _field(["trixie", "bookworm"], ["sid", "x" * 64, "trixie\n"]),
    ("target", "mirror"): _field(["http://deb.debian.org/debian"],
                                 ["", "-o/tmp/x", "http://h/a\nb", "ftp://h", "h" * 300]),
    ("target", "security_mirror"): _field(["http://security.debian.org/debian-security"],
                                          ["-x", " ", "http://h/ x"]),
    ("hypervisor", "cmdline"): _field(*_CMDLINES),
    ("hypervisor", "source"): sources(0.3),
    ("hypervisor", "config"): _field([[f"{W}/hypervisor/mini.config"], []],
                                     [["missing.config"], [f"{W}/hypervisor"]]),
    ("hypervisor", "patches"): _field([f"{W}/hypervisor/patches"], ["missing", "guest.yaml"]),
    ("kernels", "dom0", "fragments"): _field([["base"], ["base", f"{W}/extra.config"], []],
                                             [["nosuch"], ["x/y.config"], ["base", "base"]]),
    ("kernels", "dom0", "base"): _field(["tinyconfig", "defconfig", "file"], ["bigconfig"]),
    ("kernels", "dom0", "base_config"): _field([f"{W}/extra.config"], ["missing", f"{W}"]),
    ("kernels", "dom0", "cmdline"): _field(*_CMDLINES),
    ("kernels", "dom0", "source"): sources(0.3),
    ("kernels", "dom0", "patches"): _field([f"{W}/kernel_patches/mini"], ["missing"]),
    ("kernels", "guest"): st.one_of(st.none(), junk()),
    ("images", "xen-host", "size"): _field(["64M", "256M", "16384G", 64, 4096],
                                           ["63M", "0G", 16 << 20 | 1, -1, "16385G", 1.5]),
    ("images", "xen-host", "formats"): _field([["raw"], ["qcow2", "raw"]],
                                              [[], ["raw", "raw"], ["vmdk"]]),
    ("images", "xen-host", "firmware"): _field([["uefi"]], [[], ["bios", "bios"]]),
    ("images", "xen-host", "bridge"): _field(["br0", "b" * 15], ["b" * 16, "a b", "x\n"]),
    ("images", "xen-host", "elements"): _field([["vm"], ["a-b.c"]], [["-o"], ["a/b"]]),
    ("images", "xen-host", "packages"): _field([["vim"], ["libc6", "g++"]],
                                               [["a,b"], ["-x"], ["Vim"]]),
    ("images", "xen-host", "kernel"): _field(["dom0", "guest"], ["nope", None]),
    ("images", "xen-host", "role"): _field(["dom0"], ["guest"]),
    ("images", "xen-host", "bootloader"): _field([False], [True]),
    ("images", "xen-host", "access"): _field([True, False], ["yes please"]),
    ("guests", 0, "name"): _field(*_NAMES),
    ("guests", 0, "hostname"): _field(["web1", "a.b.c", "x" * 63],
                                      ["web_1", "-a", "a-", "A", "x" * 64]),
    ("guests", 0, "memory"): _field([64, 256, 65536], [63, 65537, 0, "256M"]),
    ("guests", 0, "vcpus"): _field([1, 64], [0, 65, -1]),
    ("guests", 0, "type"): _field(["pv", "pvh", "hvm"], ["kvm"]),
    ("guests", 0, "bridge"): _field(["xenbr0"], ["br1", "b" * 16]),
    ("guests", 0, "tsc_mode"): _field(["native", "default"], ["x"]),
    ("guests", 0, "recipe"): _field(["guest.yaml", f"{W}/guest.yaml"],
                                    ["recipe.yaml", "missing.yaml", f"{W}/host.yaml"]),
    ("guests", 1, "pv_drivers"): _field([True, False], ["no"]),
    ("guests", 1, "firmware"): _field(["seabios"], ["ovmf"]),
    ("guests", 1, "name"): _field(["web1", "hvm2"], ["web_2"]),
    ("iso", "label"): _field(["XENFORGE", "A_1", "A" * 32], ["lower", "A" * 33, ""]),
    ("iso", "name"): _field(["my.iso-name"], ["My", "a/b"]),
    ("iso", "version"): _field(["1.0", "2024.01+git~1", "v" * 64], ["-1", "v" * 65, "a b"]),
    ("iso", "modes"): _field([["live"], ["install"]], [[], ["dvd"]]),
    ("iso", "image"): _field(["xen-host"], ["guest", "none"]),
    ("tests", "boot", "memory"): _field([256, 2048, 1 << 20], [255, 2**40]),
    ("tests", "boot", "timeout"): _field([10, 900], [9, 2**40]),
    ("tests", "services"): _field([["xendomains", "getty@tty1.service"]], [["a b"], ["-x"]]),
    ("tests", "suites"): _field([[f"{W}/extra.config"]], [["missing.py"]]),
    ("tests", "guest_boots"): _field([1, 2, {"web1": 1}, {"web1": 1, "hvm1": 2}],
                                     [0, 3, {"web1": 3}, {"nope": 1}, {"Web 1": 1}]),
    ("tests", "after_build"): _field([True, False], []),
    ("signing", "key"): _field(["ABCDEF0123456789", "Me <me@example.org>"], ["a\nb", "k" * 201]),
    ("cache", "remote"): _field(["https://cache.example.org/x/"],
                                ["http://u:p@h/", "https://h/?q", "file:///x"]),
}
GUEST_FIELDS: dict[tuple[str | int, ...], st.SearchStrategy[Any]] = {
    ("images", "guest", "size"): _field(["256M", "64M", "2G"], ["255M", "63M", "0"]),
    ("images", "guest", "bootloader"): _field([True, False], []),
    ("images", "guest", "kernel"): _field(["guest", None], ["dom0"]),
    ("images", "guest", "role"): _field(["guest"], ["dom0"]),
    ("kernels", "guest", "cmdline"): _field(*_CMDLINES),
    ("target", "release"): _field(["trixie", "bookworm"], ["sid"]),
    ("guests",): _field([[]], [[{"name": "n", "recipe": "recipe.yaml", "type": "pv"}]]),
}


def _set(data: Any, path: tuple[str | int, ...], value: Any) -> Any:
    """``data`` with the field at ``path`` set to ``value`` (None there: the field removed);
    a path through something that is no longer a mapping or list changes nothing."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, dict):
        out = dict(data)
        if not rest and value is None:
            out.pop(head, None)
        else:
            out[head] = _set(data.get(head, {}), rest, value)
        return out
    if isinstance(data, list) and isinstance(head, int) and head < len(data):
        out_list = list(data)
        out_list[head] = _set(data[head], rest, value)
        return out_list
    return data


def _changes(fields: dict[tuple[str | int, ...], st.SearchStrategy[Any]], max_size: int
             ) -> st.SearchStrategy[list[tuple[tuple[str | int, ...], Any]]]:
    keys = sorted(fields, key=str)
    return st.lists(st.sampled_from(keys).flatmap(
        lambda k: st.tuples(st.just(k), fields[k])), max_size=max_size)


@functools.cache
def mutated_cases() -> st.SearchStrategy[Case]:
    """VALID_HOST and VALID_GUEST with up to three fields each set to a good or a bad value."""
    def build(changes: tuple[list[tuple[tuple[str | int, ...], Any]], ...]) -> Case:
        host, guest = VALID_HOST, VALID_GUEST
        for path, value in changes[0]:
            host = _set(host, path, value)
        for path, value in changes[1]:
            guest = _set(guest, path, value)
        return Case({"recipe.yaml": _text(host), "guest.yaml": _text(guest)})

    return st.tuples(_changes(HOST_FIELDS, 3), _changes(GUEST_FIELDS, 2)).map(build)
