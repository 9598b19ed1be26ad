"""Load YAML keeping where every value came from (file and line).

Scalars that are strings come back as :class:`Located` (a ``str`` that knows its file and
line), so path fields can be resolved against the file that declared them, even after
``extends`` merged several files. Every container's position is kept in a :class:`Origins`
map from a field path (a tuple of keys and indexes) to (file, line), for error messages.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from xenforge.core.errors import Problem

Loc = tuple[str | int, ...]


class Located(str):
    """A string from a YAML file that remembers its file and line."""

    file: Path
    line: int

    def __new__(cls, value: str, file: Path, line: int) -> Located:
        obj = super().__new__(cls, value)
        obj.file = file
        obj.line = line
        return obj

    def __copy__(self) -> Located:
        return self  # immutable: a copy may be the same object

    def __deepcopy__(self, memo: dict[int, object]) -> Located:
        return self


class Origins(dict[Loc, tuple[Path, int]]):
    """field path -> (file, line) of where it was last set."""

    def find(self, loc: Loc) -> tuple[Path, int] | None:
        """The position of ``loc`` or of its nearest ancestor that has one."""
        for n in range(len(loc), -1, -1):
            hit = self.get(loc[:n])
            if hit is not None:
                return hit
        return None

    def drop_below(self, loc: Loc) -> None:
        for key in [k for k in self if k[: len(loc)] == loc and len(k) > len(loc)]:
            del self[key]


#: how deep mappings and lists may nest (a recipe needs 5 levels; 5,000 would exhaust the
#: recursion of the YAML composer and of everything that walks the data)
MAX_YAML_DEPTH = 32
#: the largest integer a recipe or spec holds (64 bits); a 4,000-digit number is no size,
#: count or date, and Python cannot even print one over 4,300 digits
MAX_YAML_INT = 2**64


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than MAX_YAML_DEPTH while composing."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"mappings and lists nest deeper than {MAX_YAML_DEPTH} levels",
                parent.start_mark if parent is not None else None)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _BadValue(yaml.constructor.ConstructorError):
    """A scalar YAML cannot make into a value of its type, at field ``loc``."""

    loc: Loc = ()


def _scalar(node: yaml.Node, loc: Loc) -> Any:
    """The value of a scalar node; a value its tag cannot have (``!!float abc``, the date
    2024-13-45, a timezone of +25:00), an integer over MAX_YAML_INT or a string with a lone
    surrogate (``"\\ud800"``, no character) is a located error, not a crash."""
    problem = ""
    try:
        value = _Loader("").construct_object(node)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        tag = node.tag.rsplit(":", 1)[-1]
        detail = str(exc) if isinstance(exc, ValueError | OverflowError) else "no such value"
        if len(detail) > 80:
            detail = detail[:77] + "..."
        problem = f"{node.value[:40]!r} is not a valid {tag} ({detail})"
        if "integer string conversion" in detail:  # over 4,300 digits: Python refuses it
            problem = (f"a number of {len(node.value)} digits is larger than any value of a "
                       f"recipe (at most {MAX_YAML_INT})")
    else:
        if isinstance(value, int) and abs(value) > MAX_YAML_INT:
            problem = (f"an integer of {value.bit_length()} bits is larger than any value of "
                       f"a recipe (at most {MAX_YAML_INT})")
        elif isinstance(value, str) and not _encodable(value):
            problem = ("a string holds a lone surrogate (an escape such as \\ud800 that is "
                       "no character)")
    if problem:
        err = _BadValue(None, None, problem, node.start_mark)
        err.loc = loc
        raise err
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _construct(node: yaml.Node, file: Path, loc: Loc, origins: Origins) -> Any:
    origins[loc] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain name, not a list or mapping",
                    key_node.start_mark)
            key = _scalar(key_node, loc)
            if isinstance(key, str) and key == "<<":
                raise yaml.constructor.ConstructorError(
                    None, None, "YAML merge keys (<<) are not supported; use extends:",
                    key_node.start_mark)
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            out[key] = _construct(value_node, file, (*loc, key), origins)
            origins[(*loc, key)] = (file, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, file, (*loc, i), origins) for i, v in enumerate(node.value)]
    value = _scalar(node, loc)
    if isinstance(value, str):
        return Located(value, file, node.start_mark.line + 1)
    return value


def _refuse_aliases(root: yaml.Node) -> None:
    """Anchors and aliases (``&a``/``*a``) would let a recipe refer to itself or blow up
    when expanded; recipes share through ``extends:`` instead. A node met twice is one."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "YAML anchors and aliases (&name, *name) are not supported; "
                "share settings through extends:", node.start_mark)
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


#: the largest recipe or spec file read (a recipe is a few KiB; /dev/zero is not one)
MAX_YAML_BYTES = 1 << 20


def load_yaml(file: Path) -> tuple[Any, Origins]:
    """Parse one YAML file (a regular file of at most MAX_YAML_BYTES); raise a located
    :class:`Problem` list on anything else and on syntax errors."""
    origins = Origins()
    try:
        st = file.stat()
        if not stat.S_ISREG(st.st_mode):
            raise LoadError([Problem(file, None, "", "not a regular file (a device, FIFO or "
                                     "folder is no recipe)", "name a .yaml file")])
        if st.st_size > MAX_YAML_BYTES:
            raise LoadError([Problem(file, None, "", f"{st.st_size} bytes: larger than a "
                                     f"recipe can be ({MAX_YAML_BYTES} bytes)",
                                     "name the recipe, not a data file")])
        with open(file, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
        text = data.decode("utf-8")
    except FileNotFoundError as exc:
        raise LoadError([Problem(file, None, "", "file not found",
                                 "check the path (relative paths are relative to the file "
                                 "that names them)")]) from exc
    except UnicodeDecodeError as exc:
        raise LoadError([Problem(file, data.count(b"\n", 0, exc.start) + 1, "",
                                 f"not UTF-8 text (byte {data[exc.start]:#04x})",
                                 "save the file as UTF-8")]) from exc
    except OSError as exc:
        raise LoadError([Problem(file, None, "", f"cannot read: {exc}")]) from exc
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is None:
            return {}, origins
        _refuse_aliases(node)
        return _construct(node, file, (), origins), origins
    except yaml.reader.ReaderError as exc:  # a NUL byte or another control character
        at = text.count("\n", 0, exc.position) + 1
        raise LoadError([Problem(file, at, "", f"a character YAML does not allow: "
                                 f"#x{exc.character:04x} (a NUL byte or a control character)",
                                 "remove it; write it as an escape in a double-quoted string "
                                 "if you mean it")]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        if isinstance(exc, _BadValue):
            raise LoadError([Problem(file, line, loc_text(exc.loc),
                                     f"YAML value error: {exc.problem}",
                                     "quote a value meant as text (\"...\")")]) from exc
        msg = f"YAML syntax error: {exc.problem or exc.context}"
        raise LoadError([Problem(file, line, "", msg,
                                 "fix the YAML syntax (indentation, colons, quotes)")]) from exc
    except yaml.YAMLError as exc:
        raise LoadError([Problem(file, None, "", f"YAML error: {exc}")]) from exc


class LoadError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def loc_text(loc: Loc) -> str:
    """('guests', 1, 'memory') -> 'guests[1].memory'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
