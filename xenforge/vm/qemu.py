"""Boot a machine in QEMU: the command line, a serial log, readiness, and a guaranteed stop.

On these machines KVM is not usable for ordinary guests (see FACTS.md), so the default
accelerator is TCG with ``-cpu max,-smap,-xsave`` (``TCG_CPU``): plain ``max`` crashes a PV
dom0 at its first page fault (SMAP), and with XSAVE the AVX register state of PV dom0 and
guest processes gets corrupted under Xen (measured: libc segfaults in udev, systemd, grep,
sshd on most boots); without XSAVE, Xen and glibc use FXSAVE and SSE only.
QEMU exits 0 even when the guest crashed: judge a boot from the serial log.

::

    spec = Machine(memory=2048, cpus=2, firmware="bios")
    with Vm(spec, cdrom=iso, workdir=work, log=log, timeout=600) as vm:
        vm.wait_for(r"XENFORGE-DONE", timeout=300)
    text = vm.serial_text()

The VM runs through :func:`xenforge.core.run.run` in a thread (its own process group, killed on
timeout). Leaving the ``with`` block always stops it: ``quit`` on the monitor socket, then
SIGKILL through the pid file, so no QEMU outlives the caller on any path; and QEMU dies
with its thread (PR_SET_PDEATHSIG) when the caller itself is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

from xenforge.core import run as runner
from xenforge.core.errors import XenforgeError

#: the CPU model under TCG (see the module docstring); ``max`` keeps SVM with nested paging
TCG_CPU = "max,-smap,-xsave"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(frozen=True)
class Machine:
    memory: int = 2048  # MiB
    cpus: int = 2
    firmware: Literal["bios", "uefi"] = "bios"
    accel: Literal["tcg", "kvm"] = "tcg"
    cpu: str = TCG_CPU
    machine: str = "q35"


def argv(spec: Machine, *, workdir: Path, cdrom: Path | None = None,
         disks: tuple[Path, ...] = (), kernel: Path | None = None,
         initrd: Path | None = None, append: str = "",
         extra: tuple[str, ...] = ()) -> list[str]:
    """The qemu-system-x86_64 command line. The serial console goes to
    ``workdir/serial.log``, the monitor to the socket ``workdir/monitor.sock``."""
    args = ["qemu-system-x86_64", "-machine", f"{spec.machine},accel={spec.accel}",
            "-cpu", spec.cpu, "-smp", str(spec.cpus), "-m", str(spec.memory),
            "-display", "none", "-vga", "none", "-no-reboot",
            "-serial", f"file:{workdir / 'serial.log'}",
            "-monitor", f"unix:{workdir / 'monitor.sock'},server,nowait",
            "-pidfile", str(workdir / "qemu.pid")]
    if spec.firmware == "uefi":
        if not OVMF_CODE.is_file():
            raise XenforgeError(f"{OVMF_CODE} is missing", hint="install ovmf")
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    if cdrom is not None:
        args += ["-cdrom", str(cdrom)]
    for i, disk in enumerate(disks):
        fmt = "qcow2" if disk.suffix == ".qcow2" else "raw"
        args += ["-drive", f"file={disk},format={fmt},if=virtio,index={i}"]
    if kernel is not None:
        args += ["-kernel", str(kernel)]
        if initrd is not None:
            args += ["-initrd", str(initrd)]
        if append:
            args += ["-append", append]
    return [*args, *extra]


class Vm:
    """A running QEMU (a context manager): see the module docstring."""

    def __init__(self, spec: Machine, *, workdir: Path, log: Path, timeout: float | None,
                 **kw: object) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("serial.log", "monitor.sock", "qemu.pid"):
            with contextlib.suppress(FileNotFoundError):
                (workdir / name).unlink()
        (workdir / "serial.log").touch()
        self.workdir = workdir
        self.serial = workdir / "serial.log"
        self.log = log
        self.timeout = timeout
        self.argv = argv(spec, workdir=workdir, **kw)  # type: ignore[arg-type]
        self.result: runner.Result | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def _run(self) -> None:
        try:
            self.result = runner.run(self.argv, log=self.log, timeout=self.timeout,
                                     check=False, die_with_parent=True)
        except BaseException as exc:  # reported by stop()/exited()
            self.error = exc

    def __enter__(self) -> Vm:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- state ----------------------------------------------------------------------------
    def running(self) -> bool:
        return self._thread.is_alive()

    def serial_text(self) -> str:
        return self.serial.read_text(encoding="utf-8", errors="replace")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_for(self, pattern: str, *, timeout: float) -> re.Match[str] | None:
        """Wait until the serial log matches ``pattern`` (a regex); None when QEMU exited
        or ``timeout`` seconds passed first."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.serial_text())
            if m or not self.running() or time.monotonic() > deadline:
                return m or rx.search(self.serial_text())
            time.sleep(0.5)

    def wait_exit(self, *, timeout: float) -> bool:
        """Wait for QEMU to exit by itself (the guest powered off); True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop QEMU: ``quit`` on the monitor, then SIGKILL; waits until it is gone."""
        if self._thread.is_alive():
            with contextlib.suppress(OSError), \
                    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.workdir / "monitor.sock"))
                s.sendall(b"quit\n")
            self._thread.join(15)
        if self._thread.is_alive():
            self._kill_pidfile()
            self._thread.join(15)
        if self._thread.is_alive():
            raise XenforgeError(f"QEMU did not stop (pid file {self.workdir / 'qemu.pid'})",
                                hint="kill it by hand")

    def _kill_pidfile(self) -> None:
        try:
            pid = int((self.workdir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
