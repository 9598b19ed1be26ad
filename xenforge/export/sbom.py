"""The SPDX 2.3 software bill of materials of an export (``sbom.spdx.json``): the pinned
sources with their checksums and origin, each patch applied to them, the Debian packages
xenforge built, every exported artifact, and the Debian packages inside each image and ISO
(read from the root filesystems' dpkg databases, with the licences their copyright files
declare), tied together by GENERATED_FROM, PATCH_APPLIED, CONTAINS and DESCRIBES.

The document is a function of the build (its timestamp is the build's SOURCE_DATE_EPOCH),
so two builds of the same recipe give the same SBOM. What it reads from a cached object's
files (a root filesystem's packages, a .deb's fields) is remembered in the cache's state
folder by the file's sha256 as the object's manifest records it, so that a rebuild with
everything cached does not read the images again (:class:`Facts`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from xenforge import __version__
from xenforge.build.executor import NodeResult
from xenforge.cache import Cache
from xenforge.cache.store import recorded_sha256
from xenforge.core import run as runner
from xenforge.core.hashing import sha256_file
from xenforge.lib.patches import read_series
from xenforge.plan.graph import Graph, Node

SBOM = "sbom.spdx.json"
NAMESPACE = "https://xenforge.invalid/spdx"

#: Debian copyright-format licence names -> SPDX identifiers (the common ones; others are
#: kept in the package's licence comment and declared NOASSERTION)
DEBIAN_TO_SPDX = {
    "GPL-1": "GPL-1.0-only", "GPL-1+": "GPL-1.0-or-later", "GPL-2": "GPL-2.0-only",
    "GPL-2+": "GPL-2.0-or-later", "GPL-3": "GPL-3.0-only", "GPL-3+": "GPL-3.0-or-later",
    "LGPL-2": "LGPL-2.0-only", "LGPL-2+": "LGPL-2.0-or-later", "LGPL-2.1": "LGPL-2.1-only",
    "LGPL-2.1+": "LGPL-2.1-or-later", "LGPL-3": "LGPL-3.0-only", "LGPL-3+": "LGPL-3.0-or-later",
    "AGPL-3": "AGPL-3.0-only", "AGPL-3+": "AGPL-3.0-or-later", "Expat": "MIT", "MIT": "MIT",
    "BSD-2-clause": "BSD-2-Clause", "BSD-3-clause": "BSD-3-Clause",
    "BSD-4-clause": "BSD-4-Clause", "ISC": "ISC", "Zlib": "Zlib", "zlib": "Zlib",
    "Apache-2.0": "Apache-2.0", "Apache-2": "Apache-2.0", "MPL-2.0": "MPL-2.0",
    "CC0-1.0": "CC0-1.0", "Artistic": "Artistic-1.0", "Artistic-2.0": "Artistic-2.0",
    "OpenSSL": "OpenSSL", "PSF-2": "PSF-2.0", "FTL": "FTL", "FSFULLR": "FSFULLR",
    "FSFAP": "FSFAP", "OpenLDAP-2.8": "OLDAP-2.8", "curl": "curl", "BSL-1.0": "BSL-1.0",
    "Unicode-DFS-2016": "Unicode-DFS-2016", "X11": "X11", "WTFPL": "WTFPL",
    "Python-2.0": "Python-2.0", "BSD-3-Clause": "BSD-3-Clause", "BSD-2-Clause": "BSD-2-Clause",
    "GFDL-1.2+": "GFDL-1.2-or-later", "GFDL-1.3+": "GFDL-1.3-or-later",
}


def spdx_id(*parts: str) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(parts)).strip("-")


@dataclass
class DebianPackage:
    name: str
    version: str
    arch: str
    source: str
    licenses: list[str]  # Debian's names, as in the copyright file

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, self.version, self.arch)


def _sha1(path: Path) -> str:
    h = hashlib.sha1()  # SPDX 2.3 requires a SHA1 of every file
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def deb_fields(deb: Path) -> dict[str, str]:
    """A .deb's name, version and architecture (its control fields)."""
    return dict(line.split(": ", 1) for line in runner.run(
        ["dpkg-deb", "-f", deb, "Package", "Version", "Architecture"],
        capture=True).stdout.splitlines() if ": " in line)


