"""Runner: Stable-Baselines3 A2C with rl-zoo's hyperparameters, one process, writes a RunRecord.

rl-zoo `hyperparams/a2c.yml` for CartPole-v1 is `n_envs: 8, policy: MlpPolicy, ent_coef: 0.0`
over SB3's A2C defaults (n_steps 5, lr 7e-4 RMSprop, gamma 0.99, gae_lambda 1.0, vf_coef 0.5,
max_grad_norm 0.5; separate 64x64 tanh actor and critic nets, as our tuned CartPole policy).
Acrobot-v1 in rl-zoo: n_envs 16, normalize: true, ent_coef 0.0.

    python -m bench.sb3_a2c --env CartPole-v1 --steps 200000 --max-wall-s 240 --out rec.json
"""

from __future__ import annotations

import argparse
import time

LAUNCHED_AT = time.time()

from bench.record import RETURN_WINDOW, CurveClock, write_record  # noqa: E402

ZOO: dict[str, dict] = {
    "CartPole-v1": {"n_envs": 8, "ent_coef": 0.0, "normalize": False},
    "Acrobot-v1": {"n_envs": 16, "ent_coef": 0.0, "normalize": True},
}
"""rl-zoo A2C settings per env (what differs from SB3's A2C defaults)."""


def main(argv: list[str] | None = None) -> None:
    """Train SB3 A2C for --steps env steps (or --max-wall-s of loop time) and write the record."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--max-wall-s", type=float, default=240.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launched-at", type=float, default=LAUNCHED_AT)
    p.add_argument("--out")
    args = p.parse_args(argv)

    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    zoo = ZOO.get(args.env, {"n_envs": 8, "ent_coef": 0.0, "normalize": False})
    clock = CurveClock(args.launched_at)

    class Curve(BaseCallback):
        """Records the 20-episode mean after every rollout; stops at the wall-time cap."""

        def _on_step(self) -> bool:
            return clock.elapsed() < args.max_wall_s

        def _on_rollout_end(self) -> None:
            buf = self.model.ep_info_buffer
            mean = sum(e["r"] for e in buf) / len(buf) if buf else None
            clock.point(self.model.num_timesteps, mean)

    env = make_vec_env(args.env, n_envs=zoo["n_envs"], seed=args.seed)
    if zoo["normalize"]:
        env = VecNormalize(env)  # rl-zoo's `normalize: true`; Monitor still sees raw returns
    model = A2C("MlpPolicy", env, ent_coef=zoo["ent_coef"], seed=args.seed, verbose=0,
                stats_window_size=RETURN_WINDOW)
    clock.start_loop()
    model.learn(total_timesteps=args.steps, callback=Curve())
    record = clock.record(
        "sb3-a2c", args.env, args.seed, model.num_timesteps,
        config={"n_envs": zoo["n_envs"], "n_steps": model.n_steps, "learning_rate": model.learning_rate,
                "ent_coef": zoo["ent_coef"], "gae_lambda": model.gae_lambda, "normalize": zoo["normalize"],
                "net_arch": str(model.policy.net_arch), "torch_threads": __import__("torch").get_num_threads()})
    write_record(record, args.out)


if __name__ == "__main__":
    main()
