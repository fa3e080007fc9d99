"""A process killed (SIGKILL) while it writes checkpoints never leaves a broken one behind.

A child process writes large archives in a loop, each to a new step file and over a fixed
`latest.tar.gz`, with `write_checkpoint`, the trainer's own writer; the test kills it at random moments,
and once exactly between the temporary file's last byte and its fsync/rename. After every
kill, every archive a listing shows is whole and verifies, every write the child reported
finished is there, and `latest.tar.gz` holds the last finished write (or the one after it,
when the kill came between its rename and the report).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from learner.checkpoint import read_archive
from service.storage import list_files

ZYGOTE = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from service.run.checkpoints import write_checkpoint
    from learner.config import A2CConfig, PolicyConfig
    from learner.learner import Learner
    from learner.rollout import LearnerState
    from learner.spaces import SpacesSpec

    def say(line):  # one write(2) per line: the writer and the zygote share the pipe
        os.write(1, (line + "\\n").encode())

    def write_forever(out, first, pause_at_fsync):
        if pause_at_fsync:  # announce the moment the data is written, before fsync + rename
            real_fsync = os.fsync
            def fsync(fd):
                if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".latest"):
                    say("fsync")
                    time.sleep(120)
                real_fsync(fd)
            os.fsync = fsync
        say("ready")
        for i in range(first, first + 1000):
            state = LearnerState(STATE.weights, STATE.optimizer, i * 256, i)
            write_checkpoint(str(out / f"step-{i:010d}.tar.gz"), state, spaces, "CartPole-v1", config)
            write_checkpoint(str(out / "latest.tar.gz"), state, spaces, "CartPole-v1", config)
            say(f"done {i}")

    # torch works once, here, before any fork; writers only pack and write bytes.
    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    policy = PolicyConfig(hidden_sizes=(1024, 1024))  # about 4 MB of weights per archive
    STATE = Learner(spaces, policy, A2CConfig(), 10**9, seed=0).state()
    config = {"env": "CartPole-v1", "policy": policy.model_dump(mode="json")}

    # Then a fresh forked writer per command: "OUT FIRST PAUSE".
    for command in sys.stdin:
        out, first, pause = command.split()
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(Path(out), int(first), pause == "1")
            finally:
                os._exit(0)
        say(f"pid {pid}")
        os.waitpid(pid, 0)
        say("reaped")
""")


class Zygote:
    """A process that has imported the learner and forks writer processes on request, so
    that each crash costs a fork rather than a Python and torch start-up."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def readline(self) -> str:
        line = self.proc.stdout.readline()
        assert line, f"writer zygote exited (code {self.proc.poll()})"
        return line.strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait(60)


class Writer:
    """One forked writer process, and the writes it reported finished."""

    def __init__(self, zygote: Zygote, out: Path, first: int, pause_at_fsync: bool = False) -> None:
        self.zygote, self.done, self.pid, self.alive = zygote, [], None, True
        zygote.proc.stdin.write(f"{out} {first} {int(pause_at_fsync)}\n")
        zygote.proc.stdin.flush()
        self.expect("ready")

    def expect(self, word: str) -> None:
        """Read the writer's lines until one starts with `word` (hang guard: the test timeout)."""
        while True:
            line = self.zygote.readline()
            if line.startswith("pid"):
                self.pid = int(line.split()[1])
            elif line.startswith("done"):
                self.done.append(int(line.split()[1]))
            elif line.startswith("reaped"):
                self.alive = False
                raise AssertionError(f"writer exited before saying {word!r}")
            if line.startswith(word):
                return

    def kill(self) -> None:
        """SIGKILL, then collect what it reported before it died."""
        while self.pid is None:
            self.expect("pid")
        os.kill(self.pid, signal.SIGKILL)  # not yet reaped by the zygote: the pid is still ours
        while (line := self.zygote.readline()) != "reaped":
            if line.startswith("done"):
                self.done.append(int(line.split()[1]))
        self.alive = False


