"""The kernel stage's input handling (the build itself is in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from xenforge.cache import Cache
from xenforge.errors import InputError, StageFailed
from xenforge.stages import get_stage
from xenforge.stages.base import StageContext
from xenforge.stages.kernel import KernelOptions, KernelStage


def _ctx(tmp_path: Path, files: dict[str, Path], tree: Path | None = None,
         **options: object) -> StageContext:
    for d in ("out", "work"):
        (tmp_path / d).mkdir(exist_ok=True)
    return StageContext(node="kernel:test", node_id="0" * 64,
                        options=KernelOptions.model_validate(options),
                        inputs={"tree": tree or tmp_path / "tree-node"}, files=files,
                        out=tmp_path / "out", work=tmp_path / "work", log=tmp_path / "log",
                        cache=Cache(tmp_path / "cache"))


def test_registered_heavy_and_exports_its_artifacts() -> None:
    stage = get_stage("kernel")
    assert stage is KernelStage and stage.heavy
    assert set(stage.artifacts) == {"vmlinuz", "config", "System.map", "*.deb",
                                    "build-info.json"}


def test_options_are_strict() -> None:
    assert KernelOptions().base == "tinyconfig" and KernelOptions().package
    with pytest.raises(ValidationError):
        KernelOptions.model_validate({"base": "allyesconfig"})
    with pytest.raises(ValidationError):
        KernelOptions.model_validate({"make_deb": True})


def test_fragments_merge_in_numeric_label_order(tmp_path: Path) -> None:
    files = {}
    for i in range(12):
        f = tmp_path / f"f{i}.config"
        f.write_text(f"CONFIG_LEVEL={i}\n")
        files[f"fragment{i}"] = f
    files["baseconfig"] = tmp_path / "ignored"
    frags = KernelStage()._fragments(_ctx(tmp_path, files))
    assert list(frags) == [f"fragment{i}" for i in range(12)]
    assert [s[0].value for s in frags.values()] == [str(i) for i in range(12)]


def test_missing_or_bad_fragment_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fragment not found"):
        KernelStage()._fragments(_ctx(tmp_path, {"fragment0": tmp_path / "nope.config"}))
    bad = tmp_path / "bad.config"
    bad.write_text("CONFIG_XEN=yes\n")
    with pytest.raises(InputError, match=r"bad.config:1: bad value 'yes'"):
        KernelStage()._fragments(_ctx(tmp_path, {"fragment0": bad}))


def test_tree_input_must_be_a_linux_tree(tmp_path: Path) -> None:
    (tmp_path / "tree-node" / "tree").mkdir(parents=True)
    with pytest.raises(StageFailed, match="is not a Linux source tree"):
        KernelStage().run(_ctx(tmp_path, {}))
