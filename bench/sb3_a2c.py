"""Runner: Stable-Baselines3 A2C with rl-zoo's hyperparameters, one process, writes a RunRecord.

rl-zoo `hyperparams/a2c.yml` for CartPole-v1 is `n_envs: 8, policy: MlpPolicy, ent_coef: 0.0`
over SB3's A2C defaults (n_steps 5, lr 7e-4 RMSprop, gamma 0.99, gae_lambda 1.0, vf_coef 0.5,
max_grad_norm 0.5; separate 64x64 tanh actor and critic nets, as our tuned CartPole policy).
Acrobot-v1 in rl-zoo: n_envs 16, normalize: true, ent_coef 0.0.

Nothing runs in SB3's hot path but SB3: no callback (a callback is called at every vector
step). The learning curve is rebuilt afterwards from what each env's `Monitor` kept of its
episodes (end time, return, length), and torch runs with `--threads` threads, which the record
states.

    python -m bench.sb3_a2c --env CartPole-v1 --steps 200000 --threads 1 --out rec.json
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


def monitor_curve(monitors: list, n_envs: int, loop_started_at: float) -> list[tuple[float, int, float | None]]:
    """(loop seconds, env steps, mean of the last 20 returns) at each episode end, over every env.

    Each Monitor records its episodes' returns, lengths and end times (seconds since it was
    made); the vector env steps all envs together, so when an env has taken k steps, the run
    has taken about n_envs * k.
    """
    ends = []
    for monitor in monitors:
        steps = 0
        for ret, length, t in zip(monitor.get_episode_rewards(), monitor.get_episode_lengths(),
                                  monitor.get_episode_times()):
            steps += length
            ends.append((monitor.t_start + t - loop_started_at, steps * n_envs, ret))
    ends.sort()
    curve, window = [], []
    for wall_s, steps, ret in ends:
        window = (window + [ret])[-RETURN_WINDOW:]
        curve.append((round(wall_s, 4), steps, sum(window) / len(window)))
    return curve


def main(argv: list[str] | None = None) -> None:
    """Train SB3 A2C for --steps env steps and write the record."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--threads", type=int, default=1, help="torch threads (stated in the record)")
    p.add_argument("--max-wall-s", type=float, default=240.0, help="unused: the parent enforces it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--launched-at", type=float, default=LAUNCHED_AT)
    p.add_argument("--out")
    args = p.parse_args(argv)

    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(args.threads)
    zoo = ZOO.get(args.env, {"n_envs": 8, "ent_coef": 0.0, "normalize": False})
    clock = CurveClock(args.launched_at)
    env = make_vec_env(args.env, n_envs=zoo["n_envs"], seed=args.seed)
    monitors = list(env.envs)  # make_vec_env wraps each env in a Monitor: the raw returns
    if zoo["normalize"]:
        env = VecNormalize(env)  # rl-zoo's `normalize: true`; Monitor still sees raw returns
    model = A2C("MlpPolicy", env, ent_coef=zoo["ent_coef"], seed=args.seed, verbose=0,
                stats_window_size=RETURN_WINDOW)
    clock.start_loop()
    model.learn(total_timesteps=args.steps)
    record = clock.record(
        "sb3-a2c", args.env, args.seed, model.num_timesteps,
        config={"n_envs": zoo["n_envs"], "n_steps": model.n_steps, "learning_rate": model.learning_rate,
                "ent_coef": zoo["ent_coef"], "gae_lambda": model.gae_lambda, "normalize": zoo["normalize"],
                "net_arch": str(model.policy.net_arch), "torch_threads": torch.get_num_threads(),
                "callbacks": None})
    record.curve = monitor_curve(monitors, zoo["n_envs"], clock.loop_started_at)
    write_record(record, args.out)


if __name__ == "__main__":
    main()
