"""Pinned source specs: what a source is (pure data, no I/O but hashing a local path).
Fetching them is :mod:`xenforge.sources.fetch`.

A source spec is exactly one of

- ``url`` + ``sha256``: a file over HTTP(S), streamed to a temp file, verified, then stored;
- ``apt: name=version``: a Debian source package (``apt-get source --download-only``), every
  file verified against the ``.dsc``'s ``Checksums-Sha256`` (see :mod:`xenforge.sources.debian`);
- ``deb: name=version`` + ``member``: one file inside a pinned Debian binary package;
- ``path``: a local file or folder, identified by its content hash.

Downloads are kept in a content-addressed store (``<downloads>/sha256/<hash>``), so a second
fetch of the same pinned source needs no network. Nothing is ever moved into the store before
it verified; in-flight files are ``.part-*``/``.tmp-*`` names that no reader trusts.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from xenforge.core.errors import InputError
from xenforge.core.hashing import tree_hash
from xenforge.core.model import FrozenModel
from xenforge.core.paths import path_kind
from xenforge.sources.pathcheck import source_problem

KINDS = ("url", "apt", "deb", "path")
SOURCE_JSON = "source.json"

# ---------------------------------------------------------------------------------------------
# spec models
# ---------------------------------------------------------------------------------------------

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Debian policy 5.6.1 (package names) and 5.6.12 (versions: [epoch:]upstream[-revision])
_PKG = r"[a-z0-9][a-z0-9+.-]+"
_VERSION = r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*(?::[A-Za-z0-9.+~-]+)?"
_PINNED = re.compile(rf"^({_PKG})=({_VERSION})$")


def _sha256_value(value: Any) -> Any:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "sha256_format", "sha256 must be a string of 64 hex digits, got {got}",
            {"got": type(value).__name__, "hint": "quote it in YAML: sha256: \"...\""})
    if _HEX64.fullmatch(value):
        return value
    if _HEX64.fullmatch(value.lower()):
        raise PydanticCustomError(
            "sha256_format", "sha256 must be lower case hex: {value}",
            {"value": value, "hint": f"write it as {value.lower()}"})
    raise PydanticCustomError(
        "sha256_format",
        "sha256 must be exactly 64 lower case hex digits (0-9a-f); got {length} characters: "
        "'{value}'",
        {"value": value, "length": len(value),
         "hint": "compute it with `sha256sum FILE` and paste the first column"})


#: a SHA-256 digest: 64 lower case hex digits
Sha256 = Annotated[str, BeforeValidator(_sha256_value)]


def _pinned(value: Any, field: str, example: str) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("source_pin", "{field} must be a string name=version",
                                  {"field": field, "hint": f"e.g. {field}: {example}"})
    if _PINNED.fullmatch(value):
        return value
    name = value.split("=", 1)[0].strip()
    if "=" not in value or not value.split("=", 1)[1]:
        lookup = "apt-cache showsrc" if field == "apt" else "apt-cache madison"
        raise PydanticCustomError(
            "source_not_pinned",
            "{field} source '{value}' is not pinned to a version: write name=version",
            {"field": field, "value": value,
             "hint": f"e.g. {field}: {example}; `{lookup} {name or 'NAME'}` lists the "
                     "versions apt knows"})
    raise PydanticCustomError(
        "source_pin", "'{value}' is not a Debian name=version",
        {"value": value, "hint": f"e.g. {field}: {example} (lower case package name, "
                                 "a version starting with a digit)"})


class _Source(FrozenModel):
    kind: ClassVar[str]

    def identity(self) -> dict[str, Any]:
        """What the fetched content depends on, as JSON data (for node ids)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class UrlSource(_Source):
    """A file over HTTP(S), pinned by its SHA-256."""

    kind: ClassVar[str] = "url"
    url: str = Field(description="http:// or https:// address of the file")
    sha256: Sha256 = Field(description="SHA-256 of the file (64 lower case hex digits)")
    filename: str | None = Field(None, description="name to store it under "
                                                   "(default: the URL's last path part)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        bad = sorted({c for c in value if c.isspace() or not c.isprintable()})
        if bad:  # (urlsplit drops a newline or tab, and would let one through to the logs)
            raise PydanticCustomError(
                "source_url", "url holds {chars}: {value}",
                {"chars": " ".join(repr(c) for c in bad), "value": repr(value)[:100],
                 "hint": "percent-encode it (a space is %20)"})
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PydanticCustomError(
                "source_url", "url must be an http:// or https:// address, got '{value}'",
                {"value": value, "hint": "for a file on this machine use `path:` instead"})
        return value

    @field_validator("filename")
    @classmethod
    def _filename(cls, value: str | None) -> str | None:
        if value is not None:
            _check_file_name(value, "filename")
        return value

    @model_validator(mode="after")
    def _named(self) -> UrlSource:
        """Without ``filename`` the URL's last path part names the file: one that is no file
        name (``https://host/``, ``..%2Fx``) is an error of the spec, found when it is read
        rather than when a build plans it."""
        if self.filename is None:
            _check_file_name(_url_file_name(self.url), "url")
        return self

    def target_name(self) -> str:
        if self.filename:
            return self.filename
        name = _url_file_name(self.url)
        try:
            return _check_file_name(name, "url")
        except PydanticCustomError as exc:
            raise InputError(f"cannot take a file name from the URL {self.url}",
                             hint="add `filename:` to the source") from exc

    def identity(self) -> dict[str, Any]:
        # the address is not part of the identity: the same bytes from a mirror are the same
        return {"kind": self.kind, "sha256": self.sha256, "filename": self.target_name()}

    def describe(self) -> str:
        return self.url


class AptSource(_Source):
    """A Debian source package, pinned to a version (``apt: xen=4.17.5+72-g01140da4e8-1``)."""

    kind: ClassVar[str] = "apt"
    apt: str = Field(description="source (or binary) package and version: name=version")
    dsc_sha256: Sha256 | None = Field(None, description="SHA-256 of the .dsc (optional pin)")

    @field_validator("apt", mode="before")
    @classmethod
    def _apt(cls, value: Any) -> str:
        return _pinned(value, "apt", "hello=2.10-3")

    @property
    def package(self) -> str:
        return self.apt.split("=", 1)[0]

    @property
    def version(self) -> str:
        return self.apt.split("=", 1)[1]

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "apt": self.apt, "dsc_sha256": self.dsc_sha256}

    def describe(self) -> str:
        return f"apt source {self.apt}"


