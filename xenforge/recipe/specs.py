"""Data files a recipe points at: Xen build specs (hypervisor/) and kernel lines
(kernel_patches/<line>/line.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from xenforge.recipe.types import DirPath, FilePath, Model, Name, Released
from xenforge.sources.specs import SourceSpec


class ToolstackSpec(Model):
    configure: list[str] = Field(default_factory=list,
                                 description="arguments for Xen's ./configure")


class HypervisorSpec(Model):
    """``hypervisor/<name>.yaml``: how to build one Xen version."""

    schema_: Literal[1] = Field(alias="schema")
    name: Name
    version: str = Field(description="upstream Xen version, e.g. 4.17.5")
    source: SourceSpec
    patches: DirPath | None = Field(None, description="folder with a quilt `series`")
    config: list[FilePath] = Field(default_factory=list, description="Kconfig fragments")
    released: Released | None = Field(None, description="date of the pinned source (its "
                                      "Debian changelog entry): the build's SOURCE_DATE_EPOCH")
    toolstack: ToolstackSpec = Field(default_factory=ToolstackSpec)


class KernelLine(Model):
    """``kernel_patches/<line>/line.yaml``: a kernel source with its patches and fragments."""

    schema_: Literal[1] = Field(alias="schema")
    name: Name
    source: SourceSpec
    patches: DirPath | None = Field(None, description="folder with a quilt `series`")
    fragments: dict[Name, FilePath] = Field(default_factory=dict,
                                            description="named Kconfig fragments")
    released: Released | None = Field(None, description="date of the pinned source (its "
                                      "Debian changelog entry): the build's SOURCE_DATE_EPOCH")
