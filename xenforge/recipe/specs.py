"""Data files a recipe points at: Xen build specs (hypervisor/), kernel lines
(kernel_patches/<line>/line.yaml) and target releases (releases/)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from xenforge.lib.xenconfigure import check_configure_flag
from xenforge.recipe.types import FilePath, MirrorUrl, Model, Name, Released, SeriesDir
from xenforge.sources.specs import SourceSpec

#: an argument for Xen's ./configure, checked by the rule the toolstack stage applies
ConfigureFlag = Annotated[str, AfterValidator(check_configure_flag)]


class ToolstackSpec(Model):
    configure: list[ConfigureFlag] = Field(default_factory=list,
                                           description="arguments for Xen's ./configure")


class HypervisorSpec(Model):
    """``hypervisor/<name>.yaml``: how to build one Xen version."""

    schema_: Literal[1] = Field(alias="schema")
    name: Name
    version: str = Field(description="upstream Xen version, e.g. 4.17.5")
    source: SourceSpec
    patches: SeriesDir | None = Field(None, description="folder with a quilt `series`")
    config: list[FilePath] = Field(default_factory=list, description="Kconfig fragments")
    released: Released | None = Field(None, description="date of the pinned source (its "
                                      "Debian changelog entry): the build's SOURCE_DATE_EPOCH")
    package_version: str | None = Field(
        None, pattern=r"^[0-9][A-Za-z0-9.+~-]*$",
        description="the Debian upstream version the .debs build on (default: an apt "
        "source's version, else `version`)")
    toolstack: ToolstackSpec = Field(default_factory=ToolstackSpec)


class BuildrootSpec(Model):
    packages: list[str] = Field(min_length=1, description="Debian packages the compile and "
                                "packaging stages need (installed into the buildroot)")


class ReleaseSpec(Model):
    """``releases/<distribution>-<release>.yaml``: a target distribution release."""

    schema_: Literal[1] = Field(alias="schema")
    distribution: Literal["debian"]
    release: Name = Field(description="the codename, e.g. trixie")
    version: str = Field(description="e.g. 13")
    mirror: MirrorUrl
    security_mirror: MirrorUrl
    security_suite: Name
    buildroot: BuildrootSpec


class KernelLine(Model):
    """``kernel_patches/<line>/line.yaml``: a kernel source with its patches and fragments."""

    schema_: Literal[1] = Field(alias="schema")
    name: Name
    source: SourceSpec
    patches: SeriesDir | None = Field(None, description="folder with a quilt `series`")
    fragments: dict[Name, FilePath] = Field(default_factory=dict,
                                            description="named Kconfig fragments")
    released: Released | None = Field(None, description="date of the pinned source (its "
                                      "Debian changelog entry): the build's SOURCE_DATE_EPOCH")
