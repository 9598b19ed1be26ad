"""A StageContext for running one stage in a test, without the executor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xenforge.stages.base import StageContext

EPOCH = 1700000000


def stage_context(tmp_path: Path, *, node: str, options: Any,
                  inputs: Mapping[str, Path | tuple[Path, ...]] | None = None,
                  files: Mapping[str, Path | tuple[Path, ...]] | None = None,
                  node_id: str = "0" * 64, out: Path | None = None, work: Path | None = None,
                  log: Path | None = None, scratch: Path | None = None) -> StageContext:
    out = out or tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    work = work or tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    scratch_root = scratch or tmp_path / "scratch"

    def persistent(name: str) -> Path:
        path = scratch_root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    return StageContext(node=node, node_id=node_id, options=options, inputs=dict(inputs or {}),
                        files=dict(files or {}), out=out, work=work,
                        log=log or tmp_path / "node.log", epoch=EPOCH,
                        compiler_cache=tmp_path / "ccache", scratch=persistent)
