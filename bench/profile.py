"""Where an env step's time goes in our pipeline, measured in-process (no Ray) and with py-spy.

In-process: `RolloutWorker.sample` with timers around the policy's forward pass (`act`), the
vector env's `step`, and the value calls for truncated/bootstrap observations; the rest of
`sample` is the worker's own bookkeeping. `Learner.update` is timed on the same rollouts. The
raw step rate of the env alone (random actions) is measured for gymnasium's `SyncVectorEnv`,
for the env's batched `vector_entry_point` (CartPoleVectorEnv), and for what workers use.

    python -m bench.profile                 # in-process breakdown, prints JSON
    python -m bench.profile --py-spy 15     # also py-spy a 2x8 CLI run for 15 s (all processes)
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class _Timed:
    """Wraps a callable and adds its wall time to a shared counter."""

    def __init__(self, fn, totals: dict[str, float], key: str) -> None:
        self.fn, self.totals, self.key = fn, totals, key

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.key] += time.perf_counter() - t


def sample_breakdown(num_envs: int, steps_per_env: int, rollouts: int = 20,
                     env_id: str = "CartPole-v1") -> dict[str, Any]:
    """Microseconds per env step inside `RolloutWorker.sample`, by part, plus `Learner.update`."""
    import torch

    from learner.config import A2CConfig, PolicyConfig
    from learner.learner import Learner
    from workers.env import describe_spaces
    from workers.worker import RolloutWorker

    spaces = describe_spaces(env_id)
    policy = PolicyConfig(share_torso=False)
    n_steps = num_envs * steps_per_env
    learner = Learner(spaces, policy, A2CConfig(steps_per_batch=2 * n_steps, mini_batch_size=None,
                                                learning_rate=1e-3, gae_lambda=1.0), 10**9, 0, "cpu")
    worker = RolloutWorker(env_id, {}, num_envs, steps_per_env, spaces, policy, 0, 0)
    weights = learner.weights()
    worker.sample(weights)  # warm-up
    totals: dict[str, float] = collections.defaultdict(float)
    worker.policy.act = _Timed(worker.policy.act, totals, "policy_act")
    worker.policy.value = _Timed(worker.policy.value, totals, "policy_value")
    worker.env.step = _Timed(worker.env.step, totals, "env_step")
    sample_s, update_s = [], []
    for _ in range(rollouts):
        t = time.perf_counter()
        a, _ = worker.sample(weights)
        b, _ = worker.sample(weights)
        sample_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        learner.update(a, b)
        update_s.append(time.perf_counter() - t)
    per = 1e6 / (2 * rollouts * n_steps)
    parts = {k: round(v * per, 2) for k, v in totals.items()}
    measured = sum(sample_s) / (2 * rollouts * n_steps) * 1e6
    parts["worker_other"] = round(measured - sum(parts.values()), 2)
    return {"num_envs": num_envs, "steps_per_env": steps_per_env, "torch_threads": torch.get_num_threads(),
            "sample_us_per_step": round(measured, 2), "parts_us_per_step": parts,
            "update_us_per_step": round(statistics.median(update_s) / (2 * n_steps) * 1e6, 2),
            "in_process_steps_per_s_one_core": round(1e6 / (measured + statistics.median(update_s)
                                                            / (2 * n_steps) * 1e6))}


def env_step_rates(num_envs: list[int], env_id: str = "CartPole-v1", seconds: float = 1.0) -> list[dict]:
    """Env steps/s of the vector env alone with fixed actions: gymnasium's SyncVectorEnv of
    single envs, its batched `vector_entry_point` (NEXT_STEP reset), and what workers use
    (`workers.env.make_vec_env`: for CartPole, the batched env with SAME_STEP reset)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    from workers.env import make_vec_env
    makers = {
        "sync_same_step": lambda n: gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                                                 vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}),
        "vector_entry_point": lambda n: gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point"),
        "workers_make_vec_env": lambda n: make_vec_env(env_id, n),
    }
    out = []
    for n in num_envs:
        row: dict[str, Any] = {"num_envs": n}
        for mode, make in makers.items():
            env = make(n)
            env.reset(seed=0)
            actions = np.random.default_rng(0).integers(0, 2, (4096, n))
            k, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                env.step(actions[k % 4096])
                k += 1
            row[mode] = round(k * n / (time.perf_counter() - t0))
            env.close()
        out.append(row)
    return out


def _lean_act(policy, obs, generator):
    """What `act` computes for Discrete actions, without building a torch Distribution: the
    lower bound a leaner forward pass could reach (a measurement aid, not used in training)."""
    import torch
    logits = policy.action_head(policy.torso(obs))
    logp_all = torch.log_softmax(logits, -1)
    action = torch.multinomial(logp_all.exp(), 1, generator=generator)
    value = policy.value_head(policy.value_torso(obs) if policy.value_torso is not None
                              else policy.torso(obs)).squeeze(-1)
    return action.squeeze(-1), logp_all.gather(-1, action).squeeze(-1), value