def check_after_crash(out: Path, done_so_far: list[int], verified: dict | None = None) -> list[Path]:
    """What must hold after any crash; returns the leftover temporary files.

    `verified` remembers (size, mtime) of archives already read, so each is read once unless
    it changed.
    """
    verified = {} if verified is None else verified
    listed = [Path(p) for p in list_files(out)]
    assert {p.name for p in listed} == {p.name for p in out.glob("*.tar.gz")}, "listings agree"
    for path in listed:
        info = path.stat()
        if verified.get(path.name) != (info.st_size, info.st_mtime_ns):
            read_archive(path)  # whole and verified, or this raises CheckpointRejected
            verified[path.name] = (info.st_size, info.st_mtime_ns)
    names = {p.name for p in listed}
    for i in done_so_far:
        assert f"step-{i:010d}.tar.gz" in names, f"finished write {i} is missing"
    if done_so_far:
        latest = read_archive(out / "latest.tar.gz").state.step // 256
        # The last finished write, or the next one if the kill came after its rename.
        assert latest in (done_so_far[-1], done_so_far[-1] + 1)
    leftovers = [p for p in out.iterdir() if p.name not in names]
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers), leftovers
    return leftovers


@pytest.fixture(scope="module")
def zygote():
    """The writer zygote, shared by this module's tests."""
    z = Zygote()
    yield z
    z.close()


@pytest.fixture
def spawn(zygote):
    """Start writers; one still alive when the test ends (e.g. it failed) is killed."""
    started: list[Writer] = []

    def start(out: Path, first: int, pause_at_fsync: bool = False) -> Writer:
        started.append(Writer(zygote, out, first, pause_at_fsync))
        return started[-1]

    yield start
    if started and started[-1].alive:
        started[-1].kill()


def test_sigkill_at_random_moments_never_leaves_a_broken_or_listed_partial_checkpoint(tmp_path, spawn):
    out = tmp_path / "checkpoints"
    out.mkdir()
    rng = random.Random(1234)
    done: list[int] = []
    verified: dict = {}
    for _ in range(12):
        writer = spawn(out, first=len(done) + 1)
        writer.expect("done")  # at least one write per trial finished
        time.sleep(rng.uniform(0.0, 1.0))  # then die somewhere in the next writes
        writer.kill()
        done += writer.done
        check_after_crash(out, done, verified)
    assert len(done) >= 12


def test_sigkill_between_write_and_rename_keeps_the_previous_latest(tmp_path, spawn):
    out = tmp_path / "checkpoints"
    out.mkdir()
    first = spawn(out, first=1)
    first.expect("done")
    first.kill()
    earlier = set(check_after_crash(out, first.done))
    before = read_archive(out / "latest.tar.gz")

    writer = spawn(out, first=first.done[-1] + 1, pause_at_fsync=True)
    writer.expect("fsync")  # the new latest is fully written to its temporary file, not renamed
    writer.kill()
    new = set(check_after_crash(out, first.done + writer.done)) - earlier
    assert [p.name.split(".tar.gz.")[0] for p in new] == [".latest"], "killed mid-write of latest"
    assert new.pop().stat().st_size > 1 << 20, "the partial archive was (nearly) all written"
    after = read_archive(out / "latest.tar.gz")
    assert after.state.step == before.state.step
    assert after.manifest["sha256"] == before.manifest["sha256"]


def test_a_write_that_fails_like_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    # RLIMIT_FSIZE makes write(2) fail with EFBIG past 1 MB in the child, as ENOSPC would on a
    # full disk: the write raises, its temporary file is removed, the old archive stays.
    out = tmp_path / "checkpoints"
    script = textwrap.dedent("""
        import errno, resource, signal, sys
        from pathlib import Path
        from service.run.checkpoints import write_checkpoint
        from learner.config import A2CConfig, PolicyConfig
        from learner.learner import Learner
        from learner.spaces import SpacesSpec
        out = Path(sys.argv[1])
        spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
        small, big = PolicyConfig(hidden_sizes=(8,)), PolicyConfig(hidden_sizes=(1024, 1024))
        write_checkpoint(str(out / "latest.tar.gz"), Learner(spaces, small, A2CConfig(), 10**6, seed=0).state(),
                         spaces, "CartPole-v1", {"policy": small.model_dump(mode="json")})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            write_checkpoint(str(out / "latest.tar.gz"), Learner(spaces, big, A2CConfig(), 10**6, seed=0).state(),
                             spaces, "CartPole-v1", {"policy": big.model_dump(mode="json")})
        except OSError as exc:
            print("refused", errno.errorcode[exc.errno])
    """)
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "refused EFBIG"
    assert [p.name for p in out.iterdir()] == ["latest.tar.gz"], "no temporary file is left"
    assert read_archive(out / "latest.tar.gz").config["policy"]["hidden_sizes"] == [8]
