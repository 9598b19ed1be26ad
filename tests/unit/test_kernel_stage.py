"""The kernel stage's input handling (the build itself is in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from stagectx import stage_context

from xenforge.core.errors import InputError, StageFailed
from xenforge.stages import get_stage
from xenforge.stages.base import StageContext
from xenforge.stages.kernel import KernelOptions, KernelStage

PACKAGING = {"maintainer": "xenforge <xenforge@example.org>", "distribution": "bookworm"}


def _ctx(tmp_path: Path, files: dict[str, Path | tuple[Path, ...]], tree: Path | None = None,
         **options: object) -> StageContext:
    return stage_context(tmp_path, node="kernel:test",
                         options=KernelOptions.model_validate({**PACKAGING, **options}),
                         inputs={"tree": tree or tmp_path / "tree-node"}, files=files,
                         scratch=tmp_path / "cache" / "scratch")


def test_registered_heavy_and_exports_its_artifacts() -> None:
    stage = get_stage("kernel")
    assert stage is KernelStage and stage.heavy
    assert set(stage.artifacts) == {"vmlinuz", "config", "System.map", "*.deb",
                                    "lintian.txt", "build-info.json"}


def test_options_are_strict() -> None:
    opts = KernelOptions.model_validate(PACKAGING)
    assert opts.base == "tinyconfig" and opts.package
    with pytest.raises(ValidationError):
        KernelOptions.model_validate({**PACKAGING, "base": "allyesconfig"})
    with pytest.raises(ValidationError):
        KernelOptions.model_validate({**PACKAGING, "make_deb": True})
    with pytest.raises(ValidationError):  # the maintainer always comes from the recipe
        KernelOptions.model_validate({})


def test_fragments_merge_in_list_order(tmp_path: Path) -> None:
    paths = []
    for i in reversed(range(12)):
        f = tmp_path / f"f{i}.config"
        f.write_text(f"CONFIG_LEVEL={i}\n")
        paths.append(f)
    files = {"fragments": tuple(paths), "baseconfig": tmp_path / "ignored"}
    frags = KernelStage()._fragments(_ctx(tmp_path, files))
    assert [p for p, _ in frags] == paths
    assert [s[0].value for _, s in frags] == [str(i) for i in reversed(range(12))]


def test_missing_or_bad_fragment_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fragment not found"):
        KernelStage()._fragments(_ctx(tmp_path, {"fragments": (tmp_path / "nope.config",)}))
    bad = tmp_path / "bad.config"
    bad.write_text("CONFIG_XEN=yes\n")
    with pytest.raises(InputError, match=r"bad.config:1: bad value 'yes'"):
        KernelStage()._fragments(_ctx(tmp_path, {"fragments": (bad,)}))


def test_tree_input_must_be_a_linux_tree(tmp_path: Path) -> None:
    (tmp_path / "tree-node" / "tree").mkdir(parents=True)
    with pytest.raises(StageFailed, match="is not a Linux source tree"):
        KernelStage().run(_ctx(tmp_path, {}))


# -- the persistent build dir of incremental builds ------------------------------------------


def _frag_ctx(tmp_path: Path, node: str = "kernel:dom0", **options: object) -> StageContext:
    frag = tmp_path / "dom0.config"
    frag.write_text("CONFIG_XEN=y\n")
    ctx = _ctx(tmp_path, {"fragments": (frag,)}, **options)
    ctx.node = node
    return ctx


def _root(ctx: StageContext) -> Path:
    stage = KernelStage()
    with stage._build_root(ctx, stage._fragments(ctx)) as root:
        return root


def test_not_incremental_builds_in_the_work_dir(tmp_path: Path) -> None:
    ctx = _frag_ctx(tmp_path, incremental=False)
    assert _root(ctx) == ctx.work


def test_one_persistent_dir_per_tree_and_kernel(tmp_path: Path) -> None:
    a = _root(_frag_ctx(tmp_path))
    assert a.parent == tmp_path / "cache" / "scratch" / "kbuild"
    assert a.name.startswith("kernel-dom0-")
    assert _root(_frag_ctx(tmp_path)) == a  # a fragment's content is not part of the key
    assert _root(_frag_ctx(tmp_path, node="kernel:guest")) != a
    assert not (a / ".xenforge-incomplete").exists()


def test_interrupted_build_dir_is_wiped_but_refused_config_is_kept(tmp_path: Path) -> None:
    stage = KernelStage()
    ctx = _frag_ctx(tmp_path)
    frags = stage._fragments(ctx)
    with pytest.raises(StageFailed), stage._build_root(ctx, frags) as root:
        (root / "objects").write_text("kept")
        raise StageFailed("kernel:dom0", "an option was dropped")
    assert (root / "objects").exists() and not (root / ".xenforge-incomplete").exists()
    with pytest.raises(RuntimeError), stage._build_root(ctx, frags) as root:
        raise RuntimeError("compiler crashed")
    assert (root / ".xenforge-incomplete").exists()
    with stage._build_root(ctx, frags) as again:
        assert again == root and not (root / "objects").exists()


def test_busy_persistent_dir_falls_back_to_the_work_dir(tmp_path: Path) -> None:
    stage = KernelStage()
    ctx = _frag_ctx(tmp_path)
    frags = stage._fragments(ctx)
    with stage._build_root(ctx, frags) as first, stage._build_root(ctx, frags) as second:
        assert first != ctx.work and second == ctx.work