def dpkg_packages(ext4: Path) -> list[DebianPackage]:
    """The installed packages of a root filesystem image (its dpkg status) with the licences
    of their copyright files, read with debugfs (no mount)."""
    status = runner.run(["debugfs", "-R", "cat /var/lib/dpkg/status", ext4],
                        capture=True).stdout
    with tempfile.TemporaryDirectory(prefix="xenforge-sbom-") as tmp:
        runner.run(["debugfs", "-R", f"rdump /usr/share/doc {tmp}", ext4], capture=True)
        docs = Path(tmp) / "doc"
        out = []
        for para in status.split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", para, re.M))
            if "Package" not in fields or "installed" not in fields.get("Status", ""):
                continue
            name = fields["Package"]
            copyright_file = docs / name / "copyright"
            licenses: list[str] = []
            if copyright_file.is_file() and not copyright_file.is_symlink():
                text = copyright_file.read_text(errors="replace")
                for lic in re.findall(r"^License:[ \t]*(\S[^\n]*)$", text, re.M):
                    if lic.strip() not in licenses:
                        licenses.append(lic.strip())
            out.append(DebianPackage(name=name, version=fields.get("Version", ""),
                                     arch=fields.get("Architecture", ""),
                                     source=(fields.get("Source") or name).split()[0],
                                     licenses=licenses))
    return out


class Facts:
    """What the SBOM reads from the files of cached objects, remembered by content: a
    file's sha256 comes from its object's manifest (when the file is the one recorded);
    what was read from it is kept in ``<state>/sbom/<sha256>.<kind>.json``. Without a cache
    everything is read afresh."""

    def __init__(self, cache: Cache | None) -> None:
        self.cache = cache
        self._records: dict[str, dict[str, Any]] = {}
        self.folder = cache.state.root / "sbom" if cache is not None else None

    def sha256(self, res: NodeResult, path: Path) -> str:
        """The sha256 of ``path``, a file of ``res``'s object."""
        if self.cache is None or res.out is None:
            return sha256_file(path)
        if res.id not in self._records:
            manifest = self.cache.store.read_manifest(res.id) or {}
            files = manifest.get("files")
            self._records[res.id] = files if isinstance(files, dict) else {}
        try:
            rel = str(path.relative_to(res.out))
        except ValueError:
            return sha256_file(path)
        return recorded_sha256(path, self._records[res.id].get(rel))

    def read(self, res: NodeResult, path: Path, kind: str,
             compute: Callable[[], Any]) -> Any:
        """``compute()`` for the file ``path`` of ``res``'s object, or what it gave
        last time for the same bytes (JSON data)."""
        if self.folder is None:
            return compute()
        memo = self.folder / f"{self.sha256(res, path)}.{kind}.json"
        try:
            return json.loads(memo.read_text())
        except (OSError, ValueError):
            pass
        value = compute()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
            tmp.write_text(json.dumps(value))
            os.replace(tmp, memo)
        except OSError:
            pass  # only a speed-up
        return value


def package_records(ext4: Path) -> list[dict[str, Any]]:
    """:func:`dpkg_packages` as JSON data."""
    return [asdict(p) for p in dpkg_packages(ext4)]


def license_ref(name: str) -> str:
    """The SPDX reference of a Debian licence name without an SPDX identifier."""
    return "LicenseRef-Debian-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "x")


