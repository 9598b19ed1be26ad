"""Read Kconfig files well enough to explain why Kconfig dropped a requested option.

This is not a Kconfig implementation: ``make olddefconfig`` decides the values, and
:func:`xenforge.lib.kconfig.verify` compares them with what the fragments asked for. This module
reads the ``Kconfig`` language (``source``, ``if``/``menu``/``choice`` blocks, ``config``
entries with their type, prompts, ``depends on``, ``select``, ``range``) and evaluates the
dependency expressions against the final ``.config`` to name the unmet dependency, who
forces an option on through ``select``, or that an option does not exist in the tree.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xenforge.core.errors import InputError
from xenforge.lib.kconfig import PREFIX, Mismatch, Setting, values_match, verify

# -- expressions ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r'\s*(&&|\|\||!=|<=|>=|[!()<>=]|"(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_.+-]+)')

#: ("sym", name) | ("str", text) | ("macro", text) | ("not", e) | ("and" | "or", a, b)
#: | ("cmp", op, a, b)
Expr = tuple[Any, ...]


class ExprError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        if text.startswith("$(", i):  # a preprocessor macro; keep it whole
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
            out.append(text[i:j])
            i = j
            continue
        m = _TOKEN_RE.match(text, i)
        if not m:
            raise ExprError(f"cannot read {text[i:]!r}")
        out.append(m.group(1))
        i = m.end()
    return out


def parse_expr(text: str) -> Expr:
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(toks):
            raise ExprError(f"unexpected end of {text!r}")
        pos += 1
        return toks[pos - 1]

    def p_or() -> Expr:
        e = p_and()
        while peek() == "||":
            take()
            e = ("or", e, p_and())
        return e

    def p_and() -> Expr:
        e = p_not()
        while peek() == "&&":
            take()
            e = ("and", e, p_not())
        return e

    def p_not() -> Expr:
        if peek() == "!":
            take()
            return ("not", p_not())
        return p_cmp()

    def p_cmp() -> Expr:
        e = p_atom()
        if peek() in ("=", "!=", "<", ">", "<=", ">="):
            op = take()
            e = ("cmp", op, e, p_atom())
        return e

    def p_atom() -> Expr:
        t = take()
        if t == "(":
            e = p_or()
            if take() != ")":
                raise ExprError(f"missing ')' in {text!r}")
            return e
        if t.startswith("$("):
            return ("macro", t)
        if t[0] in "\"'":
            return ("str", t[1:-1])
        if t in ("&&", "||", ")", "=", "!=", "<", ">", "<=", ">="):
            raise ExprError(f"unexpected {t!r} in {text!r}")
        return ("sym", t)

    e = p_or()
    if pos != len(toks):
        raise ExprError(f"trailing {' '.join(toks[pos:])!r} in {text!r}")
    return e


def render(e: Expr, parent: str = "") -> str:
    kind = e[0]
    if kind == "sym":
        return str(e[1])
    if kind == "str":
        return f'"{e[1]}"'
    if kind == "macro":
        return str(e[1])
    if kind == "not":
        inner = render(e[1], "not")
        return f"!{inner}"
    if kind == "cmp":
        return f"{render(e[2], 'cmp')}{e[1]}{render(e[3], 'cmp')}"
    text = f" {'&&' if kind == 'and' else '||'} ".join(
        render(x, kind) for x in (e[1], e[2]))
    needs = parent == "not" or (parent == "and" and kind == "or")
    return f"({text})" if needs else text


def conjuncts(e: Expr) -> list[Expr]:
    if e[0] == "and":
        return conjuncts(e[1]) + conjuncts(e[2])
    return [e]


# -- the index -----------------------------------------------------------------------------

@dataclass
class Definition:
    """One ``config NAME`` entry (a symbol may be defined in several places)."""

    name: str
    file: str
    line: int
    type: str = ""
    prompts: list[str] = field(default_factory=list)  # each prompt's condition, "" = always
    depends: list[str] = field(default_factory=list)  # own `depends on` expressions
    inherited: list[str] = field(default_factory=list)  # from enclosing if/menu/choice
    ranges: list[str] = field(default_factory=list)
    choice: int | None = None  # id of the enclosing choice

    @property
    def all_depends(self) -> list[str]:
        return self.inherited + self.depends


@dataclass
class _Block:
    kind: str  # "if" | "menu" | "choice"
    deps: list[str]
    choice_id: int | None = None


_TYPES = ("bool", "tristate", "string", "int", "hex")
_MACRO_ASSIGN = re.compile(r"^[A-Za-z0-9_-]+\s*(:=|\+=|=)")
_VAR_RE = re.compile(r"\$\(([A-Za-z0-9_]+)\)")


def _prompt_condition(rest: str) -> str | None:
    """For ``"text" if EXPR`` return EXPR ("" when unconditional); None when no prompt."""
    m = re.match(r'^("(?:[^"\\]|\\.)*"|\'[^\']*\')\s*(?:if\s+(.*))?$', rest.strip())
    if not m:
        return None
    return (m.group(2) or "").strip()


class KconfigIndex:
    """Symbols, their dependencies and reverse selects, read from a Kconfig tree."""

    def __init__(self, srctree: Path = Path("."), env: Mapping[str, str] | None = None) -> None:
        self._srctree = srctree
        self._env = dict(env or {})
        self._stack: list[_Block] = []
        self.defs: dict[str, list[Definition]] = {}
        self.selected_by: dict[str, list[tuple[str, str]]] = {}  # target -> (selector, cond)
        self.choices: dict[int, list[str]] = {}
        self.skipped: list[str] = []  # sources we could not follow (unknown macros)

    @classmethod
    def load(cls, srctree: Path, top: str = "Kconfig",
             env: Mapping[str, str] | None = None) -> KconfigIndex:
        """Parse ``srctree/top`` and everything it sources. ``env`` expands ``$(VAR)`` in
        ``source`` paths, e.g. ``{"SRCARCH": "x86"}`` for Linux on x86."""
        index = cls(srctree, env)
        index._parse_file(srctree / top)
        return index

    @classmethod
    def from_text(cls, text: str, name: str = "Kconfig") -> KconfigIndex:
        """An index of one Kconfig text (``source`` lines are ignored): for tests."""
        index = cls()
        index._parse_lines(text.splitlines(), name, Path("."), follow=False)
        return index

    # -- reading ---------------------------------------------------------------------------
    def _parse_file(self, path: Path) -> None:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            self.skipped.append(str(path))
            return
        try:
            rel = str(path.relative_to(self._srctree))
        except ValueError:
            rel = str(path)
        self._parse_lines(lines, rel, path.parent, follow=True)

    def _source(self, arg: str, kind: str, here: Path) -> None:
        target = arg.strip().strip('"')

        def expand(m: re.Match[str]) -> str:
            return self._env.get(m.group(1), m.group(0))

        target = _VAR_RE.sub(expand, target)
        if "$(" in target:
            self.skipped.append(target)
            return
        base = here if kind in ("rsource", "orsource") else self._srctree
        matches = sorted(glob.glob(str(base / target)))
        if not matches:
            if kind not in ("osource", "orsource"):
                self.skipped.append(target)
            return
        for m in matches:
            self._parse_file(Path(m))

    def _parse_lines(self, lines: list[str], fname: str, here: Path, *, follow: bool) -> None:
        current: Definition | None = None  # the config entry attributes attach to
        block: _Block | None = None  # a menu/choice whose `depends on` lines we read
        help_indent: int | None = None
        in_help = False
        i = 0
        while i < len(lines):
            lineno = i + 1
            raw = lines[i]
            i += 1
            while raw.endswith("\\") and i < len(lines):
                raw = raw[:-1] + " " + lines[i]
                i += 1
            if in_help:
                if not raw.strip():
                    continue
                indent = len(raw.expandtabs(8)) - len(raw.expandtabs(8).lstrip())
                if help_indent is None:
                    help_indent = indent
                if indent >= help_indent and indent > 0:
                    continue
                in_help = False
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            line = re.sub(r'\s+#[^"\']*$', "", line)  # trailing comments
            word, _, rest = line.partition(" ")
            rest = rest.strip()
            if "\t" in word:
                word, _, more = word.partition("\t")
                rest = (more + " " + rest).strip()
            if "$(" in rest and word not in ("source", "rsource", "osource", "orsource"):
                rest = _VAR_RE.sub(lambda m: self._env.get(m.group(1), m.group(0)), rest)
            if word in ("config", "menuconfig"):
                name = rest.split()[0] if rest else ""
                current = Definition(name, fname, lineno,
                                     inherited=[d for b in self._stack for d in b.deps])
                choice = next((b for b in reversed(self._stack) if b.kind == "choice"), None)
                if choice is not None and choice.choice_id is not None:
                    current.choice = choice.choice_id
                    self.choices.setdefault(choice.choice_id, []).append(name)
                self.defs.setdefault(name, []).append(current)
                block = None
            elif word == "choice":
                cid = len(self.choices) + 1
                self.choices[cid] = []
                block = _Block("choice", [], cid)
                self._stack.append(block)
                current = None
            elif word == "menu":
                block = _Block("menu", [])
                self._stack.append(block)
                current = None
            elif word == "if":
                self._stack.append(_Block("if", [rest]))
                current, block = None, None
            elif word in ("endif", "endmenu", "endchoice"):
                want = {"endif": "if", "endmenu": "menu", "endchoice": "choice"}[word]
                while self._stack:
                    b = self._stack.pop()
                    if b.kind == want:
                        break
                current, block = None, None
            elif word in ("source", "rsource", "osource", "orsource"):
                if follow:
                    self._source(rest, word, here)
                current, block = None, None
            elif word in ("comment", "mainmenu"):
                current, block = None, None
            elif word == "help" or word == "---help---":
                in_help, help_indent = True, None
            elif word == "depends":
                expr = rest[2:].strip() if rest.startswith("on") else rest
                if current is not None:
                    current.depends.append(expr)
                elif block is not None:
                    block.deps.append(expr)
            elif current is None:
                continue
            elif word in _TYPES:
                current.type = current.type or word
                if rest:
                    cond = _prompt_condition(rest)
                    if cond is not None:
                        current.prompts.append(cond)
            elif word in ("def_bool", "def_tristate"):
                current.type = current.type or word[4:]
            elif word == "prompt":
                cond = _prompt_condition(rest)
                if cond is not None:
                    current.prompts.append(cond)
            elif word == "select":
                target, _, cond = rest.partition(" if ")
                self.selected_by.setdefault(target.strip(), []).append(
                    (current.name, cond.strip()))
            elif word == "range":
                current.ranges.append(rest)
            elif _MACRO_ASSIGN.match(line):
                continue

    # -- queries ---------------------------------------------------------------------------
    def known(self, name: str) -> bool:
        return name in self.defs

    def definition(self, name: str) -> Definition | None:
        """The definition that makes the option settable: the first with a prompt."""
        defs = self.defs.get(name, [])
        return next((d for d in defs if d.prompts), defs[0] if defs else None)

    def type_of(self, name: str) -> str:
        return next((d.type for d in self.defs.get(name, []) if d.type), "")


# -- evaluation against a final .config ----------------------------------------------------

_LEVEL = {"n": 0, "m": 1, "y": 2}


class Evaluator:
    def __init__(self, index: KconfigIndex, final: Mapping[str, str]) -> None:
        self.index = index
        self.final = final
        self.modules = final.get("MODULES") == "y"

    def value(self, e: Expr) -> str:
        kind = e[0]
        if kind == "str":
            return str(e[1])
        if kind == "macro":
            return "y"  # a preprocessor check (compiler feature); assume it holds
        if kind == "sym":
            name = str(e[1])
            if name in _LEVEL:
                return name
            if self.index.known(name):
                v = self.final.get(name)
                if v is None:
                    return "" if self.index.type_of(name) in ("string", "int", "hex") else "n"
                return v.strip('"')
            return name if re.fullmatch(r"-?[0-9]+|0[xX][0-9a-fA-F]+", name) else "n"
        return ("n", "m", "y")[self.level(e)]

    def level(self, e: Expr) -> int:
        kind = e[0]
        if kind == "and":
            return min(self.level(e[1]), self.level(e[2]))
        if kind == "or":
            return max(self.level(e[1]), self.level(e[2]))
        if kind == "not":
            return 2 - self.level(e[1])
        if kind == "cmp":
            a, b = self.value(e[2]), self.value(e[3])
            op = e[1]
            try:
                x: int | str = int(a, 0)
                y: int | str = int(b, 0)
            except ValueError:
                x, y = a, b
            res = {"=": x == y, "!=": x != y, "<": x < y, ">": x > y,  # type: ignore[operator]
                   "<=": x <= y, ">=": x >= y}[op]  # type: ignore[operator]
            return 2 if res else 0
        lvl = _LEVEL.get(self.value(e), 0)
        return 0 if lvl == 1 and not self.modules else lvl

    def level_text(self, text: str) -> int | None:
        try:
            return self.level(parse_expr(text))
        except ExprError:
            return None


# -- explanations ----------------------------------------------------------------------------

def _want_level(value: str) -> int:
    return _LEVEL.get(value, 2)  # strings and numbers need the option visible (y)


class Explainer:
    """Turns :class:`~xenforge.lib.kconfig.Mismatch` records into sentences for people."""

    def __init__(self, index: KconfigIndex, final: Mapping[str, str],
                 requested: Mapping[str, Setting]) -> None:
        self.index = index
        self.final = final
        self.requested = requested
        self.ev = Evaluator(index, final)

    def _state(self, name: str) -> str:
        v = self.final.get(name)
        return "not set" if v in (None, "n") else f"={v}"

    def unmet(self, deps: list[str], want: int) -> tuple[str, list[Expr]]:
        """The full dependency text and the conjuncts below ``want``."""
        terms: list[Expr] = []
        for d in deps:
            try:
                terms.extend(conjuncts(parse_expr(d)))
            except ExprError:
                continue
        seen: set[str] = set()
        uniq = []
        for t in terms:
            r = render(t)
            if r not in seen:
                seen.add(r)
                uniq.append(t)
        text = " && ".join(render(t, "and") for t in uniq)
        return text, [t for t in uniq if self.ev.level(t) < want]

    def _selectors(self, name: str) -> list[str]:
        out = []
        for sel, cond in self.index.selected_by.get(name, []):
            if self.final.get(sel) in ("y", "m") and (not cond or self.ev.level_text(cond)):
                out.append(f"{sel}{self._state(sel)}")
        return out

    def _why_symbol(self, e: Expr, depth: int) -> str:
        """Why one unmet conjunct is unmet, following plain symbols a few levels down."""
        text = render(e)
        if e[0] == "not" and e[1][0] == "sym":
            name = str(e[1][1])
            sels = self._selectors(name)
            by = f", selected by {', '.join(sels)}" if sels else ""
            return f"{text} ({name} is {self._state(name)}{by})"
        if e[0] != "sym" or not self.index.known(str(e[1])):
            return text
        name = str(e[1])
        state = self._state(name)
        req = self.requested.get(name)
        if req is not None:
            if values_match(req.value, self.final.get(name)):
                return f"{name} ({state}, as {req.where} asks)"
            return f"{name} ({state}; requested too, see its own entry)"
        d = self.index.definition(name)
        if d is None:
            return f"{name} ({state})"
        notes = [state]
        if not d.prompts:
            sels = [s for s, _ in self.index.selected_by.get(name, [])]
            notes.append("has no prompt, only `select` sets it"
                         + (f", e.g. from {', '.join(sels[:4])}" if sels else ""))
        else:
            notes.append(f"add {PREFIX}{name}=y to a fragment")
        if depth > 0:
            _, sub = self.unmet(d.all_depends, 1)
            if sub:
                notes.append("it needs " + ", ".join(self._why_symbol(s, depth - 1)
                                                      for s in sub))
        return f"{name} ({'; '.join(notes)})"

    def explain(self, mm: Mismatch) -> str:
        s = mm.setting
        name = s.name
        head = mm.summary()
        if not self.index.known(name):
            return (f"{head}: no Kconfig file of this tree defines {name} "
                    "(a typo, an option of another kernel version, or a patch that adds "
                    "it is missing from the series)")
        d = self.index.definition(name)
        assert d is not None
        typ = self.index.type_of(name)
        if s.value == "m" and typ == "bool":
            return f"{head} ({name} is a bool option: ask for =y)"
        if s.value == "m" and mm.actual == "y" and not self.ev.modules:
            return f"{head} (modules are disabled: {PREFIX}MODULES is not set)"
        if s.value == "n" or (s.value in ("y", "m") and mm.actual in ("y", "m")
                              and _LEVEL[mm.actual] > _LEVEL[s.value]):
            sels = self._selectors(name)
            if sels:
                return f"{head} (forced by select from: {', '.join(sels)})"
            if not d.prompts:
                return f"{head} ({name} has no prompt; its default decides)"
            return f"{head} (not forced by any select; check its default and the choice " \
                   "it belongs to)"
        want = _want_level(s.value)
        text, unmet = self.unmet(d.all_depends, want)
        if unmet:
            why = ", ".join(self._why_symbol(t, 2) for t in unmet)
            label = "unmet" if mm.dropped else "limited to m by"
            return f"{head} (depends on: {text}; {label}: {why})"
        prompt_conds = [c for c in d.prompts if c]
        if not d.prompts:
            sels = [sel for sel, _ in self.index.selected_by.get(name, [])]
            tail = f"; selected by: {', '.join(sels[:6])}" if sels else ""
            return (f"{head} ({name} has no prompt, so a fragment cannot set it; enable an "
                    f"option that selects it{tail})")
        if len(prompt_conds) == len(d.prompts):
            for c in prompt_conds:
                _, punmet = self.unmet([c], 2)
                if punmet:
                    why = ", ".join(self._why_symbol(t, 1) for t in punmet)
                    return f"{head} (its prompt is visible only if {c}; unmet: {why})"
        if d.choice is not None:
            chosen = [m for m in self.index.choices.get(d.choice, [])
                      if self.final.get(m) == "y"]
            if chosen:
                return f"{head} (member of a choice; {', '.join(chosen)} was chosen)"
        if d.ranges and s.value not in ("y", "m", "n"):
            return f"{head} (value outside its range: {'; '.join(d.ranges)})"
        return f"{head} (dependencies look met: {text or 'none'}; see the build log)"


def explain(mismatches: list[Mismatch], index: KconfigIndex, final: Mapping[str, str],
            requested: Mapping[str, Setting]) -> list[str]:
    ex = Explainer(index, final, requested)
    return [ex.explain(m) for m in mismatches]


class KconfigRejected(InputError):
    """Requested options did not survive ``olddefconfig``: the fragments ask for what this
    tree cannot give (bad input, exit 2, in every stage that merges fragments)."""


def check_survived(requested: Mapping[str, Setting], final: Mapping[str, str],
                   load_index: Callable[[], KconfigIndex]) -> list[str]:
    """Raise :class:`KconfigRejected` naming each requested option that Kconfig dropped or
    changed, with its fragment, line and the dependency that is missing (from the tree's
    Kconfig files, loaded only then); returns nothing useful when all survived ([])."""
    problems = verify(requested, final)
    if not problems:
        return []
    lines = [p.summary() for p in problems]
    try:
        lines = explain(problems, load_index(), final, requested)
    except (OSError, ValueError) as exc:  # the explanation is a bonus; keep the plain list
        lines.append(f"(the dependencies could not be explained: {exc})")
    n = len(problems)
    raise KconfigRejected(
        f"{n} requested Kconfig option{'s' if n != 1 else ''} did not survive "
        "olddefconfig:\n  " + "\n  ".join(lines),
        hint="add the missing dependencies to a fragment, or drop the options")
