"""Runner: RLlib PPO configured as A2C (new API stack), one process tree, writes a RunRecord.

RLlib no longer ships A2C. PPO with one epoch over one full-batch minibatch takes a single
gradient step at ratio pi/pi_old = 1, where the clipped surrogate's gradient is A * grad log pi:
the A2C policy gradient. The clip is set wide anyway, the KL term is off and the value loss is
not clipped. The rest is full-batch A2C as our CartPole-v1 job was first tuned: 256-sample batches, Adam lr 1e-3,
gamma 0.99, lambda 1.0, entropy 0.01, value coef 0.5, grad-norm clip 0.5, separate 64x64 tanh
actor and critic, 2 env runners x 8 envs (like our 2 workers x 8 envs), learner in the driver.

    python -m bench.rllib_ppo --env CartPole-v1 --steps 200000 --max-wall-s 240 --out rec.json
"""

from __future__ import annotations

import argparse
import collections
import os
import time

LAUNCHED_AT = time.time()

from bench.record import RETURN_WINDOW, CurveClock, write_record  # noqa: E402


EPISODE_RETURNS = "bench_episode_returns"
"""Result key (under env_runners) of the returns of the episodes that ended in an iteration."""


def log_episode_return(*, episode, metrics_logger, prev_episode_chunks=None, **kwargs) -> None:
    """Env-runner callback: log every finished episode's whole return, unreduced.

    An episode longer than a rollout fragment arrives in chunks; its return is their sum.
    RLlib's own `episode_return_mean` is not a plain last-20 mean across iterations (it is
    NaN in an iteration where no episode ended), so the driver keeps its own window.
    """
    total = sum(chunk.get_return() for chunk in [episode, *(prev_episode_chunks or [])])
    metrics_logger.log_value(EPISODE_RETURNS, float(total), reduce="item_series")


def build_config(env: str, seed: int, env_runners: int, envs_per_runner: int, batch: int):
    """The PPOConfig that makes RLlib's PPO an A2C (see the module docstring)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return (
        PPOConfig()
        .api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
        .environment(env)
        .env_runners(num_env_runners=env_runners, num_envs_per_env_runner=envs_per_runner)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=batch, minibatch_size=batch, num_epochs=1,
                  shuffle_batch_per_epoch=False, lr=1e-3, gamma=0.99, lambda_=1.0,
                  entropy_coeff=0.01, vf_loss_coeff=0.5, grad_clip=0.5, grad_clip_by="global_norm",
                  clip_param=1e6, vf_clip_param=float("inf"), use_kl_loss=False, kl_coeff=0.0)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64], fcnet_activation="tanh",
                                                   vf_share_layers=False))
        .reporting(metrics_num_episodes_for_smoothing=RETURN_WINDOW)
        .callbacks(on_episode_end=log_episode_return)
        .debugging(seed=seed, log_level="ERROR")
    )


def main(argv: list[str] | None = None) -> None:
    """Train until --steps env steps (or --max-wall-s of loop time) and write the record."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--max-wall-s", type=float, default=240.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-runners", type=int, default=2)
    p.add_argument("--envs-per-runner", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--launched-at", type=float, default=LAUNCHED_AT)
    p.add_argument("--out")
    args = p.parse_args(argv)

    import ray

    clock = CurveClock(args.launched_at)
    ray.init(num_cpus=max(os.cpu_count() or 1, args.env_runners + 1), include_dashboard=False,
             log_to_driver=False)
    config = build_config(args.env, args.seed, args.env_runners, args.envs_per_runner, args.batch)
    algo = config.build_algo()
    steps = 0
    returns: collections.deque[float] = collections.deque(maxlen=RETURN_WINDOW)
    clock.start_loop()
    while steps < args.steps and clock.elapsed() < args.max_wall_s:
        result = algo.train()
        runners = result.get("env_runners", {})
        steps = int(result.get("num_env_steps_sampled_lifetime")
                    or runners.get("num_env_steps_sampled_lifetime", 0))
        finished = runners.get(EPISODE_RETURNS)
        returns.extend(finished if isinstance(finished, list) else [])
        clock.point(steps, sum(returns) / len(returns) if returns else None)
    record = clock.record(
        "rllib-ppo", args.env, args.seed, steps,
        config={"env_runners": args.env_runners, "envs_per_runner": args.envs_per_runner,
                "train_batch": args.batch, "minibatch": args.batch, "num_epochs": 1, "lr": 1e-3,
                "lambda": 1.0, "entropy_coeff": 0.01, "hidden": [64, 64], "vf_share_layers": False,
                "ray": ray.__version__})
    write_record(record, args.out)
    algo.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
