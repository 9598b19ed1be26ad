"""``xenforge boot | ssh | test``: machines booted from a build's images, or real hosts."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from xenforge.cli.common import cache_of, recipe_path
from xenforge.core.errors import InputError
from xenforge.recipe.load import LoadedRecipe
from xenforge.recipe.model import TestsSection
from xenforge.verify.suites import Outcome


def recipe_and_out(args: argparse.Namespace) -> tuple[LoadedRecipe, TestsSection, Path]:
    from xenforge.recipe.load import load_recipe

    loaded = load_recipe(recipe_path(args.recipe))
    return loaded, loaded.recipe.tests or TestsSection(), Path(args.out) / loaded.name


def report(outcome: Outcome) -> int:
    print(outcome.summary())
    return 0 if outcome.ok else 1


def cmd_test(args: argparse.Namespace) -> int:
    from xenforge.cli.progress import Progress
    from xenforge.verify.targets import test_built, test_host

    loaded, settings, out = recipe_and_out(args)
    if args.suite:
        settings = settings.model_copy(update={"builtin": args.suite})
    if args.list_suites:
        from xenforge.verify.suites import suite_files

        for path in suite_files(settings.builtin, settings.suites):
            print(path)
        return 0
    junit = Path(args.junit) if args.junit else out / "test-results" / "junit.xml"
    cache = cache_of(args)
    if args.inventory is not None:
        return test_inventory(args, loaded.name, settings, out, junit,
                              cache.state.logs(loaded.name) / "fleet")
    for option, value in (("--limit", args.limit), ("-j/--jobs", args.jobs)):
        if value is not None:
            raise InputError(f"{option} applies to --inventory only",
                             hint=f"add --inventory FILE, or leave {option} out")
    if args.host is not None:
        if not args.host:
            raise InputError("--host is empty", hint="give ssh://root@HOST[:PORT]")
        return report(test_host(
            args.host, out=out, settings=settings, junit=junit,
            log=cache.state.logs(loaded.name) / "verify-host.log",
            identity=Path(args.identity) if args.identity else None,
            known_hosts=Path(args.known_hosts) if args.known_hosts else None))
    progress = Progress(quiet=args.quiet, plain=True)
    return report(test_built(out, cache=cache, progress=progress, settings=settings,
                             firmware=args.firmware, junit=junit, medium=args.medium))


def test_inventory(args: argparse.Namespace, name: str, settings: TestsSection, out: Path,
                   junit: Path, logs: Path) -> int:
    """``xenforge test --inventory FILE``: every host of the inventory, a table, one JUnit."""
    from xenforge.verify.fleet import HostResult, run_fleet
    from xenforge.verify.inventory import load_inventory
    from xenforge.verify.targets import suite_expectations

    if not args.inventory:
        raise InputError("--inventory is empty", hint="give an Ansible inventory file")
    booting = [option for option, given in (("--firmware", args.firmware is not None),
                                            ("--iso", args.medium == "iso"),
                                            ("--install", args.medium == "install")) if given]
    if booting:
        raise InputError(f"{booting[0]} is for a VM xenforge boots; --inventory tests "
                         "existing hosts", hint=f"leave {booting[0]} out")
    hosts = load_inventory(Path(args.inventory), limit=args.limit or ())
    identity = Path(args.identity).expanduser() if args.identity else None
    if identity is not None and not identity.is_file():
        raise InputError(f"--identity {args.identity}: key file not found",
                         hint="give the SSH private key of the hosts, or leave --identity "
                         "out (each host's ansible_ssh_private_key_file, else your keys)")

    def done(r: HostResult) -> None:
        if not args.quiet:
            print(f"{r.status:<11} {r.host.name} ({r.host.address}:{r.host.port}): "
                  f"{r.outcome.tests} checks, {len(r.outcome.failures)} failed", flush=True)

    if not args.quiet:
        print(f"testing {len(hosts)} hosts of {args.inventory} ({name}); logs: {logs}",
              flush=True)
    result = run_fleet(hosts, expect=suite_expectations(out, settings), junit=junit,
                       logs=logs, builtin=settings.builtin, extra=settings.suites,
                       identity=identity,
                       known_hosts=Path(args.known_hosts) if args.known_hosts else None,
                       jobs=args.jobs, on_done=done)
    print(result.summary())
    return 0 if result.ok else 1


def is_artifact(arg: str) -> bool:
    """``xenforge boot|ssh`` got a disk image or ISO file rather than a recipe."""
    from xenforge.verify.targets import BOOTABLE

    return Path(arg).suffix in BOOTABLE


def cmd_boot(args: argparse.Namespace) -> int:
    from xenforge.cli.progress import last_line
    from xenforge.verify.targets import artifact_target, boot_target, iso_target
    from xenforge.vm.session import Session, kvm_works

    if is_artifact(args.recipe):
        settings = TestsSection()
        target = artifact_target(Path(args.recipe), firmware=args.firmware, settings=settings)
        name, recipe = Path(args.recipe).stem, "RECIPE"
    else:
        loaded, settings, out = recipe_and_out(args)
        pick = iso_target if args.iso else boot_target
        target = pick(out, firmware=args.firmware, settings=settings)
        name, recipe = loaded.name, args.recipe
    cache = cache_of(args)
    run_dir = cache.state.run_dir(name)
    logs = cache.state.logs(name)
    kvm = kvm_works(cache.state.probes(), target.kernel, logs / "kvm-probe.log")
    print(f"booting {target.disk or target.iso} ({target.firmware}, "
          f"{'KVM' if kvm else 'TCG'}); console log: {run_dir / 'serial.log'}", flush=True)
    with Session(target, workdir=run_dir, log=logs / "qemu.log", kvm=kvm,
                 lifetime=None) as vm:  # runs until Ctrl-C, however long
        took = vm.wait_ready(args.timeout or settings.boot.timeout)
        state = vm.state()
        record_host_keys(vm.port, Path(state["known_hosts"]), logs / "qemu.log")
        (run_dir / "state.json").write_text(json.dumps(state, indent=2))
        print(f"ready after {took:.0f}s: {vm.ssh_url}\n"
              f"  shell:  xenforge ssh {args.recipe}\n"
              f"  tests:  xenforge test {recipe} --host {vm.ssh_url}"
              + (f" --identity {target.key}" if target.key else "")
              + f" --known-hosts {state['known_hosts']}"
              + "\n  stop:   Ctrl-C (or SIGTERM)", flush=True)
        try:
            while vm.vm.running():
                time.sleep(1)
        finally:
            (run_dir / "state.json").unlink(missing_ok=True)
    # QEMU ended by itself: the machine powered off (or rebooted: -no-reboot), or crashed
    rc = vm.vm.result.returncode if vm.vm.result else None
    last = last_line(str(vm.vm.serial)) or "(nothing)"
    print(f"the VM stopped by itself (QEMU exit {rc}); the console said last: {last}\n"
          f"  console log: {vm.vm.serial}", file=sys.stderr)
    return 0 if rc == 0 else 1


HOST_KEY_TYPES = ("ed25519",)  # the one type a xenforge image makes (xenforge-firstboot)


def record_host_keys(port: int, known_hosts: Path, log: Path) -> None:
    """Write the booted machine's SSH host keys to ``known_hosts`` (as ``[127.0.0.1]:PORT``),
    so that a plain ``ssh -o UserKnownHostsFile=...`` and ``xenforge ssh`` check the machine
    instead of trusting whatever answers the port (the keys are made on the machine's first
    boot: trusted on that first use). Nothing is written if the scan fails: ``xenforge test
    --known-hosts`` then records them itself (accept-new)."""
    from xenforge.core import run as runner
    from xenforge.core.files import write_text_atomic

    lines: list[str] = []
    # one type per scan, sequentially and retried: ssh-keyscan's default opens a connection per
    # type at once, and under TCG one of them can miss its timeout (seen: no ed25519 line)
    for kind in HOST_KEY_TYPES:
        for _attempt in range(3):
            res = runner.run(["ssh-keyscan", "-T", "30", "-t", kind, "-p", str(port), "127.0.0.1"],
                             capture=True, check=False, log=log)
            got = [ln for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
            if got:
                lines += got
                break
    if not lines:
        return
    write_text_atomic(known_hosts, "\n".join(lines) + "\n")


def cmd_ssh(args: argparse.Namespace) -> int:
    from xenforge.recipe.load import load_recipe

    path = Path(args.recipe)
    name = path.stem if is_artifact(args.recipe) else load_recipe(recipe_path(args.recipe)).name
    state_file = cache_of(args).state.run_dir(name) / "state.json"
    if not state_file.is_file():
        raise InputError(f"no running VM for {name}",
                         hint=f"start one: xenforge boot {args.recipe}")
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        raise InputError(f"{state_file} is damaged",
                         hint=f"stop the VM and start it again: xenforge boot {args.recipe}"
                         ) from None
    argv = ["ssh", "-p", str(state["port"])]
    known = Path(state.get("known_hosts") or "/nonexistent")
    if known.is_file() and known.stat().st_size:  # the keys `xenforge boot` recorded
        argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
    else:
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR"]
    if state.get("key"):
        argv += ["-i", state["key"]]
    argv += [f"{state['user']}@127.0.0.1", *args.command]
    os.execvp("ssh", argv)
    return 0  # not reached
