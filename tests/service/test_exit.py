"""How a command ends: `service.cluster.disconnect` ends an embedded Ray's daemons, and
`service.train.exit_now` ends the process without losing anything it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_exit_now_exits_with_the_code_after_threads_atexit_functions_and_buffered_output(tmp_path):
    result = run_script(f"""
import atexit, sys, threading, time
from pathlib import Path
from service.train import exit_now
out = Path({str(tmp_path)!r})
atexit.register(lambda: (out / "atexit").write_text("ran"))
def late():
    time.sleep(0.5)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
sys.stdout.write("a summary without its newline, still in the buffer")
exit_now(3)
""")
    assert result.returncode == 3, result.stderr
    assert result.stdout == "a summary without its newline, still in the buffer"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"


def test_disconnect_ends_every_daemon_of_an_embedded_ray_and_says_nothing_of_them():
    result = run_script("""
import ray
from service.cluster import connect, disconnect, embedded
connect(num_cpus=1)
node = ray._private.worker._global_node
daemons = {kind: [info.process for info in infos] for kind, infos in node.all_processes.items()}
assert embedded() and "monitor" in daemons and "raylet" in daemons, daemons
disconnect()
alive = sorted(kind for kind, procs in daemons.items() for p in procs if p.poll() is None)
print(f"alive: {alive} | connected: {ray.is_initialized()} | embedded: {embedded()}")
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alive: [] | connected: False | embedded: False"
    # The monitor is killed while Ray is still up: killed, it cannot report its end; sent
    # SIGTERM at that point, it would ("The autoscaler failed with the following error:
    # Terminated with signal 15", forwarded by the raylet).
    assert "autoscaler" not in result.stderr.lower(), result.stderr
