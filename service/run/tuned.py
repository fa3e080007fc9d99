"""Tuned A2C hyperparameters per env id, applied only to fields the user left unset.

As rl-zoo keeps `hyperparams/a2c.yml` (with its `n_envs`): the seed's values stay
`A2CConfig`'s defaults; this table fills in what a user did not choose (A2C and policy fields,
and top-level fields such as `envs_per_worker`), and the run's saved config lists what it
filled in (`tuned`). `--no-tuned` / `"use_tuned": false` turns it off. An id without an entry
of its own takes its family's (`FAMILIES`: every Atari id shares one, as in rl-zoo).
"""

from __future__ import annotations

from typing import Any, Callable

MUJOCO: dict[str, Any] = {
    "envs_per_worker": 8,
    "a2c": {"steps_per_batch": 80, "mini_batch_size": None, "optimizer": "rmsprop", "learning_rate": 7e-4,
            "learning_rate_schedule": "linear", "gae_lambda": 0.95, "entropy_coef": 0.0,
            "normalize_rewards": True},
    "policy": {"share_torso": False, "log_std_init": -2.0, "normalize_observations": True},
}
"""MuJoCo locomotion: rl-zoo's A2C recipe (SB3's A2C defaults: RMSprop at 7e-4, no entropy
bonus, separate 64x64 tanh torsos; normalised observations and rewards), in batches of
2 workers x 8 envs x 5 steps, with GAE 0.95, a linear learning rate and an initial log-std of -2
(from rl-zoo's PyBullet A2C and MuJoCo PPO recipes). See docs/workloads.md."""

