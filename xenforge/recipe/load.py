"""Load a recipe: YAML with positions, ``extends`` merging, strict validation, spec files,
cross-field checks. Every problem of every file is collected and reported at once."""

from __future__ import annotations

import copy
import datetime
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from xenforge.core.data import data_dir
from xenforge.core.errors import Problem, ValidationFailed
from xenforge.core.paths import path_kind, resolved
from xenforge.recipe.model import Recipe
from xenforge.recipe.specs import HypervisorSpec, KernelLine, ReleaseSpec
from xenforge.recipe.yamlload import LoadError, Loc, Origins, load_yaml, loc_text

M = TypeVar("M", bound=BaseModel)


@dataclass
class LoadedRecipe:
    file: Path
    recipe: Recipe
    name: str
    release: ReleaseSpec | None = None  # the target's release file (None: it is broken)
    hypervisor_spec: HypervisorSpec | None = None
    kernel_lines: dict[str, KernelLine] = field(default_factory=dict)  # kernels key -> line
    guests: dict[str, LoadedRecipe] = field(default_factory=dict)  # guest name -> recipe


#: mappings under these keys are one value each: an override replaces them whole (a source
#: switched from url to apt must not keep the inherited url and sha256)
REPLACED_WHOLE = frozenset({"source"})


def merge(base: Any, top: Any, base_o: Origins, top_o: Origins, loc: Loc = ()) -> Any:
    """Deep-merge ``top`` over ``base``: mappings merge key by key, anything else (and the
    mappings named in REPLACED_WHOLE) is replaced; ``key: null`` in ``top`` removes the key
    (e.g. ``kernels: null`` drops inherited kernels)."""
    whole = bool(loc) and loc[-1] in REPLACED_WHOLE
    if isinstance(base, dict) and isinstance(top, dict) and not whole:
        out = dict(base)
        for key, value in top.items():
            if value is None and key in base:
                out.pop(key)
                base_o.drop_below((*loc, key))
            elif key in base:
                out[key] = merge(base[key], value, base_o, top_o, (*loc, key))
            else:
                out[key] = value
                _copy_origins(top_o, base_o, (*loc, key))
        if loc in top_o:
            base_o[loc] = top_o[loc]
        return out
    base_o.drop_below(loc)
    _copy_origins(top_o, base_o, loc)
    return top


def _copy_origins(src: Origins, dst: Origins, loc: Loc) -> None:
    for k, v in src.items():
        if k[: len(loc)] == loc:
            dst[k] = v


#: how deep ``extends`` may nest (a chain longer than this is a mistake, not a design)
MAX_EXTENDS_DEPTH = 16


#: per load: a file's merged data and origins, and how many files deep its own chain goes
_Merged = dict[Path, tuple[dict[str, Any], Origins, int]]


def _read_with_extends(file: Path, stack: list[Path], problems: list[Problem],
                       seen: dict[Path, tuple[Any, Origins]] | None = None,
                       done: _Merged | None = None) -> tuple[dict[str, Any], Origins]:
    """The merged data of ``file`` and what it extends. Each file is read (``seen``) and
    merged with what it extends (``done``) once per load, however often the chains name it
    (four files a level, each extending the four below, are 4^11 chains but 44 merges); a
    file listed twice in one ``extends`` and chains deeper than MAX_EXTENDS_DEPTH are
    errors. The data returned is shared: callers copy what they change."""
    file = resolved(file)
    seen = {} if seen is None else seen
    done = {} if done is None else done
    if file in done:
        data, origins, height = done[file]
        if len(stack) + height >= MAX_EXTENDS_DEPTH:
            problems.append(Problem(file, None, "extends", f"extends nests deeper than "
                                    f"{MAX_EXTENDS_DEPTH} files", "flatten the chain"))
            raise _Unreadable
        return data, origins
    try:
        if file not in seen:
            seen[file] = load_yaml(file)
        raw, raw_origins = seen[file]
    except LoadError as exc:
        problems.extend(exc.problems)
        raise _Unreadable from exc
    data = copy.deepcopy(raw)
    origins = Origins(raw_origins)
    if not isinstance(data, dict):
        problems.append(Problem(file, 1, "", "a recipe must be a mapping of sections",
                                "start with `schema: 1` and sections such as `hypervisor:`"))
        raise _Unreadable
    extends = data.get("extends", [])
    if isinstance(extends, str):
        extends = [extends]
        data["extends"] = extends
    merged: dict[str, Any] = {}
    merged_o = Origins()
    if isinstance(extends, list) and len(stack) >= MAX_EXTENDS_DEPTH:
        problems.append(Problem(file, None, "extends", f"extends nests deeper than "
                                f"{MAX_EXTENDS_DEPTH} files", "flatten the chain"))
        raise _Unreadable
    listed: set[Path] = set()
    height = 0
    if isinstance(extends, list):
        for i, ref in enumerate(extends):
            pos = origins.find(("extends", i))
            line = pos[1] if pos else None
            if not isinstance(ref, str) or "\0" in ref:
                continue  # the model reports the wrong type or the bad path
            target = resolved(file.parent / ref)
            if target in listed:
                problems.append(Problem(file, line, f"extends[{i}]",
                                        f"{ref} is listed twice in extends",
                                        "name each recipe once"))
                continue
            listed.add(target)
            if target in stack or target == file:
                chain = " -> ".join(p.name for p in [*stack, file, target])
                problems.append(Problem(file, line, f"extends[{i}]", f"extends cycle: {chain}",
                                        "remove one of the extends entries forming the loop"))
                continue
            if path_kind(target) != "file":
                problems.append(Problem(file, line, f"extends[{i}]",
                                        f"extended recipe not found: {target}",
                                        "paths in extends are relative to this file"))
                continue
            base, base_o = _read_with_extends(target, [*stack, file], problems, seen, done)
            height = max(height, 1 + done[target][2])
            base = {k: v for k, v in base.items()
                    if k not in ("extends", "name")}  # a name belongs to its own file
            merged = merge(merged, base, merged_o, base_o)
    merged = _drop_nulls(merge(merged, data, merged_o, origins))
    done[file] = (merged, merged_o, height)
    return merged, merged_o