class DebSource(_Source):
    """One file inside a pinned Debian binary package."""

    kind: ClassVar[str] = "deb"
    deb: str = Field(description="binary package and version: name=version")
    member: str = Field(description="path of the file inside the package, "
                                    "e.g. usr/src/linux-source-6.1.tar.xz")
    sha256: Sha256 | None = Field(None, description="SHA-256 of the member (optional pin)")

    @field_validator("deb", mode="before")
    @classmethod
    def _deb(cls, value: Any) -> str:
        return _pinned(value, "deb", "linux-source-6.1=6.1.176-1")

    @field_validator("member")
    @classmethod
    def _member(cls, value: str) -> str:
        norm = value.removeprefix("./")
        parts = norm.split("/")
        if not norm or norm.startswith("/") or ".." in parts or "" in parts or \
                not norm.isprintable():
            raise PydanticCustomError(
                "source_member", "member must be a relative path inside the package, "
                "got {value}",
                {"value": repr(value), "hint": "e.g. usr/src/linux-source-6.1.tar.xz "
                                         "(`dpkg-deb -c FILE.deb` lists the paths)"})
        return norm

    @property
    def package(self) -> str:
        return self.deb.split("=", 1)[0]

    @property
    def version(self) -> str:
        return self.deb.split("=", 1)[1]

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "deb": self.deb, "member": self.member,
                "sha256": self.sha256}

    def describe(self) -> str:
        return f"{self.member} from Debian package {self.deb}"