TUNED: dict[str, dict[str, Any]] = {
    # Seed defaults (2048-sample batches in 64 off-policy mini-batch steps) reach ~60-300 at
    # 200k steps and can collapse to a one-action policy. Full-batch A2C alone (256 samples,
    # Monte Carlo advantages, separate value torso) reached 475 but fell back on 2-3 of 5
    # seeds: its value head could not follow returns of up to 100 (explained variance ~0).
    # Normalised rewards and observations fixed that; 512-sample batches from 2 workers x 16
    # envs on the batched CartPole then reached 475 in 31-77k steps on seeds 0-4, ending at
    # 500 on four of them and 445 on one (200k steps). See the notes of issues 2 and 5.
    # At a constant 2e-3 the final policy did not hold (issue 22): seed 0 evaluated 500 from
    # 15k to 56k steps and ended at 184 (100k); Adam keeps taking full-size steps on the noise
    # of a solved task. bench/cartpole_stability.py (seeds 0-4 x 100k, 150k, 200k, final
    # checkpoint over 20 deterministic episodes), runs whose final evaluation reached 475:
    #   RMSprop, 3e-3 annealed linearly to 0, GAE 0.95 (this entry)  15 of 15
    #   the same with Monte Carlo advantages (GAE 1.0)              14 of 15 (worst 284)
    #   GAE 1.0 with Adam (the entry until 2026-12-06)              13 of 15 (worst 256, 309)
    #   GAE 1.0, RMSprop without the entropy bonus (rl-zoo's)       13 of 15 (worst 341, 434)
    #   GAE 1.0, Adam, the entropy bonus annealed to 0 too          11 of 15 (worst 224)
    #   GAE 1.0, 4e-3 linear, no entropy bonus                       7 of 15
    #   GAE 1.0, Adam eps 1e-3                                      at most 11 (4 under 475 in 13)
    # With GAE 1.0, on the runs of the 15 that failed (runs are deterministic for a seed and
    # budget, so screens on them are exact): value_coef 0.25 failed seed 4 at 100k (213),
    # max_grad_norm 0.25 seed 2 (325), 128x128 torsos seed 0 (428), 2.5e-3 seed 3 (280); gamma
    # 0.98, 32 envs per worker and TensorFlow's RMSprop failed too. GAE 0.95's advantages, less
    # noisy than Monte Carlo returns, keep the solved policy from drifting late in training.
    # RMSprop is SB3's A2C optimizer; this is torch's (alpha 0.99, eps 1e-5, SB3's values).
    # bench/results/cartpole-stability-{6fa9503-dirty,rmsprop-045834e,rmsprop-ent0-045834e,
    # 509036b,a9a0a47,f5af050,9f074ec}.json; docs/configuration.md.
    "CartPole-v1": {
        "envs_per_worker": 16,
        "a2c": {"steps_per_batch": 512, "mini_batch_size": None, "optimizer": "rmsprop", "learning_rate": 3e-3,
                "learning_rate_schedule": "linear", "gae_lambda": 0.95, "normalize_rewards": True},
        "policy": {"share_torso": False, "normalize_observations": True},
    },
    # Seed defaults stay near the random policy's -1400. Without gSDE, the best found (128-sample
    # batches, lr 1e-3, a state-independent log-std from -1) ended at -485 at rl-zoo's 1M steps.
    # rl-zoo's own recipe (8 envs x 8 steps, gamma 0.9, gae 0.9, vf 0.4, no entropy bonus,
    # normalisation, gSDE from log-std -2), with Adam at a constant 1e-3 for its RMSprop at a
    # linear 7e-4: -257, -205, -224 at 1M on seeds 0-2 (20-episode means; deterministic eval
    # -184, -192, -155; rl-zoo's A2C: -163). At a linear 7e-4, seed 0 ended at -322.
    "Pendulum-v1": {
        "envs_per_worker": 4,
        "a2c": {"steps_per_batch": 64, "mini_batch_size": None, "learning_rate": 1e-3, "gamma": 0.9,
                "gae_lambda": 0.9, "value_coef": 0.4, "entropy_coef": 0.0, "normalize_rewards": True},
        "policy": {"share_torso": False, "log_std_init": -2.0, "use_sde": True, "normalize_observations": True},
    },
    # Seed defaults end at -500 (never swinging up) at rl-zoo's 500k budget. rl-zoo's own
    # recipe (16 envs, normalised observations and rewards, no entropy bonus) in full-batch A2C
    # with 256-sample batches from 2 workers x 16 envs: -80.5, -84.2, -78.0 at 500k on seeds 0-2
    # (rl-zoo's A2C: -83). See the notes of issue 5.
    "Acrobot-v1": {
        "envs_per_worker": 16,
        "a2c": {"steps_per_batch": 256, "mini_batch_size": None, "learning_rate": 1e-3,
                "gae_lambda": 0.95, "entropy_coef": 0.0, "normalize_rewards": True},
        "policy": {"share_torso": False, "normalize_observations": True},
    },
    # rl-zoo's values (gamma 0.995, entropy 1e-5, a linear learning rate) with 2 workers x 8 envs
    # and 128-sample batches ended at -47 at 200k without normalisation; with normalised
    # observations and rewards, gae_lambda 0.95 and a 2e-3 start: 229.1, 228.7, 67.4 at 200k on
    # seeds 0-2 (rl-zoo's A2C: 156; seed 2 started at -391 and was still climbing).
    "LunarLander-v3": {
        "envs_per_worker": 8,
        "a2c": {"steps_per_batch": 128, "mini_batch_size": None, "learning_rate": 2e-3,
                "learning_rate_schedule": "linear", "gamma": 0.995, "gae_lambda": 0.95,
                "entropy_coef": 1e-5, "normalize_rewards": True},
        "policy": {"share_torso": False, "normalize_observations": True},
    },
    # rl-zoo's MuJoCo entries (HalfCheetah-v4: &mujoco-defaults in hyperparams/a2c.yml: SB3's A2C
    # defaults plus normalize) in batches of 80 instead of 5, with GAE 0.95 and a linear
    # learning rate. Seed defaults sit at -600 (Gaussian means far outside the action bounds);
    # rl-zoo's log-std of 0 was near 0 at 250k steps, -2 at 3132 at 300k. At 1M on seeds 0-2:
    # deterministic eval 5308, 3529, 3809 (last-20-episode return 4891, 2874, 2930; rl-zoo's
    # A2C: 3041). bench/results/mujoco-halfcheetah-698899f.json, docs/workloads.md.
    "HalfCheetah-v5": MUJOCO,
    # The same with Tianshou's MuJoCo A2C values: an entropy bonus of 0.01, log-std -0.5, gamma
    # 0.99; the bonus annealed linearly to 0. At 1M on seeds 0-5, final deterministic evals
    # 853, 1562, 1362, 435, 1020, 1026 (mean 1043, median 1023; rl-zoo's A2C: 733); with the
    # bonus kept constant 1356, 968, 417, 586, 1591, 1023 (mean 990: not distinguishable,
    # Mann-Whitney p = 0.82); the entry before both (gamma 0.98, log-std -1, no entropy bonus),
    # on the same seeds and code, 310, 395, 1013, 533, 270, 323 (mean 474, p = 0.026 against the
    # constant bonus): it stands on the spot (~1000) or lunges and falls (~300-500) within 50k
    # steps and stays. The bonus keeps exploring, and most seeds leave standing after 500k
    # steps; runs stay unstable (best evals up to 2332, final ones down to 435).
    # bench/results/mujoco-hopper-{entlinear-833169b,tianshou-87dbddb,tianshou-seeds345-fa1c307,
    # 1998280,seeds345-2dcaf2b}.json, docs/workloads.md.
    "Hopper-v5": {**MUJOCO, "a2c": {**MUJOCO["a2c"], "entropy_coef": 0.01, "entropy_coef_schedule": "linear"},
                  "policy": {**MUJOCO["policy"], "log_std_init": -0.5}},
}
"""env id -> {"a2c": {field: value}, "policy": {field: value}, top-level JobSpec field: value}"""

