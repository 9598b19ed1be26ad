"""The ``xen-debs`` stage: Debian packages of the hypervisor and the toolstack.

Inputs: ``hypervisor`` and ``toolstack`` (their outputs, read only).
Files: ``templates`` (optional): a copy of the packaging data folder to use instead of
``xenforge/templates/xen-debs`` (the planner should always pass it, so that editing the data
changes the node id).
Options: ``version`` (the spec's Xen version), ``source`` (where the source came from, e.g.
``apt:xen=4.17.5+72-g01140da4e8-1``), ``revision`` (``xenforge1``), ``lintian``.
Outputs: ``*.deb``, ``packages.json`` (name, version, file, sha256 and lintian warnings of
each package) and
``lintian.txt`` (every lintian finding; errors fail the stage, the warnings are listed).

What goes into which package, the relationships with Debian's own Xen packages, the
maintainer scripts and lintian overrides are data in ``xenforge/templates/xen-debs/``.

Package versions: ``<debian source version>+<revision>~<build id>``, e.g.
``4.17.5+72-g01140da4e8-1+xenforge1~0a1b2c3d4e5f`` for Debian's source package (a url or
path source gives ``4.17.5-0+xenforge1~<id>``). The build id is the one of the package's
input: the hypervisor package carries the id compiled into Xen (``xl info``: xen_extra
``.5+<id>``), the toolstack packages the toolstack node's id, so a package whose content
changed always gets a new version.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import yaml
from pydantic import Field, field_validator

from xenforge.core.data import data_dir
from xenforge.core.errors import InputError, XenforgeError
from xenforge.core.files import write_json_atomic
from xenforge.core.hashing import sha256_file
from xenforge.lib import debpkg
from xenforge.stages.base import Stage, StageContext, StageOptions
from xenforge.stages.xen_common import read_build_info

#: the packaging data; a node may bring its own copy as the file labelled "templates"
TEMPLATES = data_dir("templates") / "xen-debs"
INPUTS = ("hypervisor", "toolstack")
SOURCE_KINDS = ("apt", "deb", "url", "path")


class XenDebsOptions(StageOptions):
    version: str = Field("", description="the spec's Xen version ('': from the inputs)")
    source: str = Field(description="where the source came from: apt:NAME=VERSION, "
                        "deb:NAME=VERSION, url:URL or path:NAME")
    revision: str = Field("xenforge1", pattern=r"^[a-z][a-z0-9.]*$",
                          description="marks our packages in their version")
    lintian: bool = Field(True, description="run lintian (errors fail the stage)")
    package_version: str = Field("", description="the Debian upstream version the packages "
                                 "build on ('': an apt/deb source's, else the Xen version)")
    maintainer: str = Field(description="Maintainer of the packages, 'Name <address>'")
    distribution: str = Field(description="the changelog distribution (the target release)")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if value.partition(":")[0] not in SOURCE_KINDS:
            raise ValueError(f"source {value!r} must start with one of "
                             f"{', '.join(k + ':' for k in SOURCE_KINDS)}")
        return value


def base_version(source: str, xen_version: str) -> str:
    """The Debian version our packages build on: the Debian source package's version for
    an ``apt``/``deb`` source, else ``<xen version>-0``."""
    kind, _, value = source.partition(":")
    if kind in ("apt", "deb") and "=" in value:
        return value.split("=", 1)[1]
    return f"{xen_version}-0"


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` within one path part, ``**`` across parts (``**/`` also matches nothing)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(f"^{out}$")


def load_packages(tdir: Path) -> dict[str, Any]:
    path = tdir / "packages.yaml"
    try:
        data: dict[str, Any] = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the packaging data {path}: {exc}") from exc
    return data


def render(env: jinja2.Environment, value: Any, variables: dict[str, Any]) -> Any:
    """Render every string of a YAML value as a Jinja2 template."""
    if isinstance(value, str):
        return env.from_string(value).render(variables)
    if isinstance(value, list):
        return [render(env, v, variables) for v in value]
    if isinstance(value, dict):
        return {k: render(env, v, variables) for k, v in value.items()}
    return value


class XenDebsStage(Stage):
    name: ClassVar[str] = "xen-debs"
    described = True
    version: ClassVar[int] = 2
    Options: ClassVar[type[StageOptions]] = XenDebsOptions
    artifacts: ClassVar[tuple[str, ...]] = ("*.deb", "packages.json", "lintian.txt")
    buildroot: ClassVar[bool] = True  # dpkg-shlibdeps, dpkg-deb, lintian of the target
    tdir: Path = TEMPLATES

    def run(self, ctx: StageContext) -> None:
        opts: XenDebsOptions = ctx.options
        info = {label: read_build_info(ctx.input(label)) for label in INPUTS}
        xen_version = opts.version or str(info["hypervisor"]["version"])
        for label in INPUTS:
            if str(info[label]["version"]) != xen_version:
                raise InputError(f"the {label} input is Xen {info[label]['version']}, "
                                 f"not {xen_version}")
        base = (f"{opts.package_version}-0" if opts.package_version
                else base_version(opts.source, xen_version))
        versions = {label: f"{base}+{opts.revision}~{info[label]['build_id']}"
                    for label in INPUTS}
        for v in versions.values():
            if not debpkg.VERSION_RE.match(v):
                raise InputError(f"{v!r} is not a valid Debian version",
                                 hint=f"check the source {opts.source!r}")

        tdir = ctx.file("templates") or TEMPLATES
        self.tdir = tdir
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(tdir),
                                 undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                 autoescape=False)
        data = load_packages(tdir)
        common = {"series": ".".join(xen_version.split(".")[:2]), "xen_version": xen_version,
                  "source": opts.source, "maintainer": opts.maintainer,
                  "distribution": opts.distribution}

        src_root = ctx.work / "pkg"
        if src_root.exists():
            shutil.rmtree(src_root)
        (src_root / "debian").mkdir(parents=True)
        packages: list[dict[str, Any]] = []
        taken: set[str] = set()
        for raw in data["packages"]:
            label = self._input_of(raw)
            variables = {**common, "version": versions[label],
                         "build_id": info[label]["build_id"]}
            pkg = render(env, raw, variables)
            pkg.update(variables=variables, version=versions[label],
                       build_id=info[label]["build_id"], source=opts.source)
            for key in ("depends", "recommends", "suggests", "conflicts", "replaces",
                        "provides", "units"):
                pkg.setdefault(key, [])
            root = src_root / "debian" / pkg["name"]
            root.mkdir()
            self._install(ctx, env, pkg, root, taken)
            packages.append(pkg)

        changelog = env.get_template("changelog.j2").render(
            **common, version=f"{base}+{opts.revision}",
            hypervisor_build_id=info["hypervisor"]["build_id"],
            toolstack_build_id=info["toolstack"]["build_id"],
            patches=self._patches(ctx),
            date=email.utils.formatdate(ctx.epoch))
        (src_root / "debian" / "changelog").write_text(changelog)
        copyright_text = (tdir / "copyright").read_text()

        for pkg in packages:
            root = src_root / "debian" / pkg["name"]
            doc = root / "usr" / "share" / "doc" / pkg["name"]
            doc.mkdir(parents=True, exist_ok=True)
            (doc / "copyright").write_text(copyright_text)
            debpkg.gzip_n(changelog, doc / "changelog.Debian.gz")
            overrides = tdir / f"{pkg['name']}.lintian-overrides"
            if overrides.is_file():
                dest = root / "usr" / "share" / "lintian" / "overrides" / pkg["name"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(env.get_template(overrides.name).render(pkg["variables"]))
            debpkg.normalize(root, plain=pkg.get("plain", []))
            elves = debpkg.strip_elf(root, run=ctx.run) if pkg.get("strip") else []
            pkg["elves"] = elves
            pkg["shlibs"] = bool(elves)
            self._maintainer_scripts(env, tdir, pkg, root)
            shlibs = debpkg.shlibs_lines(root, pkg["name"], pkg["version"], run=ctx.run)
            if shlibs:
                (root / "DEBIAN" / "shlibs").write_text("\n".join(shlibs) + "\n")
                (root / "DEBIAN" / "triggers").write_text("activate-noawait ldconfig\n")

        control = env.get_template("control.j2").render(
            maintainer=opts.maintainer, homepage=data["homepage"], packages=packages)
        (src_root / "debian" / "control").write_text(control)

        for pkg in packages:
            root = src_root / "debian" / pkg["name"]
            debpkg.shlibdeps(src_root, pkg["name"], pkg["elves"], run=ctx.run)
            debpkg.write_control_files(root)
            debpkg.gencontrol(src_root, pkg["name"], pkg["version"], run=ctx.run)
            pkg["deb"] = debpkg.build_deb(root, ctx.out, run=ctx.run)
            ctx.note(f"built {pkg['deb'].name}")

        self._lintian(ctx, opts, tdir, packages)
        write_json_atomic(ctx.out / "packages.json", {"packages": [
            {"name": p["name"], "version": p["version"], "file": p["deb"].name,
             "sha256": sha256_file(p["deb"]), "build_id": p["build_id"],
             "lintian_warnings": p.get("lintian_warnings", [])}
            for p in packages], "source": opts.source, "xen_version": xen_version})

    def _input_of(self, pkg: dict[str, Any]) -> str:
        froms = {str(rule["from"]) for rule in pkg.get("install", []) if "from" in rule}
        if len(froms) != 1 or not froms <= set(INPUTS):
            raise XenforgeError(f"package {pkg.get('name')} in {self.tdir / 'packages.yaml'} "
                                f"must install from exactly one of {', '.join(INPUTS)}")
        return froms.pop()

    def _install(self, ctx: StageContext, env: jinja2.Environment, pkg: dict[str, Any],
                 root: Path, taken: set[str]) -> None:
        count = 0
        for rule in pkg.get("install", []):
            if "template" in rule:
                dest = root / rule["dst"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(env.get_template(rule["template"]).render(pkg["variables"]))
                count += 1
                continue
            base = ctx.input(rule["from"])
            if "src" in rule:
                src = base / rule["src"]
                if not src.exists():
                    if rule.get("optional"):
                        ctx.note(f"{pkg['name']}: {src.name} not built; left out")
                        continue
                    raise XenforgeError(f"{pkg['name']}: the {rule['from']} output has no "
                                        f"{rule['src']}")
                dest = root / rule["dst"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
                if str(rule.get("mode", "")) == "0644":
                    pkg.setdefault("plain", []).append(rule["dst"])
                elif "mode" in rule:
                    raise XenforgeError(f"{pkg['name']}: mode {rule['mode']!r} is not "
                                        "supported (only \"0644\")")
                count += 1
                continue
            top = base / rule.get("dir", "")
            wanted = glob_regex(rule["glob"])
            excluded = [glob_regex(x) for x in rule.get("exclude", [])]
            for p in debpkg.files_below(top):
                rel = p.relative_to(top).as_posix()
                if rel in taken or not wanted.match(rel) or any(x.match(rel) for x in excluded):
                    continue
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if p.is_symlink():
                    os.symlink(os.readlink(p), dest)
                else:
                    shutil.copy2(p, dest)
                taken.add(rel)
                count += 1
        if not count:
            raise XenforgeError(f"package {pkg['name']} would be empty",
                                hint=f"check its install rules in {self.tdir}/packages.yaml")
        ctx.note(f"{pkg['name']}: {count} file(s)")

    @staticmethod
    def _maintainer_scripts(env: jinja2.Environment, tdir: Path, pkg: dict[str, Any],
                            root: Path) -> None:
        debian = root / "DEBIAN"
        debian.mkdir(exist_ok=True)
        for script in ("preinst", "postinst", "prerm", "postrm"):
            name = f"{pkg['name']}.{script}"
            if (tdir / name).is_file():
                text = env.get_template(name).render(**pkg["variables"], units=pkg["units"])
                (debian / script).write_text(text)
                (debian / script).chmod(0o755)

    @staticmethod
    def _patches(ctx: StageContext) -> list[str]:
        """The patch names applied to the tree, if the hypervisor recorded them."""
        info = read_build_info(ctx.input("hypervisor"))
        return [str(p) for p in info.get("patches", [])]

    @staticmethod
    def _lintian(ctx: StageContext, opts: XenDebsOptions, tdir: Path,
                 packages: list[dict[str, Any]]) -> None:
        report_path = ctx.out / "lintian.txt"
        if not opts.lintian:
            report_path.write_text("lintian was not run (option lintian: false)\n")
            return
        errors: list[str] = []
        lines: list[str] = []
        for pkg in packages:
            ctx.note(f"lintian {pkg['deb'].name}")
            report = debpkg.lintian(pkg["deb"], run=ctx.run)
            lines.append(f"== {pkg['deb'].name}: {len(report.errors)} error(s), "
                         f"{len(report.warnings)} warning(s)")
            lines.extend(report.text.splitlines())
            ctx.note(f"lintian {pkg['deb'].name}:\n{report.text.rstrip()}")
            errors.extend(f"{pkg['name']}: {e}" for e in report.errors)
            pkg["lintian_warnings"] = report.warnings
            for w in report.warnings:
                ctx.note(f"lintian warning: {pkg['name']}: {w}")
        report_path.write_text("\n".join(lines) + "\n")
        if errors:
            raise XenforgeError(
                f"lintian found {len(errors)} error(s):\n  " + "\n  ".join(errors),
                hint=f"fix the packaging data in {tdir}, or add a documented override "
                     "there (<package>.lintian-overrides); the log has lintian's full report")
