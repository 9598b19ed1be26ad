"""Boot a built disk image or ISO in QEMU and make it reachable: the firmware the image asks
for (SeaBIOS, or OVMF with a private copy of its vars), TCG unless KVM was *shown* to work by
booting, a copy-on-write overlay so the artifact (a hard link into the cache) is never
written, SSH forwarded to a free port on 127.0.0.1, a QMP socket for a clean power-off, and
readiness = a console marker plus an SSH banner."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from xenforge.core import run as runner
from xenforge.core.errors import InputError, XenforgeError
from xenforge.core.files import write_json_atomic
from xenforge.vm.qemu import TCG_CPU, Machine, Vm

Firmware = Literal["bios", "uefi"]


@dataclass
class Target:
    """What to boot and how to reach it."""

    disk: Path | None = None
    iso: Path | None = None
    firmware: Firmware = "bios"
    memory: int = 2048
    cpus: int = 2
    key: Path | None = None  # SSH private key of the access user
    user: str = "xenforge"
    #: console regex that says the machine is up: a built image's own marker (its boot
    #: report, printed once the Xen services and autostarted guests are up), else a login
    ready: str = r"login:"
    kernel: Path | None = None  # a kernel to probe KVM with (optional)
    #: more disks, attached after ``disk`` as they are (the machine writes them): an
    #: installer's target, an install seed
    extra_disks: tuple[Path, ...] = ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ssh_banner(port: int, timeout: float = 5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.settimeout(timeout)
        return s.recv(64).startswith(b"SSH-")
    return False


def kvm_works(probes: Path, kernel: Path | None, log: Path) -> bool:
    """True only if a KVM guest really boots here (FACTS.md: /dev/kvm may be a nested
    hypervisor that aborts or crawls). The verdict is remembered in ``probes`` (the state
    dir's) per host kernel and QEMU."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or kernel is None:
        return False
    verdict_file = probes / "accel.json"
    key = f"{os.uname().release} {_qemu_version()}"
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(verdict_file.read_text())
        if saved.get("key") == key:
            return bool(saved["kvm"])
    serial = probes / f"kvm-probe.{os.getpid()}.serial"  # two sessions may probe at once
    serial.unlink(missing_ok=True)
    res = runner.run(["qemu-system-x86_64", "-accel", "kvm", "-machine", "q35", "-cpu", "host",
                      "-m", "256", "-display", "none", "-no-reboot", "-serial",
                      f"file:{serial}", "-kernel", kernel, "-append",
                      "console=ttyS0 panic=-1"], log=log, check=False, timeout=30)
    text = serial.read_text(errors="replace") if serial.exists() else ""
    serial.unlink(missing_ok=True)
    ok = res.returncode == 0 and "Kernel panic" in text
    write_json_atomic(verdict_file, {"key": key, "kvm": ok})
    return ok


def _qemu_version() -> str:
    res = runner.run(["qemu-system-x86_64", "--version"], capture=True, check=False)
    return res.stdout.splitlines()[0] if res.stdout else "unknown"


def _claim(workdir: Path) -> int:
    """Lock ``workdir`` for one session (a second one would delete the first one's monitor
    socket, pid file and overlay); the lock goes with the process, however it ends."""
    fd = os.open(workdir / "session.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise InputError(f"a VM of another xenforge session runs in {workdir} (pid {holder})",
                         hint="stop that session first (Ctrl-C in its terminal, or "
                         f"kill {holder}), or use another --cache-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Session:
    """A booted machine (a context manager that always stops QEMU)."""

    def __init__(self, target: Target, *, workdir: Path, log: Path,
                 lifetime: float | None = 7200, kvm: bool = False) -> None:
        self.target = target
        self.workdir = workdir
        self.log = log
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self._lock = _claim(workdir)  # before touching the files of a VM that may run there
        try:
            # the machine makes new SSH host keys on this boot: forget the last boot's
            (workdir / "known_hosts").unlink(missing_ok=True)
            disks: tuple[Path, ...] = ()
            if target.disk is not None:
                disks = (self._overlay(target.disk),)
            disks += target.extra_disks
        except BaseException:
            os.close(self._lock)
            raise
        machine = Machine(memory=target.memory, cpus=target.cpus, firmware=target.firmware,
                          accel="kvm" if kvm else "tcg", cpu="host" if kvm else TCG_CPU)
        self.qmp_path = workdir / "qmp.sock"
        extra = ("-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                 "-device", "virtio-net-pci,netdev=n0",
                 "-qmp", f"unix:{self.qmp_path},server,nowait")
        self.vm = Vm(machine, workdir=workdir, log=log, timeout=lifetime, disks=disks,
                     cdrom=target.iso, extra=extra)

    def _overlay(self, disk: Path) -> Path:
        overlay = self.workdir / "overlay.qcow2"
        overlay.unlink(missing_ok=True)
        fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
        runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b",
                    disk.resolve(), overlay], log=self.log)
        return overlay

    def __enter__(self) -> Session:
        self.vm.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def ssh_url(self) -> str:
        return f"ssh://{self.target.user}@127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float) -> float:
        """Wait for the console marker and an SSH banner; return the seconds it took."""
        deadline = time.monotonic() + timeout
        marker = self.vm.wait_for(self.target.ready, timeout=timeout)
        while marker is not None and time.monotonic() < deadline and self.vm.running():
            if ssh_banner(self.port):
                return self.vm.elapsed()
            time.sleep(2)
        tail = "\n".join(f"    | {ln}" for ln in self.vm.serial_text().splitlines()[-20:])
        if not self.vm.running():
            why = "QEMU exited before the machine was ready"
        elif marker is None:
            why = f"no {self.target.ready!r} on the console within {timeout:.0f}s"
        else:
            why = f"no SSH banner on 127.0.0.1:{self.port} within {timeout:.0f}s"
        raise XenforgeError(f"{why}; the console said last:\n{tail}",
                            hint=f"full console log: {self.vm.serial}")

    def qmp(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}).encode() + b"\n")
                f.flush()
                while True:
                    reply: dict[str, Any] = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply

    def stop(self, grace: float = 90) -> None:
        """ACPI power-off through QMP, then QEMU's own stop (quit, then SIGKILL)."""
        if self.vm.running():
            with contextlib.suppress(OSError, ValueError):
                self.qmp("system_powerdown")
                self.vm.wait_exit(timeout=grace)
        self.vm.stop()
        if self._lock >= 0:
            os.close(self._lock)  # the run dir is free for the next session
            self._lock = -1

    def state(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "port": self.port, "user": self.target.user,
                "key": str(self.target.key) if self.target.key else None,
                "serial": str(self.vm.serial), "ssh": self.ssh_url,
                "known_hosts": str(self.workdir / "known_hosts")}