def license_expression(debian: Iterable[str]) -> str:
    """An SPDX expression for Debian licence names (each may be ``A or B``): SPDX
    identifiers where there are ones, ``LicenseRef-Debian-NAME`` for the others (see
    :func:`license_ref`), NOASSERTION without any."""
    terms = []
    for name in debian:
        alternatives = [a.strip() for a in re.split(r"\s+or\s+", name, flags=re.I)]
        mapped = [DEBIAN_TO_SPDX.get(a) or license_ref(a) for a in alternatives if a]
        if not mapped:
            continue
        expr = " OR ".join(dict.fromkeys(mapped))
        terms.append(f"({expr})" if len(set(mapped)) > 1 else expr)
    return " AND ".join(dict.fromkeys(terms)) if terms else "NOASSERTION"


def extracted_licenses(packages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The ``hasExtractedLicensingInfos`` the LicenseRefs of ``packages`` need."""
    refs = sorted({ref for p in packages for ref in re.findall(
        r"LicenseRef-Debian-[A-Za-z0-9.-]+", p.get("licenseDeclared", ""))})
    return [{"licenseId": ref, "name": ref.removeprefix("LicenseRef-Debian-"),
             "extractedText": "A licence Debian names "
             f"{ref.removeprefix('LicenseRef-Debian-')!r} in the package's "
             "/usr/share/doc/PACKAGE/copyright (its text is there)"} for ref in refs]


class Builder:
    def __init__(self, graph: Graph, results: dict[str, NodeResult], epoch: int,
                 facts: Facts | None = None) -> None:
        self.facts = facts or Facts(None)
        self.graph = graph
        self.results = results
        self.epoch = epoch
        self.packages: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.relationships: list[dict[str, str]] = []
        self._ids: set[str] = set()

    def element_ids(self) -> set[str]:
        return {p["SPDXID"] for p in self.packages} | {f["SPDXID"] for f in self.files}

    def relate(self, a: str, kind: str, b: str) -> None:
        rel = {"spdxElementId": a, "relationshipType": kind, "relatedSpdxElement": b}
        if rel not in self.relationships:
            self.relationships.append(rel)

    def package(self, ident: str, **fields: Any) -> str:
        if ident not in self._ids:
            self._ids.add(ident)
            self.packages.append({"SPDXID": ident, "downloadLocation": "NOASSERTION",
                                  "filesAnalyzed": False, **fields})
        return ident

    def out(self, node: Node) -> Path | None:
        res = self.results.get(node.name)
        return res.out if res is not None and res.out is not None else None

    def upstream_sources(self, name: str) -> list[str]:
        return [n for n in self.graph.upstream(name)
                if self.graph.nodes[n].stage == "source"]

    # -- the parts -------------------------------------------------------------------
    def sources(self) -> None:
        for node in self.graph.nodes.values():
            out = self.out(node)
            if node.stage != "source" or out is None:
                continue
            info = json.loads((out / "source.json").read_text())
            primary = next((f for f in info.get("files", [])
                            if f.get("name") == info.get("primary")), None)
            extra: dict[str, Any] = {}
            if info.get("package"):  # from a Debian package (binary or source)
                extra["versionInfo"] = str(info.get("version", ""))
                extra["externalRefs"] = [{
                    "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                    "referenceLocator": f"pkg:deb/debian/{info['package']}@"
                    f"{info.get('version', '')}" + ("?arch=all" if info.get("deb") else "")}]
                if info.get("deb_file"):
                    extra["sourceInfo"] = (f"{info.get('member', '')} of {info['deb_file']} "
                                           f"(sha256 {info.get('deb_sha256', '?')})")
            self.package(
                spdx_id("Source", node.name), name=node.name.split(":", 1)[-1],
                downloadLocation=info.get("url") or "NOASSERTION",
                packageFileName=info.get("primary") or "",
                checksums=[{"algorithm": "SHA256", "checksumValue": f["sha256"]}
                           for f in ([primary] if primary else info.get("files", []))
                           if f.get("sha256")],
                primaryPackagePurpose="SOURCE",
                comment=f"pinned source ({info.get('kind', '?')}), node {node.name} "
                        f"{node.id}", **extra)
        for node in self.graph.nodes.values():  # the patches applied to each source
            folder = node.files.get("patches")
            if node.stage != "tree" or not isinstance(folder, Path) or not folder.is_dir():
                continue
            for entry in read_series(folder):  # the series the node's id hashed
                path = folder / entry.name
                if not path.is_file():
                    continue
                ident = spdx_id("Patch", node.name, entry.name)
                if ident not in self._ids:
                    self._ids.add(ident)
                    self.files.append({
                        "SPDXID": ident, "fileName": f"./{entry.name}",
                        "checksums": [{"algorithm": "SHA1", "checksumValue": _sha1(path)},
                                      {"algorithm": "SHA256",
                                       "checksumValue": sha256_file(path)}],
                        "fileTypes": ["TEXT"], "licenseConcluded": "NOASSERTION",
                        "copyrightText": "NOASSERTION", "comment": f"applied to {node.name}"})
                for src in self.upstream_sources(node.name):
                    self.relate(ident, "PATCH_APPLIED", spdx_id("Source", src))

    def built_debs(self) -> dict[tuple[str, str], str]:
        """The .debs xenforge built: (name, version) -> SPDX id."""
        made: dict[tuple[str, str], str] = {}
        for node in self.graph.nodes.values():
            out, res = self.out(node), self.results.get(node.name)
            if out is None or res is None or node.stage not in ("xen-debs", "kernel"):
                continue
            for deb in sorted(out.glob("*.deb")):
                fields = self.facts.read(res, deb, "deb-fields", partial(deb_fields, deb))
                ident = self.package(
                    spdx_id("Deb", fields["Package"], fields["Version"]),
                    name=fields["Package"], versionInfo=fields["Version"],
                    packageFileName=deb.name, supplier="Organization: xenforge build",
                    checksums=[{"algorithm": "SHA256",
                                "checksumValue": self.facts.sha256(res, deb)}],
                    primaryPackagePurpose="INSTALL",
                    comment=f"built by node {node.name} {node.id}")
                made[(fields["Package"], fields["Version"])] = ident
                for src in self.upstream_sources(node.name):
                    self.relate(ident, "GENERATED_FROM", spdx_id("Source", src))
        return made

    def image_contents(self, built: dict[tuple[str, str], str], release: str
                       ) -> dict[str, list[str]]:
        """Each root filesystem node -> the SPDX ids of the packages installed in it."""
        contents: dict[str, list[str]] = {}
        for node in self.graph.nodes.values():
            out, res = self.out(node), self.results.get(node.name)
            if out is None or res is None or node.stage != "rootfs":
                continue
            ids = []
            for ext4 in sorted(out.glob("*.ext4")):
                found = self.facts.read(res, ext4, "dpkg", partial(package_records, ext4))
                for pkg in (DebianPackage(**p) for p in found):
                    ident = built.get((pkg.name, pkg.version))
                    if ident is None:
                        purl = (f"pkg:deb/debian/{pkg.name}@{pkg.version}?arch={pkg.arch}"
                                f"&distro={release}")
                        ident = self.package(
                            spdx_id("Debian", *pkg.key), name=pkg.name,
                            versionInfo=pkg.version, supplier="Organization: Debian",
                            sourceInfo=f"Debian source package {pkg.source}",
                            licenseDeclared=license_expression(pkg.licenses),
                            licenseConcluded="NOASSERTION",
                            licenseComments="Debian copyright file: "
                            + (", ".join(pkg.licenses) or "none"),
                            externalRefs=[{"referenceCategory": "PACKAGE-MANAGER",
                                           "referenceType": "purl",
                                           "referenceLocator": purl}],
                            primaryPackagePurpose="LIBRARY")
                    ids.append(ident)
            contents[node.name] = ids
        return contents

    def listed_packages(self, node: Node, release: str) -> list[str]:
        """The dom0 packages an image's info file lists (names and versions only)."""
        out = self.out(node)
        info: dict[str, Any] = next(
            (json.loads(p.read_text()) for p in sorted(out.glob("*-info.json"))),
            {}) if out is not None else {}
        ids = []
        for name, version in sorted((info.get("packages") or {}).items()):
            purl = f"pkg:deb/debian/{name}@{version}?distro={release}"
            ids.append(self.package(
                spdx_id("Debian", name, version), name=name, versionInfo=version,
                supplier="Organization: Debian", licenseDeclared="NOASSERTION",
                licenseConcluded="NOASSERTION",
                licenseComments="from the image's package list (its root filesystem was "
                "not at hand)",
                externalRefs=[{"referenceCategory": "PACKAGE-MANAGER",
                               "referenceType": "purl", "referenceLocator": purl}],
                primaryPackagePurpose="LIBRARY"))
        return ids

    def artifacts(self, artifacts: list[Any], export_dir: Path,
                  contents: dict[str, list[str]], release: str) -> list[str]:
        described = []
        for a in artifacts:
            node = self.graph.nodes[a.node]
            ident = self.package(
                spdx_id("Artifact", a.path.as_posix()), name=a.path.as_posix(),
                packageFileName=a.path.as_posix(),
                checksums=[{"algorithm": "SHA256", "checksumValue": a.sha256}],
                primaryPackagePurpose={"disk": "OPERATING-SYSTEM", "iso": "OPERATING-SYSTEM",
                                       "rootfs": "OPERATING-SYSTEM"}.get(node.stage, "FILE"),
                comment=f"made by node {node.name} {node.id} (stage {node.stage} "
                        f"v{node.version})")
            described.append(ident)
            for src in self.upstream_sources(node.name):
                self.relate(ident, "GENERATED_FROM", spdx_id("Source", src))
            if a.path.suffix in (".raw", ".qcow2", ".iso", ".ext4"):
                ups = [u for u in sorted(self.graph.upstream(node.name))
                       if self.graph.nodes[u].stage == "rootfs"]
                if all(u in contents for u in ups):
                    inside = [pkg for u in ups for pkg in contents[u]]
                else:  # the root filesystems are not here (a CI release job fetched only
                    inside = self.listed_packages(node, release)  # the exports): the info
                for pkg in inside:
                    self.relate(ident, "CONTAINS", pkg)
        return described


def write_sbom(dest: Path, graph: Graph, results: dict[str, NodeResult],
               artifacts: list[Any], *, recipe: str, epoch: int, release: str,
               cache: Cache | None = None) -> Path:
    """Write the export's SBOM to ``dest`` (the export dir) and return its path; with the
    ``cache`` the results' objects are in, what it read before is not read again."""
    b = Builder(graph, results, epoch, Facts(cache))
    b.sources()
    built = b.built_debs()
    contents = b.image_contents(built, release)
    described = b.artifacts(artifacts, dest, contents, release) or [  # else the sources
        p["SPDXID"] for p in b.packages if p["SPDXID"].startswith("SPDXRef-Source-")]
    ids = "-".join(sorted(n.id[:12] for n in graph.nodes.values()))
    namespace = f"{NAMESPACE}/{recipe}-{hashlib.sha256(ids.encode()).hexdigest()[:32]}"
    doc = {
        "spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"xenforge build of {recipe}", "documentNamespace": namespace,
        "creationInfo": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)),
                         "creators": [f"Tool: xenforge-{__version__}"]},
        "packages": b.packages, "files": b.files,
        "hasExtractedLicensingInfos": extracted_licenses(b.packages),
        "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT",
                           "relationshipType": "DESCRIBES", "relatedSpdxElement": d}
                          for d in described] + [
            r for r in b.relationships  # only between elements the document has
            if {r["spdxElementId"], r["relatedSpdxElement"]} <= b.element_ids()],
    }
    path = dest / SBOM
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path
