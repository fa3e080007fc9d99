"""Every loader of checkpoint archives refuses hostile ones: `read_archive`, `a2c evaluate`
and `a2c train --resume` (in-process and as the real command). The API's loaders are in
tests/api/test_bad_input.py. The archives come from the `crafted` fixture (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from learner.checkpoint import CheckpointRejected, read_archive
from api.cli import main


def test_read_archive_refuses_every_crafted_archive(crafted, tmp_path):
    path = tmp_path / "step-0000000256.tar.gz"
    path.write_bytes(crafted.data)
    for source in (path, crafted.data):
        with pytest.raises(CheckpointRejected, match=crafted.reason):
            read_archive(source)
    assert not crafted.marker.exists()


@pytest.mark.parametrize("as_dir", [False, True], ids=["file", "dir"])
def test_evaluate_refuses_every_crafted_archive(crafted, tmp_path, capsys, as_dir):
    path = tmp_path / "checkpoints" / "step-0000000256.tar.gz"
    path.parent.mkdir()
    path.write_bytes(crafted.data)
    assert main(["evaluate", str(path.parent if as_dir else path), "--episodes", "1"]) == 1
    err = capsys.readouterr()
    assert "CheckpointRejected" in err.err and crafted.reason in err.err
    assert err.out == ""
    assert not crafted.marker.exists()


def test_train_resume_refuses_every_crafted_archive_before_starting_anything(crafted, tmp_path, capsys):
    path = tmp_path / "step-0000000256.tar.gz"
    path.write_bytes(crafted.data)
    out = tmp_path / "run"
    assert main(["train", "--resume", str(path), "--total-steps", "8192", "--out", str(out)]) == 1
    err = capsys.readouterr()
    assert "CheckpointRejected" in err.err and crafted.reason in err.err
    assert not out.exists(), "refused before a run directory (or Ray) was made"
    assert not crafted.marker.exists()


@pytest.mark.parametrize("command", [["evaluate"], ["train", "--total-steps", "8192", "--resume"]],
                         ids=["evaluate", "train-resume"])
def test_the_real_command_refuses_a_pickle_payload_without_running_it(command, _crafted_bytes, tmp_path):
    marker, cases = _crafted_bytes
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(cases["pickle"][0])
    result = subprocess.run([sys.executable, "-m", "api.cli", *command, str(path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "CheckpointRejected" in result.stderr and "do not load" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()
