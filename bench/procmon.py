"""Memory and load of a process tree, read from /proc (Linux), sampled in a background thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def _children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process visible in /proc."""
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (Ray's raylet, GCS and worker processes included)."""
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def _kib(path: Path, key: str) -> int:
    """The value in KiB of `key:` in a /proc status-like file; 0 when the process is gone."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory_mb(root: int) -> tuple[float, float]:
    """(RSS, PSS) of the tree in MB. RSS counts shared pages once per process; PSS splits them."""
    rss = pss = 0
    for pid in tree_pids(root):
        rss += _kib(Path(f"/proc/{pid}/status"), "VmRSS:")
        pss += _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:")
    return rss / 1024, pss / 1024


def process_memory_mb(pid: int) -> float:
    """RSS of one process in MB (0 when it is gone)."""
    return _kib(Path(f"/proc/{pid}/status"), "VmRSS:") / 1024


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages, as `uptime` shows them."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


class TreeMonitor:
    """Samples a process tree's memory every `interval_s` and keeps the peaks (a context manager);
    it also samples how busy the whole machine was, for `machine_busy_s`, and with
    `track_processes` each process's CPU time, for `cpu_by_process_s`."""

    def __init__(self, root: int, interval_s: float = 0.5, roles_every_s: float | None = None,
                 track_processes: bool = False) -> None:
        self.root, self.interval_s, self.roles_every_s = root, interval_s, roles_every_s
        self.track_processes = track_processes
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.samples = 0
        self.roles: list[tuple[float, dict[str, float]]] = []
        """(seconds since start, RSS by role), every `roles_every_s` when that is set."""
        self.busy: list[tuple[float, float]] = []
        """(time.time(), the machine's busy CPU seconds so far), one per sample."""
        self.cpu: list[tuple[float, dict[int, tuple[str, float]]]] = []
        """(time.time(), `processes_cpu_s` of the tree), one per sample with `track_processes`."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        t0, next_roles = time.monotonic(), 0.0
        while not self._stop.is_set():
            if self.roles_every_s and time.monotonic() - t0 >= next_roles:
                self.roles.append((round(time.monotonic() - t0, 1), roles_memory_mb(self.root)))
                next_roles += self.roles_every_s
            self.busy.append((time.time(), machine_cpu_s()["machine busy"]))
            if self.track_processes:
                self.cpu.append((time.time(), processes_cpu_s(self.root)))
            rss, pss = tree_memory_mb(self.root)
            self.peak_rss_mb, self.peak_pss_mb = max(self.peak_rss_mb, rss), max(self.peak_pss_mb, pss)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def machine_busy_s(self, t0: float, t1: float) -> float | None:
        """CPU seconds the machine spent busy (all cores, every process) between two wall-clock
        times, interpolated between samples; None outside the sampled span."""
        times = [t for t, _ in self.busy]
        if len(times) < 2 or not times[0] <= t0 <= t1 <= times[-1]:
            return None
        return _interpolate(self.busy, t1) - _interpolate(self.busy, t0)

    def cpu_by_process_s(self, t: float) -> dict[str, float] | None:
        """CPU seconds each process of the tree had used, from its start to wall-clock time `t`,
        by `process_names`; interpolated per process between the samples around `t` (one that
        started in between counts from 0, one that ended keeps its last value), those under
        0.01 s left out. None outside the sampled span."""
        if len(self.cpu) < 2 or not self.cpu[0][0] <= t <= self.cpu[-1][0]:
            return None
        (ta, before), (tb, after) = next((a, b) for a, b in zip(self.cpu, self.cpu[1:]) if a[0] <= t <= b[0])
        frac = (t - ta) / (tb - ta) if tb > ta else 1.0
        at_t: dict[int, tuple[str, float]] = {}
        for pid in before.keys() | after.keys():
            used_a = before[pid][1] if pid in before else 0.0
            name, used_b = after[pid] if pid in after else (before[pid][0], used_a)
            at_t[pid] = (name, used_a + (used_b - used_a) * frac)
        return {name: round(used, 2) for name, used in process_names(at_t).items() if used >= 0.01}

    def tree_cpu_s(self, t0: float, t1: float) -> float | None:
        """CPU seconds the whole tree used between two wall-clock times (with
        `track_processes`); None outside the sampled span."""
        start, end = self.cpu_by_process_s(t0), self.cpu_by_process_s(t1)
        return None if start is None or end is None else round(sum(end.values()) - sum(start.values()), 2)

    def __enter__(self) -> "TreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _interpolate(points: list[tuple[float, float]], t: float) -> float:
    """The value at `t` of a piecewise-linear series of (t, value) points sorted by t."""
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    raise ValueError(f"{t} is outside the series")


def role_of(pid: int, root: int, root_role: str = "driver") -> str:
    """What a process in a training tree is: `root_role` for the root, then learner, worker,
    job driver (an API server's, forked from its fork server), or ray (system)."""
    if pid == root:
        return root_role
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "multiprocessing.forkserver" in cmd:
        return "job driver"
    # Ray names an actor's process after its class: "ray::Learner", "ray::RolloutWorker.sample".
    if cmd.startswith("ray::"):
        for marker, role in (("Learner", "learner"), ("RolloutWorker", "worker"),
                             ("EnvRunner", "worker")):
            if marker in cmd.split()[0]:
                return role
    return "ray"


def roles_memory_mb(root: int) -> dict[str, float]:
    """RSS in MB by role (driver, learner, one worker, ray system total) of a training tree."""
    out: dict[str, float] = {}
    for pid in tree_pids(root):
        role, rss = role_of(pid, root), process_memory_mb(pid)
        if role == "worker":  # one worker is representative; report the largest
            out[role] = max(out.get(role, 0.0), rss)
        else:
            out[role] = out.get(role, 0.0) + rss
    return {k: round(v, 1) for k, v in out.items() if k != "gone"}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) one process has used so far; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def machine_cpu_s() -> dict[str, float]:
    """CPU seconds the whole machine has spent busy, idle (or waiting on I/O), and stolen by the
    hypervisor, summed over its cores (from /proc/stat)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return {"machine busy": (user + nice + system + irq + softirq) / tick,
            "machine idle": (idle + iowait) / tick, "machine steal": steal / tick}


def process_name(pid: int, root: int, root_role: str = "driver") -> str:
    """`role_of`, with Ray's own processes named: "ray gcs_server", "ray raylet", "ray
    dashboard", "ray DashboardAgent", "ray log_monitor", ... (a Python daemon by its script)."""
    role = role_of(pid, root, root_role)
    if role != "ray":
        return role
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if args[0].startswith("ray::"):
        return "ray " + args[0].split()[0][len("ray::"):]
    script = next((a for a in args if a.endswith(".py")), args[0])
    return "ray " + Path(script).name.removesuffix(".py")


def processes_cpu_s(root: int, root_role: str = "driver") -> dict[int, tuple[str, float]]:
    """pid -> (`process_name`, CPU seconds used so far) for each live process of a tree."""
    out: dict[int, tuple[str, float]] = {}
    for pid in tree_pids(root):
        name = process_name(pid, root, root_role)
        if name != "gone":
            out[pid] = (name, process_cpu_s(pid))
    return out


def process_names(by_pid: dict[int, tuple[str, float]]) -> dict[str, float]:
    """{pid: (name, value)} keyed by name instead, in pid order: workers as "worker 1", "worker
    2", ..., any other repeated name as "<name>", "<name> 2", ..."""
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for pid in sorted(by_pid):
        name, value = by_pid[pid]
        seen[name] = seen.get(name, 0) + 1
        out[name if name != "worker" and seen[name] == 1 else f"{name} {seen[name]}"] = value
    return out


def roles_cpu_s(root: int, root_role: str = "driver") -> dict[str, float]:
    """CPU seconds used so far by role (see `role_of`) of the processes alive in a tree."""
    out: dict[str, float] = {}
    for pid in tree_pids(root):
        role = role_of(pid, root, root_role)
        out[role] = out.get(role, 0.0) + process_cpu_s(pid)
    out.pop("gone", None)
    return out


class Launched:
    """A benchmark subprocess in its own session, watched by a TreeMonitor while it runs."""

    def __init__(self, cmd: list[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, roles_every_s: float | None = None,
                 track_processes: bool = False) -> None:
        import subprocess
        self.launched_at = time.time()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)
        self.monitor = TreeMonitor(self.proc.pid, roles_every_s=roles_every_s,
                                   track_processes=track_processes).__enter__()
        self.load_before = load_average()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None after killing this process's tree on timeout."""
        import signal
        import subprocess
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pids = tree_pids(self.proc.pid)  # only processes this benchmark started
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
            code = None
        self.exited_at = time.time()
        self.monitor.__exit__(None, None, None)
        self._log.close()
        self.load_after = load_average()
        return code

    @property
    def wall_s(self) -> float:
        """Seconds from launch to exit (after `wait`)."""
        return self.exited_at - self.launched_at

    def tail(self, lines: int = 15) -> str:
        """The last lines of the process's output, for error reports."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
