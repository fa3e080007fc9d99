"""Runner: Stable-Baselines3 A2C with CnnPolicy on an Atari id, rl-zoo's settings, one process.

rl-zoo `hyperparams/a2c.yml`, `atari`: AtariWrapper (noop 30, frame skip 4 with max-pool,
episodic life, FIRE at reset, 84x84 grayscale, clipped rewards) through `make_atari_env` with
16 envs, VecFrameStack 4, CnnPolicy, ent_coef 0.01, vf_coef 0.25, RMSpropTFLike with eps 1e-5,
over SB3's A2C defaults (n_steps 5, lr 7e-4, gamma 0.99, gae_lambda 1, max_grad_norm 0.5).
Its envs run in one process (DummyVecEnv), as rl-zoo runs them; `--threads` sets torch's.

    python -m bench.sb3_atari --env PongNoFrameskip-v4 --steps 40000 --threads 2 --out rec.json
"""

from __future__ import annotations

import argparse
import time

LAUNCHED_AT = time.time()

from bench.record import CurveClock, write_record  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Train SB3 A2C for --steps agent steps (or --max-wall-s of loop time); write the record."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="PongNoFrameskip-v4")
    p.add_argument("--steps", type=int, default=40_000, help="agent steps (4 frames each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--max-wall-s", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launched-at", type=float, default=LAUNCHED_AT)
    p.add_argument("--out")
    args = p.parse_args(argv)

    import ale_py
    import gymnasium as gym
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    torch.set_num_threads(args.threads)
    clock = CurveClock(args.launched_at)

    class Curve(BaseCallback):
        """Records the mean of the last 100 games after every rollout; stops at the wall cap."""

        def _on_step(self) -> bool:
            return clock.elapsed() < args.max_wall_s

        def _on_rollout_end(self) -> None:
            buf = self.model.ep_info_buffer
            clock.point(self.model.num_timesteps, sum(e["r"] for e in buf) / len(buf) if buf else None)

    env = VecFrameStack(make_atari_env(args.env, n_envs=16, seed=args.seed), n_stack=4)
    model = A2C("CnnPolicy", env, ent_coef=0.01, vf_coef=0.25, seed=args.seed, verbose=0,
                policy_kwargs={"optimizer_class": RMSpropTFLike, "optimizer_kwargs": {"eps": 1e-5}})
    clock.start_loop()
    model.learn(total_timesteps=args.steps, callback=Curve())
    record = clock.record("sb3-a2c", args.env, args.seed, model.num_timesteps, config={
        "n_envs": 16, "n_steps": model.n_steps, "frame_stack": 4, "policy": "CnnPolicy",
        "optimizer": "RMSpropTFLike(eps=1e-5)", "ent_coef": 0.01, "vf_coef": 0.25,
        "torch_threads": torch.get_num_threads(), "vec_env": type(env.venv).__name__})
    write_record(record, args.out)


if __name__ == "__main__":
    main()