class PathSource(_Source):
    """A local file or folder; relative paths are relative to the file that names them."""

    kind: ClassVar[str] = "path"
    path: Path = Field(description="a file or folder; relative to the recipe's folder")

    @field_validator("path", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str | os.PathLike):
            return value  # pydantic reports the type error
        p = Path(value)
        base: Path | None = None
        if not p.is_absolute():
            # a string from the recipe loader knows the YAML file it came from
            located = getattr(value, "file", None)
            if isinstance(located, Path):
                base = located.parent
            elif isinstance(info.context, dict) and info.context.get("base") is not None:
                base = Path(info.context["base"])
            else:
                base = Path.cwd()
            p = base / p
        p = Path(os.path.normpath(p))
        kind = path_kind(p)
        if kind is None:
            where = f" (relative paths are resolved against {base})" if base else ""
            raise PydanticCustomError(
                "source_path_missing", "no such file or directory: {path}{where}",
                {"path": str(p), "where": where,
                 "hint": "check the spelling; relative paths are relative to the file "
                         "that names them"})
        if kind == "special":  # hashing /dev/zero or a FIFO would never end
            raise PydanticCustomError(
                "source_path_special", "{path} is a device, FIFO or socket, not a file or "
                "folder", {"path": str(p), "hint": "name a source file or folder"})
        wrong = source_problem(p)  # /, /proc, a FIFO inside, names that cannot be hashed
        if wrong is not None:
            raise PydanticCustomError("source_path_tree", "{message}",
                                      {"message": wrong[0], "hint": wrong[1]})
        return p

    def identity(self) -> dict[str, Any]:
        # content, not location: the same tree elsewhere (another checkout) is the same input
        return {"kind": self.kind, "name": self.path.name,
                "type": "dir" if self.path.is_dir() else "file",
                "sha256": tree_hash(self.path)}

    def describe(self) -> str:
        return str(self.path)


def _source_tag(value: Any) -> str | None:
    if isinstance(value, _Source):
        return type(value).__name__
    if isinstance(value, dict):
        present = [k for k in KINDS if k in value]
        if len(present) == 1:
            return _TAGS[present[0]]
    return None


_TAGS = {"url": "UrlSource", "apt": "AptSource", "deb": "DebSource", "path": "PathSource"}
_ONE_OF = "a source needs exactly one of url, apt, deb, path"
_ONE_OF_HINT = ("e.g. {url: https://..., sha256: ...}, {apt: name=version}, "
                "{deb: name=version, member: usr/...}, or {path: ../src}")

#: a source spec: the member is chosen by which of url/apt/deb/path is present
SourceSpec = Annotated[
    Annotated[UrlSource, Tag("UrlSource")]
    | Annotated[AptSource, Tag("AptSource")]
    | Annotated[DebSource, Tag("DebSource")]
    | Annotated[PathSource, Tag("PathSource")],
    Discriminator(_source_tag, custom_error_type="source_kind",
                  custom_error_message=_ONE_OF),
]

_ADAPTER: TypeAdapter[SourceSpec] = TypeAdapter(SourceSpec)


def parse_source(data: Any, base: Path | None = None) -> SourceSpec:
    """Validate one source spec (relative paths against ``base``); raise InputError."""
    if isinstance(data, dict):
        present = [k for k in KINDS if k in data]
        if len(present) != 1:
            found = f" (found {', '.join(present)})" if present else ""
            raise InputError(_ONE_OF + found, hint=_ONE_OF_HINT)
    try:
        return _ADAPTER.validate_python(data, context={"base": base} if base else None)
    except ValidationError as exc:
        lines, hints = [], []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if p not in _TAGS.values())
            lines.append(f"{loc}: {err['msg']}" if loc else err["msg"])
            hint = (err.get("ctx") or {}).get("hint")
            if hint:
                hints.append(str(hint))
        raise InputError("invalid source: " + "; ".join(lines), hint="; ".join(hints)) from exc


def identity(spec: SourceSpec) -> dict[str, Any]:
    """The spec's identity for node ids (JSON data; a path source includes its content hash)."""
    return spec.identity()


def _url_file_name(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def _check_file_name(name: str, field: str) -> str:
    if not name or "/" in name or name in (".", "..", SOURCE_JSON) or not name.isprintable() \
            or len(name.encode("utf-8", "surrogatepass")) > 255:  # (NAME_MAX; \0 \n \t ...)
        raise PydanticCustomError(
            "source_filename", "{name} is not usable as a file name",
            {"name": repr(name) if len(name) < 60 else repr(name[:57] + "..."),
             "hint": f"give a plain file name in `filename:` ({field})"})
    return name
