"""What the commands share: finding a recipe (a path, or the name of a shipped recipe), the
cache, and the argparse value types."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from xenforge.cache import Cache
from xenforge.cache.remote import RemoteCache, RemoteSettings
from xenforge.core.data import data_dir
from xenforge.core.errors import InputError
from xenforge.core.paths import path_kind
from xenforge.recipe.load import LoadedRecipe


def shipped_recipes() -> list[Path]:
    """The recipes xenforge ships (``recipes/`` in a checkout, package data in a wheel)."""
    return sorted(data_dir("recipes").glob("*.yaml"))


def recipe_path(arg: str) -> Path:
    """A recipe argument: a file, or the name of a shipped recipe (``xen-host``,
    ``xen-host.yaml`` or ``recipes/xen-host.yaml`` from any directory)."""
    path = Path(arg)
    if path_kind(path) is not None or "\0" in arg:  # (an over-long name: not found)
        return path
    name = path.name if path.suffix == ".yaml" else f"{path.name}.yaml"
    if path.parent in (Path("."), Path("recipes")):
        shipped = data_dir("recipes") / name
        if path_kind(shipped) == "file":
            return shipped
    return path  # the loader says "recipe not found" with its hint


def cache_of(args: argparse.Namespace) -> Cache:
    if getattr(args, "cache_dir", None) == "":
        raise InputError("--cache-dir is empty", hint="give a directory, or leave the option out")
    if "\0" in (getattr(args, "cache_dir", None) or ""):  # (main(argv) in a program can)
        raise InputError("--cache-dir holds a NUL byte", hint="give a directory")
    return Cache(Path(args.cache_dir) if args.cache_dir else None)


def add_remote_options(parser: argparse.ArgumentParser) -> None:
    """``--remote-cache URL``, ``--remote-cache-read-only``, ``--no-remote-cache``."""
    parser.add_argument("--remote-cache", metavar="URL", default=None,
                        help="a shared cache over HTTP (default: $XENFORGE_REMOTE_CACHE, then "
                        "the recipe's cache.remote); credentials from ~/.netrc or "
                        "$XENFORGE_REMOTE_CACHE_USER/_PASSWORD (or _TOKEN)")
    parser.add_argument("--remote-cache-read-only", action="store_true",
                        help="fetch from the remote cache, never upload (untrusted jobs: "
                        "forks, merge requests); also $XENFORGE_REMOTE_CACHE_READ_ONLY=1")
    parser.add_argument("--no-remote-cache", action="store_true",
                        help="ignore every remote cache setting")


def remote_of(args: argparse.Namespace, loaded: LoadedRecipe, cache: Cache,
              log: Path | None) -> RemoteCache | None:
    """The remote cache the command line, the environment or the recipe asks for."""
    section = loaded.recipe.cache
    settings = RemoteSettings.choose(
        cli_url=args.remote_cache, cli_read_only=args.remote_cache_read_only,
        disabled=args.no_remote_cache, recipe_url=section.remote if section else None,
        recipe_read_only=section.read_only if section else False)
    if settings is None:
        return None
    return RemoteCache(settings, tmp_dir=cache.tmp_dir, log=log)


def parse_size(text: str, option: str = "--max-size") -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        number = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise InputError(f"{option}: {text!r} is not a size", hint="e.g. 20G or 500M")
    return int(number)


def at_least(minimum: float, convert: Callable[[str], float], what: str
             ) -> Callable[[str], float]:
    """An argparse type: ``convert``ed, finite and >= ``minimum`` (a usage error otherwise)."""
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


positive_int = at_least(1, int, "a whole number of at least 1")
days = at_least(0, float, "a number of days (0 or more)")
