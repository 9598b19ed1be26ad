"""The ``source`` stage: fetch and verify one pinned source into the cache.

Output: the fetched files and ``source.json`` ({"kind", "primary", "files": [{name, sha256}],
...}); see :func:`xenforge.sources.fetch.fetch`. Downloads go through the
download store (the persistent scratch dir ``downloads``), so a second fetch needs no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import field_validator

from xenforge.sources.fetch import fetch
from xenforge.sources.specs import PathSource, SourceSpec
from xenforge.stages.base import Stage, StageContext, StageOptions


class SourceOptions(StageOptions):
    spec: SourceSpec

    @field_validator("spec", mode="before")
    @classmethod
    def _path_by_name(cls, value: Any) -> Any:
        # A path source's location may come separately, as the node's file "path" (so the
        # node id depends on the content, not on where a checkout lives); the option then
        # holds only its name, which need not exist in the current directory.
        if isinstance(value, dict) and set(value) == {"path"} and isinstance(value["path"], str):
            p = Path(value["path"])
            if not p.is_absolute() and not p.exists():
                return PathSource.model_construct(path=p)
        return value


class SourceStage(Stage):
    name: ClassVar[str] = "source"
    described = True
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = SourceOptions
    artifacts: ClassVar[tuple[str, ...]] = ()
    build_env: ClassVar[bool] = False

    def run(self, ctx: StageContext) -> None:
        spec: SourceSpec = ctx.options.spec
        if isinstance(spec, PathSource):
            located = ctx.file("path") or spec.path
            spec = PathSource(path=located)  # validated: it must exist now
        info = fetch(spec, ctx.out, downloads=ctx.persistent("downloads"), log=ctx.log)
        ctx.note(f"source {spec.describe()}: primary {info['primary']}, "
                 f"{len(info['files'])} file(s)")
