"""Ends an embedded Ray completely once the process that started it is gone, however it ended.

`ray.init()` starts Ray's daemons under the driver. When the driver ends, even by SIGKILL, the
GCS and the raylet go with it, but the raylet's dashboard agent and runtime-env agent can stay,
adopted by PID 1, for minutes (holding their memory), and they may not answer SIGTERM. So
`service.cluster.connect` starts this reaper beside an embedded Ray: it blocks on a pipe whose
other end only the driver holds, which the kernel closes however the driver ends; then it
signals every Ray process (a `ray::` process title, or a program of the ray package) that still
has a file open in the Ray session's directory (each of Ray's daemons keeps its logs there):
SIGTERM, then SIGKILL for those still there after a grace. Other Ray sessions on the machine
have other directories and are left alone.

Linux only (it reads /proc); elsewhere `start` does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 3.0
"""How long processes get to exit after SIGTERM before SIGKILL."""


def session_processes(session_dir: str, ray_dir: str) -> list[int]:
    """PIDs of Ray's processes (a `ray::` title, or a program under `ray_dir`, the ray package)
    with a file open under `session_dir`."""
    prefix = os.path.realpath(session_dir).rstrip("/") + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not (argv[0].startswith("ray::") or any(arg.startswith(ray_dir) for arg in argv)):
                continue
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(entry.name))
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def end_session(session_dir: str, ray_dir: str, grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM the session's Ray processes, SIGKILL those left after `grace_s`; returns the
    pids that had to be killed."""
    _signal_all(session_processes(session_dir, ray_dir), signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while (left := session_processes(session_dir, ray_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(left, signal.SIGKILL)
    return left


def start(session_dir: str, ray_dir: str) -> None:
    """Start the reaper for the embedded Ray whose session directory is `session_dir`; `ray_dir`
    is the ray package's directory (Ray's daemons run programs from it).

    The pipe's write end stays in this process, marked not inheritable, so no child (Ray's
    daemons, job drivers) keeps it open.
    """
    if not sys.platform.startswith("linux"):
        return
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, False)
    subprocess.Popen([sys.executable, "-m", "service.reaper", str(read_end), session_dir, ray_dir],
                     pass_fds=(read_end,), stdin=subprocess.DEVNULL, close_fds=True)
    os.close(read_end)
    _KEPT.append(write_end)


_KEPT: list[int] = []
"""Write ends held open for the life of this process (closed by the kernel at its exit)."""


def main(argv: list[str]) -> int:
    """The reaper process: wait for EOF on the pipe, then end the session's processes."""
    # Ctrl-C and a service manager's SIGTERM reach the driver's whole process group; the
    # reaper must outlive the driver to do its work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, session_dir, ray_dir = int(argv[0]), argv[1], argv[2]
    while os.read(fd, 4096):
        pass
    end_session(session_dir, ray_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
