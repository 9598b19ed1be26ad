"""The ``apt-repo`` stage: a local APT repository of the packages other stages built.

Inputs: ``debs`` - a list of nodes whose output holds ``*.deb`` files (xen-debs, kernel).
Output ``repo/``: a flat repository (``deb [trusted=yes] file:<dir> ./``) with the ``.deb``
files (hard links to the inputs' files where possible), ``Packages``, ``Packages.gz`` and a
``Release`` whose ``Origin`` lets images pin it; and ``repo.json`` listing every package
(name, version, architecture, file, sha256, the input it came from).

The repository is unsigned: it is only ever read on the build host, by the image stage, and
the image's apt uses it as ``trusted=yes`` during the build (see the ``xenforge-apt-repo``
element). Images install every package in their repository, so the planner gives each image
its own repository with exactly the packages it needs; debug, development and header
packages are left out (``exclude``).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from xenforge.core.errors import StageFailed
from xenforge.core.hashing import sha256_file
from xenforge.stages.base import Stage, StageContext, StageOptions

DEFAULT_EXCLUDE = ("*-dbg", "*-dbgsym", "*-dev", "linux-headers-*", "linux-libc-dev")


class AptRepoOptions(StageOptions):
    origin: str = Field("xenforge", pattern=r"^[A-Za-z0-9._-]+$",
                        description="Origin/Label of the Release file (images pin on it)")
    exclude: tuple[str, ...] = Field(DEFAULT_EXCLUDE,
                                     description="package name globs left out of the repo")


def deb_fields(deb: Path, ctx: StageContext) -> dict[str, str]:
    res = ctx.run(["dpkg-deb", "--show", "--showformat",
                   "${Package}\\t${Version}\\t${Architecture}", deb], capture=True)
    name, version, arch = res.stdout.strip().split("\t")
    return {"name": name, "version": version, "architecture": arch}


def release_text(files: dict[str, bytes], origin: str, epoch: int) -> str:
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(epoch))
    lines = [f"Origin: {origin}", f"Label: {origin}", f"Suite: {origin}",
             f"Codename: {origin}", f"Date: {date}", "Architectures: amd64 all",
             "Description: packages built by xenforge"]
    for field, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{field}:")
        for name, data in sorted(files.items()):
            lines.append(f" {algo(data).hexdigest()} {len(data)} {name}")
    return "\n".join(lines) + "\n"


class AptRepoStage(Stage):
    name: ClassVar[str] = "apt-repo"
    version: ClassVar[int] = 1
    Options: ClassVar[type[StageOptions]] = AptRepoOptions
    artifacts: ClassVar[tuple[str, ...]] = ()

    def run(self, ctx: StageContext) -> None:
        opts: AptRepoOptions = ctx.options
        repo = ctx.out / "repo"
        repo.mkdir(parents=True)
        packages: list[dict[str, Any]] = []
        seen: dict[tuple[str, str, str], dict[str, Any]] = {}
        for i, source in enumerate(ctx.input_list("debs")):
            label = f"debs[{i}]"
            debs = sorted(source.rglob("*.deb"))
            if not debs:
                raise StageFailed(ctx.node, f"input {label} ({source}) has no .deb "
                                  "files", log=ctx.log,
                                  hint="inputs of apt-repo must be package-producing nodes")
            for deb in debs:
                info = deb_fields(deb, ctx)
                if any(fnmatch.fnmatchcase(info["name"], pat) for pat in opts.exclude):
                    ctx.note(f"apt-repo: leaving out {deb.name} (excluded)")
                    continue
                digest = sha256_file(deb)
                key = (info["name"], info["version"], info["architecture"])
                if key in seen:
                    if seen[key]["sha256"] != digest:
                        raise StageFailed(
                            ctx.node, f"two different files claim to be {'_'.join(key)}: "
                            f"{seen[key]['input']} and {label}", log=ctx.log,
                            hint="give the packages distinct versions (or leave one out)")
                    continue
                target = repo / deb.name
                if target.exists():
                    raise StageFailed(ctx.node, f"two inputs have a file named {deb.name}",
                                      log=ctx.log)
                try:
                    os.link(deb, target)
                except OSError:
                    shutil.copyfile(deb, target)
                entry = {**info, "file": deb.name, "sha256": digest, "input": label}
                seen[key] = entry
                packages.append(entry)
        if not packages:
            raise StageFailed(ctx.node, "no packages left for the repository", log=ctx.log,
                              hint=f"check the exclude patterns: {', '.join(opts.exclude)}")
        res = ctx.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture=True)
        index = res.stdout.encode()
        (repo / "Packages").write_bytes(index)
        gz = gzip.compress(index, mtime=0)
        (repo / "Packages.gz").write_bytes(gz)
        (repo / "Release").write_text(
            release_text({"Packages": index, "Packages.gz": gz}, opts.origin, ctx.epoch))
        (ctx.out / "repo.json").write_text(json.dumps(
            {"origin": opts.origin, "packages": packages}, indent=2, sort_keys=True))
        ctx.note("apt-repo: " + ", ".join(f"{p['name']}={p['version']}" for p in packages))

