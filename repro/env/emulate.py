"""Running the child on an emulated CPU: `qemu-x86_64 -cpu MODEL` (Debian's qemu-user).

qemu-user runs this same interpreter and jaxlib with a CPU model's CPUID, which is what jaxlib's
kernel libraries (YNNPACK, oneDNN), LLVM and glibc read: an AVX-512 host can compute what an
AVX2-only runner would (`repro verify --emulate-cpu Haswell-noTSX`, `repro calibrate
--variations cpu`). It is 20-50x slower, and an emulator is not silicon: what differs only under
emulation is to be explained before it is believed (docs/portability.md). Parent side.
"""
from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys

from repro.errors import ReproError

QEMU = "qemu-x86_64"
INSTALL = "install qemu-user (Debian/Ubuntu: `apt-get install qemu-user`; it provides qemu-x86_64)"
# What calibrate's `cpu` kind runs, lowest last: an AVX2+FMA CPU without AVX-512, the oldest
# AVX-512 server model, and one without FMA (where `portable` cannot be had)
CALIBRATE_MODELS = ("Haswell-noTSX", "Skylake-Server-noTSX-IBRS", "SandyBridge")


def qemu() -> str:
    """The qemu-x86_64 binary, or a clear error saying how to get it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise ReproError(f"--emulate-cpu emulates x86-64 CPUs on an x86-64 host; this host is "
                         f"{platform.machine()}")
    found = shutil.which(QEMU)
    if not found:
        raise ReproError(f"--emulate-cpu needs {QEMU}, which is not on PATH: {INSTALL}")
    return found


@functools.cache
def models() -> tuple[str, ...]:
    """The CPU models this qemu emulates (`qemu-x86_64 -cpu help`)."""
    out = subprocess.run([qemu(), "-cpu", "help"], capture_output=True, text=True, timeout=30).stdout
    names = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "x86":
            names.append(parts[1])
    return tuple(names)


def command(model: str) -> list[str]:
    """The prefix that runs this interpreter on `model` (a real ELF, not a pyenv shim)."""
    binary = qemu()
    if model not in models():
        near = [m for m in models() if m.lower().startswith(model.lower()[:4])][:8]
        raise ReproError(f"--emulate-cpu: qemu has no CPU model {model!r}"
                         + (f"; close ones: {', '.join(near)}" if near else "")
                         + f" (`{QEMU} -cpu help` lists them all)")
    return [binary, "-cpu", model, os.path.realpath(sys.executable)]


def check(model: str, backend: str) -> None:
    """Refuse, before anything runs, what cannot be emulated: another backend (qemu-user runs
    this interpreter), a missing qemu-x86_64, an unknown model."""
    if backend != "local":
        raise ReproError("--emulate-cpu runs the training with the local backend only (qemu-user "
                         f"runs this interpreter); drop --backend {backend}")
    command(model)
