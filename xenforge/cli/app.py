"""Command line: argument parsing, exit codes (0 ok, 1 build failed, 2 bad input/usage,
130 interrupted) and the one top-level error handler (no traceback unless --debug)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from xenforge import __version__
from xenforge.cli.build import (
    cmd_build,
    cmd_plan,
    cmd_recipes,
    cmd_schema,
    cmd_timeline,
    cmd_validate,
    cmd_verify_release,
)
from xenforge.cli.cache_cmd import cmd_cache
from xenforge.cli.ci_cmd import cmd_ci
from xenforge.cli.common import add_remote_options, days, positive_int
from xenforge.cli.machines import cmd_boot, cmd_ssh, cmd_test
from xenforge.core import diskfull
from xenforge.core.errors import XenforgeError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xenforge", description="Build, boot and verify Xen systems from pinned sources."
    )
    p.add_argument("--version", action="version", version=f"xenforge {__version__}")
    # global options work before or after the command (`xenforge build --debug R`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )
    common.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="cache directory (default: $XENFORGE_CACHE_DIR or ~/.cache/xenforge)",
    )
    p.add_argument("--debug", action="store_true")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=None,
        help="cache directory (default: $XENFORGE_CACHE_DIR or ~/.cache/xenforge)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser(
        "validate", parents=[common], help="check recipes; report every problem at once"
    )
    v.add_argument("recipes", nargs="+", metavar="RECIPE")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "schema", parents=[common], help="print the recipe JSON Schema (for editors)"
    )
    s.set_defaults(func=cmd_schema)

    rl = sub.add_parser("recipes", parents=[common],
                        help="list the recipes xenforge ships (usable by name anywhere)")
    rl.set_defaults(func=cmd_recipes)

    pl = sub.add_parser("plan", parents=[common], help="show the build graph and what is cached")
    pl.add_argument("recipes", nargs="+", metavar="RECIPE",
                    help="one or more recipes (several: one graph, shared nodes once, as "
                    "`xenforge build` builds them)")
    pl.add_argument("--json", action="store_true", help="machine-readable graph")
    add_remote_options(pl)
    pl.set_defaults(func=cmd_plan)

    b = sub.add_parser(
        "build", parents=[common], help="build a recipe's artifacts through the cache"
    )
    b.add_argument("recipes", nargs="+", metavar="RECIPE",
                   help="a recipe; several build in one graph, sharing what they have in "
                   "common (a matrix), each exported to OUT/NAME/")
    b.add_argument("-j", "--jobs", type=positive_int, default=None,
                   help="parallel jobs (default: cores)")
    b.add_argument("-o", "--out", default="out", help="artifact directory (default: ./out)")
    b.add_argument(
        "-t",
        "--target",
        action="append",
        metavar="NODE",
        help="build only NODE and the nodes it needs (repeatable; names as "
        "`xenforge plan` shows them); out/RECIPE/ then holds their artifacts",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="only errors")
    b.add_argument("--plain", action="store_true", help="plain log lines, no live view")
    b.add_argument("--progress", choices=["auto", "live", "plain", "json", "quiet"],
                   help="how progress is shown (default auto: a live view in a terminal, "
                   "plain lines otherwise; json: one JSON object per line, for CI tools)")
    b.add_argument(
        "--test",
        action="store_true",
        help="then boot the result and run the test suites (xenforge test)",
    )
    b.add_argument("--check-repro", action="store_true",
                   help="then build everything again in another cache (no compiler cache) "
                   "and compare every artifact; exit 1 if one that must be identical is not")
    b.add_argument("--keep-repro", action="store_true",
                   help="keep the second build of --check-repro (its path is printed)")
    b.add_argument("--timeline", metavar="FILE.svg",
                   help="draw where the build's time went: each node a bar over time, cached "
                   "nodes marked (also after a failed build)")
    add_remote_options(b)
    b.set_defaults(func=cmd_build)

    t = sub.add_parser(
        "test",
        parents=[common],
        help="boot the recipe's dom0 image (or use --host, --inventory) and run the suites",
    )
    t.add_argument("recipe", metavar="RECIPE")
    where = t.add_mutually_exclusive_group()
    where.add_argument(
        "--host",
        metavar="URL",
        help="test this machine instead of booting one (ssh://root@HOST[:PORT], paramiko://...)",
    )
    where.add_argument(
        "--inventory",
        metavar="FILE",
        help="test every host of this Ansible inventory (INI or YAML) instead of booting one, "
        "in parallel; one JUnit XML file with a testsuite per host",
    )
    t.add_argument("--limit", action="append", metavar="GROUP",
                   help="with --inventory: only the hosts of this group (or this host; "
                   "repeatable)")
    t.add_argument("-j", "--jobs", type=positive_int, default=None,
                   help="with --inventory: hosts tested at once (default: up to 4)")
    t.add_argument("--identity", metavar="KEY",
                   help="SSH private key for --host; with --inventory, for the hosts that "
                   "have no ansible_ssh_private_key_file")
    t.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="host keys for --host or every --inventory host (default: yours); a host not in "
        "FILE yet is trusted on first use and added",
    )
    t.add_argument("--firmware", choices=["bios", "uefi"], help="boot firmware")
    medium = t.add_mutually_exclusive_group()
    medium.add_argument("--iso", dest="medium", action="store_const", const="iso",
                        default="disk", help="boot the recipe's ISO live (from a CD) and run "
                        "the dom0 suite")
    medium.add_argument("--install", dest="medium", action="store_const", const="install",
                        help="install the recipe's ISO unattended onto an empty virtual disk, "
                        "boot that disk alone and run the suites")
    t.add_argument(
        "--suite",
        action="append",
        choices=["dom0", "guests"],
        help="run only this built-in suite (repeatable; default: the recipe's tests.builtin)",
    )
    t.add_argument(
        "--junit", metavar="FILE", help="JUnit XML (default: out/RECIPE/test-results/junit.xml)"
    )
    t.add_argument("-o", "--out", default="out", help="where the build put its artifacts")
    t.add_argument("-q", "--quiet", action="store_true")
    t.add_argument("--list-suites", action="store_true",
                   help="print the testinfra files the run would use, and stop")
    t.set_defaults(func=cmd_test)

    bo = sub.add_parser(
        "boot",
        parents=[common],
        help="boot the recipe's dom0 image (or a disk image or ISO file) in QEMU until Ctrl-C",
    )
    bo.add_argument("recipe", metavar="RECIPE|FILE")
    bo.add_argument("--firmware", choices=["bios", "uefi"])
    bo.add_argument("--iso", action="store_true", help="boot the recipe's ISO live (a CD)")
    bo.add_argument("--timeout", type=int, help="seconds to wait for readiness")
    bo.add_argument("-o", "--out", default="out", help="where the build put its artifacts")
    bo.set_defaults(func=cmd_boot)

    sh = sub.add_parser("ssh", parents=[common], help="a shell on the VM `xenforge boot` runs")
    sh.add_argument("recipe", metavar="RECIPE")
    sh.add_argument("command", nargs=argparse.REMAINDER, help="a command to run instead")
    sh.set_defaults(func=cmd_ssh)

    tl = sub.add_parser("timeline", parents=[common],
                        help="draw a build's timeline from its JSON progress stream "
                        "(xenforge build --progress json > FILE) or its build log")
    tl.add_argument("events", metavar="EVENTS", help="a saved JSON progress stream, or a "
                    "build log (the cache's state/logs/RECIPE/build.log: its last build)")
    tl.add_argument("-o", "--output", required=True, metavar="FILE.svg",
                    help="where the picture goes")
    tl.add_argument("--title", default=None, help="the picture's title (default: the file)")
    tl.set_defaults(func=cmd_timeline)

    vr = sub.add_parser("verify-release", parents=[common],
                        help="check an export: the signature of SHA256SUMS and every file")
    vr.add_argument("folder", metavar="DIR", help="an export folder (out/RECIPE)")
    vr.add_argument("--keyring", metavar="FILE",
                    help="trust only the keys in FILE (gpg --export of the signer's key)")
    vr.add_argument("--require-signature", action="store_true",
                    help="an unsigned release fails")
    vr.set_defaults(func=cmd_verify_release)

    ci = sub.add_parser("ci", parents=[common],
                        help="write a GitLab CI or GitHub Actions pipeline that shards the "
                        "build over runners through the remote cache")
    ci.add_argument("engine", choices=["gitlab", "github"])
    ci.add_argument("recipes", nargs="+", metavar="RECIPE",
                    help="recipes relative to the repository root (or shipped names)")
    ci.add_argument("-o", "--output", metavar="FILE",
                    help="where to write it (default: .gitlab-ci.yml or "
                    ".github/workflows/xenforge.yml; - for stdout)")
    ci.add_argument("--remote-cache", metavar="URL",
                    help="write this cache URL into the file (default: the CI variable "
                    "XENFORGE_REMOTE_CACHE, or the recipe's cache.remote)")
    ci.add_argument("--setup", metavar="CMD",
                    help="a command each job runs first (e.g. installing xenforge)")
    ci.add_argument("--xenforge", metavar="CMD", default="xenforge",
                    help="how jobs call xenforge (the $XENFORGE variable; default xenforge)")
    ci.add_argument("--tag", action="append", metavar="TAG",
                    help="runner tag (GitLab tags, GitHub runs-on labels; repeatable)")
    ci.add_argument("--image", metavar="IMAGE", help="GitLab: the jobs' container image")
    ci.add_argument("--no-test", action="store_true",
                    help="release jobs export only (no boot and test step)")
    ci.set_defaults(func=cmd_ci)

    c = sub.add_parser("cache", parents=[common], help="inspect or clean the cache")
    csub = c.add_subparsers(dest="cache_cmd", required=True, metavar="ACTION")
    csub.add_parser("ls", parents=[common], help="list cached nodes, least recently used first")
    csub.add_parser("du", parents=[common], help="disk use by stage")
    gc = csub.add_parser("gc", parents=[common], help="remove stale and old entries")
    gc.add_argument(
        "--max-size",
        help="shrink to this size, least recently used first "
        "(the latest build of each recipe's nodes is kept)",
    )
    gc.add_argument(
        "--older-than",
        type=days,
        metavar="DAYS",
        help="remove entries not used for DAYS and not the latest of any recipe",
    )
    gc.add_argument("--dry-run", action="store_true")
    csub.add_parser("verify", parents=[common], help="hash every object's files; take out "
                    "a damaged one (the next build rebuilds it; exit 1 if any)")
    c.set_defaults(func=cmd_cache)
    return p


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class _Stderr(logging.Handler):
    """Log records on the current stderr (not the one of the moment the handler was made)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _setup_logging(debug: bool) -> None:
    """xenforge's loggers: warnings, or with --debug everything (each command it runs)."""
    log = logging.getLogger("xenforge")
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug)
    signal.signal(signal.SIGTERM, _on_term)
    try:
        code: int = args.func(args)
        return code
    except XenforgeError as exc:
        if args.debug:
            raise
        print(f"error: {exc.render()}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `xenforge plan R | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        from xenforge.core import run

        run.kill_all()
        done = {"build": "nothing half-built was kept", "boot": "the VM was stopped",
                "test": "the VM was stopped"}.get(args.command, "stopped")
        print(f"interrupted; {done}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line; the traceback with --debug
        if args.debug:
            raise
        if diskfull.is_disk_full(exc):  # no bug: a disk (the cache's, the state's) is full
            from xenforge.cache.cache import default_root

            root = Path(args.cache_dir).absolute() if getattr(args, "cache_dir", None) \
                else default_root()
            print(f"error: {diskfull.message(exc, [root], root)}\n  hint: {diskfull.HINT}",
                  file=sys.stderr)
            return 1
        print(f"error: internal error: {type(exc).__name__}: {exc}\n"
              "  hint: this is a xenforge bug; run again with --debug for the traceback",
              file=sys.stderr)
        return 1

