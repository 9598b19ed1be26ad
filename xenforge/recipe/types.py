"""Field types shared by recipes and spec files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    StringConstraints,
    WithJsonSchema,
)

from xenforge.recipe.yamlload import Located


class Model(BaseModel):
    """Strict base: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)


def resolve_path(value: Any) -> Any:
    """A relative path is relative to the YAML file that wrote it."""
    if isinstance(value, Located) and value and not os.path.isabs(value):
        return (value.file.parent / value).resolve()
    if isinstance(value, str):
        return Path(value)
    return value


def _must_exist(p: Path) -> Path:
    if not p.exists():
        raise ValueError(f"no such file or directory: {p}")
    return p


def _must_be_dir(p: Path) -> Path:
    if not p.is_dir():
        raise ValueError(f"not a directory: {p}")
    return p


#: a path that must exist, relative to the file that names it
FilePath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_must_exist)]
#: a directory that must exist, relative to the file that names it
DirPath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_must_exist),
                    AfterValidator(_must_be_dir)]

#: names used as keys and references: lower case, digits, dot, dash, underscore
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]*$", max_length=64)]
#: a systemd unit name without the ``.service`` suffix (``xendomains``, ``ssh``, ``getty@tty1``)
UnitName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9:_.@-]+$", max_length=128)]

_SIZE = re.compile(r"^([0-9]+)\s*(M|MiB|G|GiB)$")


def _size_mib(value: Any) -> Any:
    if isinstance(value, str):
        m = _SIZE.match(value.strip())
        if not m:
            raise ValueError(f"{value!r} is not a size; write it like 512M or 4G")
        n = int(m.group(1))
        return n * 1024 if m.group(2).startswith("G") else n
    return value


#: a size in MiB, written as 512M / 4G (or a plain number of MiB)
SizeMiB = Annotated[int, BeforeValidator(_size_mib), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 0},
              {"type": "string", "pattern": r"^\s*[0-9]+\s*(M|MiB|G|GiB)\s*$"}],
    "description": "MiB, or a size such as 512M or 4G"})]


def fragment_ref(value: Any) -> Any:
    """A Kconfig fragment: a name from the line/spec (``dom0``) or a path (``x/y.config``)."""
    if isinstance(value, str) and ("/" in value or value.endswith(".config")):
        return resolve_path(value)
    return value


FragmentRef = Annotated[Path | str, BeforeValidator(fragment_ref)]

#: xl's tsc_mode of a guest (a recipe's guests entry, the image stage's xl config)
TscMode = Literal["default", "native", "always_emulate", "native_paravirt"]