def policy_forward_rates(batches: list[int]) -> list[dict]:
    """Microseconds per call of `ActorCritic.act` (inference mode, 1 thread) by batch, beside
    the same computation without torch.distributions (`_lean_act`) and the numpy policy that
    rollout workers act with (`learner.acting.NumpyPolicy`, "numpy")."""
    import torch

    from learner.acting import NumpyPolicy
    from learner.config import PolicyConfig
    from learner.policy import ActorCritic, numpy_state
    from learner.spaces import SpacesSpec
    torch.set_num_threads(1)
    spaces, config = SpacesSpec(obs_shape=(4,), action_type="discrete", action_n=2), PolicyConfig(share_torso=False)
    policy = ActorCritic(spaces, config).eval()
    numpy_policy = NumpyPolicy(spaces, config, seed=0)
    numpy_policy.load_weights(numpy_state(policy))
    gen = torch.Generator().manual_seed(0)
    out = []
    for b in batches:
        obs = torch.randn(b, 4)
        obs_np = obs.numpy()
        row: dict[str, Any] = {"batch": b}
        for name, fn in (("act", lambda: policy.act(obs, generator=gen)),
                         ("lean", lambda: _lean_act(policy, obs, gen)),
                         ("numpy", lambda: numpy_policy.act(obs_np))):
            with torch.inference_mode():
                for _ in range(20):
                    fn()
                k, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < 0.5:
                    fn()
                    k += 1
            row[f"{name}_us_per_call"] = round((time.perf_counter() - t0) / k * 1e6, 1)
        out.append(row)
    return out


def py_spy_run(seconds: float, workers: int = 2, envs: int = 8) -> dict[str, Any]:
    """py-spy (all processes of a CLI run) for `seconds`: the share of samples per process role
    and its top functions (leaf frames and selected inclusive frames)."""
    from bench.ours import REPO, train_command
    with tempfile.TemporaryDirectory(prefix="a2c-prof-") as tmp:
        out = Path(tmp) / "run"
        cmd = train_command("CartPole-v1", 50_000_000, 0, workers, envs, out)
        raw = Path(tmp) / "stacks.txt"
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            for _ in range(600):  # wait for the loop to start: then actors exist
                if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size:
                    break
                time.sleep(0.1)
            subprocess.run(["py-spy", "record", "--subprocesses", "--idle", "-r", "200", "-d",
                            str(int(seconds)), "-f", "raw", "-o", str(raw), "-p", str(proc.pid)],
                           check=True, capture_output=True)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return summarize_stacks(raw.read_text())


# Inclusive frames worth reporting per role (function names as py-spy prints them).
MARKERS = {
    "worker": ("sample", "act", "step", "value", "clip_action", "load_weights", "set_weights"),
    "learner": ("update", "_batch", "gae", "a2c_loss", "backward", "step", "weights", "numpy_state"),
    "driver": ("run", "_get", "_row", "metrics", "wait", "get"),
}


def summarize_stacks(text: str) -> dict[str, Any]:
    """Per process role: samples, idle share, top leaf functions, inclusive time of MARKERS."""
    roles: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        proc = frames[0]
        role = ("learner" if "Learner" in proc else "worker" if "RolloutWorker" in proc
                else "driver" if "api.cli" in proc or "service.train" in proc or "api/cli" in proc else "other")
        r = roles.setdefault(role, {"samples": 0, "leaf": collections.Counter(),
                                    "inclusive": collections.Counter(), "processes": set()})
        n = int(count)
        r["samples"] += n
        r["processes"].add(proc)
        names = [f.split(" (")[0] for f in frames[1:]]
        r["leaf"][frames[-1]] += n
        for m in MARKERS.get(role, ()):
            if m in names:
                r["inclusive"][m] += n
    out = {}
    for role, r in roles.items():
        total = r["samples"] or 1
        out[role] = {"samples": r["samples"], "processes": len(r["processes"]),
                     "top_leaf": [(f[:110], round(100 * c / total, 1)) for f, c in r["leaf"].most_common(8)],
                     "inclusive_pct": {k: round(100 * c / total, 1) for k, c in r["inclusive"].items()}}
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the in-process breakdown (and optionally py-spy's view of a live run) as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--py-spy", type=float, default=0, metavar="SECONDS")
    args = p.parse_args(argv)
    result = {
        "sample_breakdown": [sample_breakdown(8, 16), sample_breakdown(64, 16, 10),
                             sample_breakdown(256, 16, 5)],
        "env_step_rates": env_step_rates([8, 64, 256]),
        "policy_forward": policy_forward_rates([8, 64, 256, 1024]),
    }
    if args.py_spy:
        result["py_spy"] = py_spy_run(args.py_spy)
    json.dump(result, sys.stdout, indent=1, default=str)
    print()


if __name__ == "__main__":
    main()