ATARI: dict[str, Any] = {
    # rl-zoo's `atari` entry of hyperparams/a2c.yml over SB3's A2C defaults: 16 envs of 5 steps
    # (80-sample full batches), ent_coef 0.01, vf_coef 0.25, TensorFlow-style RMSprop
    # (RMSpropTFLike) with eps 1e-5, gamma 0.99, gae_lambda 1.0, max_grad_norm 0.5, and SB3's
    # constant learning rate 7e-4. A rate annealed linearly to 0 (OpenAI baselines') learned
    # Pong far more slowly: 6.2 against 16.2 over the last 100 games at 40M frames, seed 0,
    # async 1 x 16 bfloat16 (bench/results/pong-async-bf16-1x16{,-constlr}-*.json,
    # docs/workloads.md). torch's RMSprop is known not to learn Pong with these
    # settings (SB3 #110, #1917). An update is 80 steps, so the job's cadence is set in updates
    # to match: a checkpoint every 200k steps, an evaluation of 10 full games every 400k.
    # The 16 envs run as 1 worker in async mode (the learner's update overlaps the next
    # rollout: policy lag <= 1), the layout that reached rl-zoo's score here (two seeds of Pong
    # at 40M frames, bfloat16 convolutions: 17.0 and 18.2 over 30 games of the final policy,
    # sampled; rl-zoo 17.3). In the loop it ran 2.05-2.08x SB3's frames/s with bfloat16
    # convolutions (JobSpec.cnn_precision auto, where the CPU has units for them) and 1.54x in
    # float32 (c621529); exact sync A2C in 2 x 8 float32 ran 0.85-1.09x and has no 40M-frame run
    # (`--mode sync`). docs/workloads.md, bench/results/atari-fps-2core-epyc-{c621529,4d9008a}.json.
    "mode": "async",
    "workers": 1,
    "envs_per_worker": 16,
    "checkpoint_every": 2500,
    "eval_every": 5000,
    "a2c": {"steps_per_batch": 80, "mini_batch_size": None, "learning_rate": 7e-4,
            "learning_rate_schedule": "constant", "gamma": 0.99,
            "gae_lambda": 1.0, "entropy_coef": 0.01, "value_coef": 0.25, "max_grad_norm": 0.5,
            "optimizer": "rmsprop_tf", "optimizer_eps": 1e-5},
    "policy": {"torso": "nature_cnn", "share_torso": True},
}
"""The tuned entry of every Atari id (ALE/*-v5, *NoFrameskip-v4, ...)."""


def _is_atari(env_id: str) -> bool:
    from workers.env import UnknownEnvironment, check_env_id
    from workers.atari import is_atari
    try:
        check_env_id(env_id)  # registers ale-py's ids on first need
    except UnknownEnvironment:
        return False
    return is_atari(env_id)


FAMILIES: dict[str, tuple[Callable[[str], bool], dict[str, Any]]] = {"atari": (_is_atari, ATARI)}
"""family name -> (which ids belong to it, their tuned entry)."""


def tuned_for(env_id: str) -> dict[str, Any]:
    """The tuned entry of an env id: its own, else its family's, else none ({})."""
    if env_id in TUNED:
        return TUNED[env_id]
    return next((values for matches, values in FAMILIES.values() if matches(env_id)), {})
