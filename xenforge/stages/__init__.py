"""The stage registry: stage name -> class. Modules are imported on first use."""

from __future__ import annotations

import importlib

from xenforge.stages.base import Stage

#: stage name -> "module:Class" (add a line here when you add a stage)
REGISTRY: dict[str, str] = {
    "source": "xenforge.stages.source:SourceStage",
    "buildroot": "xenforge.stages.buildroot:BuildrootStage",
    "tree": "xenforge.stages.tree:TreeStage",
    "hypervisor": "xenforge.stages.hypervisor:HypervisorStage",
    "toolstack": "xenforge.stages.toolstack:ToolstackStage",
    "xen-debs": "xenforge.stages.xen_debs:XenDebsStage",
    "kernel": "xenforge.stages.kernel:KernelStage",
    "apt-repo": "xenforge.stages.apt_repo:AptRepoStage",
    "rootfs": "xenforge.stages.rootfs:RootfsStage",
    "disk": "xenforge.stages.disk:DiskStage",
    "iso": "xenforge.stages.iso:IsoStage",
}


def get_stage(name: str) -> type[Stage]:
    target = REGISTRY[name]
    module, _, cls = target.partition(":")
    stage: type[Stage] = getattr(importlib.import_module(module), cls)
    return stage
