"""MuJoCo envs: built quietly in any process (no notice per env about gymnasium's model files),
while MuJoCo's other warnings still reach Python's `warnings`, once per distinct message."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="needs the mujoco extra: pip install -e '.[mujoco]'")

REPO = Path(__file__).resolve().parents[2]
NOTICE = "compiler attribute 'settotalmass' is deprecated"


def _run(code: str, cwd: Path) -> str:
    """stdout and stderr of `code` run in a fresh Python process in `cwd` (MuJoCo prints from C,
    so its output is only seen from outside the process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=True)
    return done.stdout + done.stderr


def test_half_cheetah_envs_are_built_without_the_compiler_notice_and_other_warnings_show_once(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "ours").mkdir()
    plain = _run("""
        import gymnasium as gym
        gym.make("HalfCheetah-v5").close()
    """, tmp_path / "plain")
    if NOTICE not in plain:
        pytest.skip("gymnasium's half_cheetah.xml no longer sets a deprecated compiler attribute")
    ours = _run("""
        import numpy as np
        from workers.env import describe_spaces, make_vec_env
        describe_spaces("HalfCheetah-v5")
        env = make_vec_env("HalfCheetah-v5", 3)
        env.reset(seed=0)
        for sub in env.envs:  # an unstable simulation: MuJoCo warns in each of the 3 envs
            sub.unwrapped.data.qvel[:] = 1e12
        env.step(np.zeros((3, 6)))
        print("stepped")
    """, tmp_path / "ours")
    assert "stepped" in ours
    assert NOTICE not in ours
    assert ours.count("MuJoCo: Nan, Inf or huge value in QVEL") == 1, ours
    # MuJoCo's own handler also appends every warning to MUJOCO_LOG.TXT in the working directory.
    assert (tmp_path / "plain" / "MUJOCO_LOG.TXT").exists()
    assert not (tmp_path / "ours" / "MUJOCO_LOG.TXT").exists()


def test_a_half_cheetah_vector_env_steps_and_truncates_at_1000_with_the_final_obs():
    from workers.env import make_vec_env
    env = make_vec_env("HalfCheetah-v5", 2)
    obs, _ = env.reset(seed=[0, 1])
    for t in range(1000):
        obs, reward, terminated, truncated, info = env.step(np.zeros((2, 6)))
        assert not terminated.any()
        assert truncated.all() == (t == 999)
    assert np.stack(info["final_obs"]).shape == (2, 17) and obs.shape == (2, 17)


def test_a_mujoco_id_without_mujoco_installed_is_refused_on_env_with_the_pip_command(tmp_path):
    out = _run("""
        import sys
        sys.modules["mujoco"] = None  # import mujoco now raises ImportError, as when not installed
        from service.run.spec import InvalidSpec, build_spec
        from service.run.spec import job_spaces
        try:
            job_spaces(build_spec({"env": "Hopper-v5"}))
        except InvalidSpec as exc:
            print("refused", exc.field, "|", exc.message)
    """, tmp_path)
    assert "refused env |" in out and "pip install 'a2c-service[mujoco]'" in out, out