class _Unreadable(Exception):
    """A file of the extends chain could not be read as a mapping (already reported):
    validating what is left would only add misleading follow-on problems."""


def _drop_nulls(value: Any) -> Any:
    """``key:`` with no value means "not set": the field's default applies."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def validate_model(model: type[M], data: Any, origins: Origins, file: Path,
                   problems: list[Problem], prefix: Loc = ()) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(_problem(model, err, origins, file, prefix))
        return None


def _problem(model: type[BaseModel], err: Any, origins: Origins, file: Path,
             prefix: Loc) -> Problem:
    loc = _data_loc(err["loc"], origins, last_is_field=err["type"] == "missing")
    pos = origins.find(loc)
    where, line = (pos if pos else (file, None))
    kind = err["type"]
    msg = err["msg"]
    hint = ""
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(model, loc[:-1])
        msg = f"unknown key {key!r}"
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = (f"did you mean {close[0]!r}? " if close else "") + \
            f"valid keys here: {', '.join(sorted(allowed))}"
    elif kind == "missing":
        msg = "required field is missing"
        hint = f"add `{loc[-1]}:`" if loc else ""
    elif kind == "source_kind":
        from xenforge.sources.specs import _ONE_OF_HINT

        hint = _ONE_OF_HINT
    elif kind == "literal_error":
        msg = f"{msg} (got {err.get('input')!r})"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if "no such file" in msg:
            hint = "relative paths are relative to the file that names them"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        msg = f"{msg} (got {_short(err.get('input'))})"
        if kind == "string_type" and isinstance(err.get("input"), int | float | datetime.date):
            hint = "YAML read it as a number or a date: quote it (\"...\") to make it text"
    elif kind == "string_pattern_mismatch":
        msg = f"{_short(err.get('input'))} is not a valid value: {msg}"
        if (loc and loc[-1] in ("name",)) or (len(loc) >= 2 and isinstance(loc[-1], str)):
            hint = "use lower case letters, digits, '.', '-' and '_'"
    ctx_hint = (err.get("ctx") or {}).get("hint")
    if ctx_hint and not hint:
        hint = str(ctx_hint)
    return Problem(where, line, loc_text((*prefix, *loc)), msg, hint)


def _data_loc(err_loc: tuple[Any, ...], origins: Origins, *, last_is_field: bool) -> Loc:
    """pydantic's error location minus the names it adds for union members and validators
    ('UrlSource', 'str', 'function-after[...]', '[key]'): a part is kept when it is a list
    index, a key present in the YAML, or the missing field itself."""
    loc: Loc = ()
    for i, part in enumerate(err_loc):
        last = i == len(err_loc) - 1
        if isinstance(part, int) or (*loc, part) in origins or (last and last_is_field):
            loc = (*loc, part)
    return loc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    current = _unwrap_model(current)
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def _unwrap_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _unwrap_model(arg)
        if found is not None:
            return found
    return None


def _step(tp: Any, part: str | int) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _step(typing.get_args(tp)[0], part)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            nxt = _step(arg, part)
            if nxt is not None:
                return nxt
        return None
    if origin is list and isinstance(part, int):
        return typing.get_args(tp)[0]
    if origin is dict and isinstance(part, str):
        return typing.get_args(tp)[1]
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
        for name, f in tp.model_fields.items():
            if (f.alias or name) == part:
                return f.annotation
    return None


def _load_spec(model: type[M], file: Path, problems: list[Problem]) -> M | None:
    try:
        data, origins = load_yaml(file)
    except LoadError as exc:
        problems.extend(exc.problems)
        return None
    return validate_model(model, data, origins, file, problems)


def known_releases() -> list[str]:
    """``distribution/release`` of every release file shipped (releases/*.yaml)."""
    return sorted(p.stem.replace("-", "/", 1) for p in data_dir("releases").glob("*-*.yaml"))


def _load_release(loaded: LoadedRecipe, origins: Origins,
                  problems: list[Problem]) -> ReleaseSpec | None:
    target = loaded.recipe.target
    path = data_dir("releases") / f"{target.distribution}-{target.release}.yaml"
    if not path.is_file():
        pos = origins.find(("target", "release")) or origins.find(("target",))
        problems.append(Problem(pos[0] if pos else loaded.file, pos[1] if pos else None,
                                "target.release",
                                f"unknown release {target.distribution}/{target.release}",
                                f"known releases: {', '.join(known_releases())} (a new one is "
                                f"a file releases/{target.distribution}-NAME.yaml)"))
        return None
    spec = _load_spec(ReleaseSpec, path, problems)
    if spec is not None and (spec.distribution, spec.release) != (target.distribution,
                                                                  target.release):
        problems.append(Problem(path, None, "release", f"{path.name} describes "
                                f"{spec.distribution}/{spec.release}",
                                "name the file DISTRIBUTION-RELEASE.yaml after its content"))
    return spec


def load_recipe(file: Path) -> LoadedRecipe:
    """Load and validate a recipe with everything it refers to; raise ValidationFailed."""
    problems: list[Problem] = []
    loaded = _load(file, problems, (), {})
    if problems or loaded is None:
        raise ValidationFailed(_tidy(problems))
    return loaded


def _tidy(problems: list[Problem]) -> list[Problem]:
    """One problem per field (the first found is the most specific: the loader's own checks
    run before the model's), grouped by file, in line order."""
    seen: set[tuple[Path, int | None, str]] = set()
    files: dict[Path, int] = {}
    unique = []
    for p in problems:
        key = (p.file, p.line, p.path)
        if p.path and key in seen:
            continue
        seen.add(key)
        files.setdefault(p.file, len(files))
        unique.append(p)
    return sorted(unique, key=lambda p: (files[p.file], p.line or 0))


def _load(file: Path, problems: list[Problem], stack: tuple[Path, ...],
          guests: dict[Path, LoadedRecipe | None]) -> LoadedRecipe | None:
    """Load ``file``; ``guests`` holds the guest recipes loaded so far (each file is loaded
    once, however many guests share it)."""
    from xenforge.recipe.checks import check_recipe  # cross-field rules

    file = resolved(file)
    kind = path_kind(file)
    if kind in ("dir", "special"):
        problems.append(Problem(file, None, "", "not a regular file (a device, FIFO or folder "
                                "is no recipe)", "give the path of a .yaml recipe"))
        return None
    if kind is None:
        problems.append(Problem(file, None, "", "recipe not found",
                                "give the path of a .yaml recipe, e.g. recipes/xen-host.yaml"))
        return None
    try:
        data, origins = _read_with_extends(file, [], problems)
    except _Unreadable:
        return None
    recipe = validate_model(Recipe, data, origins, file, problems)
    if recipe is None:
        return None
    name = recipe.name or file.stem
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name) or len(name) > 64:
        problems.append(Problem(file, None, "name", f"the file name gives the recipe no valid "
                                f"name ({name!r}: it names the cache's and the export's "
                                "folders)", "set `name:` (lower case letters, digits, . _ -)"))
        return None
    loaded = LoadedRecipe(file=file, recipe=recipe, name=name)
    loaded.release = _load_release(loaded, origins, problems)
    if recipe.hypervisor is not None:
        loaded.hypervisor_spec = _load_spec(HypervisorSpec, recipe.hypervisor.spec, problems)
    for key, k in recipe.kernels.items():
        line_file = k.line / "line.yaml"
        if not line_file.is_file():
            pos = origins.find(("kernels", key, "line"))
            problems.append(Problem(pos[0] if pos else file, pos[1] if pos else None,
                                    f"kernels.{key}.line",
                                    f"{k.line} has no line.yaml",
                                    "a kernel line folder holds line.yaml, series, patches "
                                    "and .config fragments"))
            continue
        line = _load_spec(KernelLine, line_file, problems)
        if line is not None:
            loaded.kernel_lines[key] = line
    nested = False
    for i, g in enumerate(recipe.guests):
        if g.recipe.resolve() in (*stack, file):
            pos = origins.find(("guests", i, "recipe"))
            problems.append(Problem(pos[0] if pos else file, pos[1] if pos else None,
                                    f"guests[{i}].recipe", "a guest recipe refers back to "
                                    "its host", "a guest recipe must not list guests"))
            continue
        if stack:  # a guest's own guests: each level of them multiplied the plan's work
            nested = True
            continue
        target = g.recipe.resolve()
        if target not in guests:
            guests[target] = _load(g.recipe, problems, (*stack, file), guests)
        sub = guests[target]
        if sub is not None:
            loaded.guests[g.name] = sub
    if nested:
        pos = origins.find(("guests",))
        problems.append(Problem(pos[0] if pos else file, pos[1] if pos else None, "guests",
                                f"{file.name} is a guest recipe (of {stack[-1].name}) and "
                                "lists guests: guests do not nest",
                                "remove `guests:` from it, or build it as a host recipe of "
                                "its own"))
    problems.extend(check_recipe(loaded, origins))
    return loaded
