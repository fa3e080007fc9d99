"""Choosing a run directory's archive (`latest`, `best`, an id) in code and through `a2c`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from learner.config import A2CConfig, PolicyConfig
from learner.learner import Learner
from learner.spaces import SpacesSpec
from service.run.checkpoints import (
    find_archive,
    read_checkpoint,
    run_archives,
    write_checkpoint,
)

EVALS = {512: 120.0, 1024: 500.0, 1536: None, 2048: 500.0, 2560: 310.0, 3072: None}
"""step -> the evaluation return recorded with that checkpoint (None: not evaluated)."""


def _config() -> dict:
    return {"env": "CartPole-v1", "total_steps": 4096, "workers": 1, "envs_per_worker": 2,
            "a2c": A2CConfig(steps_per_batch=256).model_dump(mode="json"),
            "policy": PolicyConfig().model_dump(mode="json")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with an archive per EVALS entry, as the trainer names them."""
    spaces = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2)
    state = Learner(spaces, PolicyConfig(), A2CConfig(steps_per_batch=256), 4096, seed=0).state()
    out = tmp_path_factory.mktemp("run")
    for step, evaluated in EVALS.items():
        write_checkpoint(str(out / "checkpoints" / f"step-{step:010d}.tar.gz"), dataclasses.replace(state, step=step),
                         spaces, "CartPole-v1", _config(), extra={"return_mean": 30.0, "eval_return_mean": evaluated})
    return out


def test_latest_best_and_ids_pick_among_a_run_directorys_archives(run_dir):
    assert [e.step for e in run_archives(str(run_dir))] == sorted(EVALS)
    assert [e.eval_return_mean for e in run_archives(str(run_dir))] == list(EVALS.values())
    assert read_checkpoint(find_archive(str(run_dir))).state.step == 3072
    assert read_checkpoint(find_archive(str(run_dir), "best")).state.step == 2048  # of equals, the later
    assert read_checkpoint(find_archive(str(run_dir), "step-0000001536")).state.step == 1536
    archive = find_archive(str(run_dir), "step-0000000512")
    assert find_archive(archive) == archive  # an archive is itself


@pytest.mark.parametrize("which,location,message", [
    ("best", "EMPTY", r"no checkpoint archive \(\*\.tar\.gz\) under"),
    ("step-0000000001", "RUN", "no checkpoint step-0000000001 under"),
    ("newest", "RUN", "give latest, best or an id"),
    ("best", "ARCHIVE", "names one of a run directory's archives"),
])
def test_what_cannot_be_found_says_why(run_dir, tmp_path, which, location, message):
    where = {"EMPTY": str(tmp_path), "RUN": str(run_dir),
             "ARCHIVE": str(run_dir / "checkpoints" / "step-0000000512.tar.gz")}[location]
    with pytest.raises(FileNotFoundError, match=message):
        find_archive(where, which)


def test_best_of_a_run_without_evaluations_names_why(tmp_path, run_dir):
    (tmp_path / "checkpoints").mkdir()
    source = run_dir / "checkpoints" / "step-0000001536.tar.gz"  # not evaluated
    (tmp_path / "checkpoints" / source.name).write_bytes(source.read_bytes())
    with pytest.raises(FileNotFoundError, match="no evaluated checkpoint under"):
        find_archive(str(tmp_path), "best")


def a2c(*args):
    return subprocess.run([sys.executable, "-m", "api.cli", *args], capture_output=True, text=True, timeout=120)


def test_a2c_checkpoints_lists_eval_returns_and_marks_the_best(run_dir):
    result = a2c("checkpoints", str(run_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "eval return" in lines[0] and len(lines) == 1 + len(EVALS)
    marked = [line.split()[0] for line in lines[1:] if line.rstrip().endswith("*")]
    assert marked == ["step-0000002048"]
    row = next(line for line in lines if line.startswith("step-0000002560")).split()
    assert row[2:4] == ["310.0", "30.0"]  # eval return, then training return
    assert next(line for line in lines if line.startswith("step-0000001536")).split()[2] == "-"


def test_listing_checkpoints_reads_manifests_without_importing_torch(run_dir):
    code = ("import sys\nfrom api.cli import main\n"
            f"assert main(['checkpoints', {str(run_dir)!r}]) == 0\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "step-0000002048" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"


def test_a2c_evaluate_takes_best_and_refuses_a_bad_choice_in_one_line(run_dir):
    result = a2c("evaluate", str(run_dir), "--checkpoint", "best", "--episodes", "2")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["checkpoint"].endswith("step-0000002048.tar.gz")
    bad = a2c("evaluate", str(run_dir / "checkpoints" / "step-0000000512.tar.gz"), "--checkpoint", "best")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "names one of a run directory's archives" in bad.stderr


def test_a2c_export_writes_an_onnx_model_of_the_chosen_checkpoint(run_dir, tmp_path):
    import numpy as np
    import onnxruntime as ort

    from learner.policy import obs_tensor
    out = tmp_path / "models" / "policy.onnx"
    result = a2c("export", str(run_dir), "--checkpoint", "best", "--format", "onnx", "-o", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["checkpoint"].endswith("step-0000002048.tar.gz") and summary["opset"] == 17
    assert [p.name for p in out.parent.iterdir()] == ["policy.onnx"]  # no temporary file left behind
    policy = read_checkpoint(summary["checkpoint"]).policy()
    obs = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    expected = policy.act(obs_tensor(obs, policy.spaces), deterministic=True)[0].numpy()
    assert np.array_equal(session.run(["action"], {"obs": obs})[0], expected)
    bad = a2c("export", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "x.onnx"))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a2c_evaluate_with_video_writes_one_mp4_per_episode(run_dir, tmp_path):
    import imageio.v3 as iio
    result = a2c("evaluate", str(run_dir), "--checkpoint", "best", "--episodes", "2", "--video", str(tmp_path / "v"))
    assert result.returncode == 0, result.stderr
    videos = json.loads(result.stdout.strip().splitlines()[-1])["videos"]
    assert [v["path"] for v in videos] == [str(tmp_path / "v" / f"episode-{i}.mp4") for i in range(2)]
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["episode-0.mp4", "episode-1.mp4"]
    assert all(iio.imread(v["path"]).shape[0] == v["frames"] for v in videos)
    # Rendering (pygame) probes no sound device: no ALSA or SDL complaints on the console.
    assert "ALSA" not in result.stderr and "XDG_RUNTIME_DIR" not in result.stderr, result.stderr


def test_downloaded_archives_named_by_job_and_checkpoint_are_found_too(run_dir, tmp_path):
    for step in (512, 1024):
        source = run_dir / "checkpoints" / f"step-{step:010d}.tar.gz"
        (tmp_path / f"0123456789ab-{source.name}").write_bytes(source.read_bytes())
    (tmp_path / "notes.tar.gz").write_bytes(b"not an archive")  # other names are not archives
    assert find_archive(str(tmp_path)).endswith("0123456789ab-step-0000001024.tar.gz")
    assert find_archive(str(tmp_path), "best").endswith("0123456789ab-step-0000001024.tar.gz")
