"""Tuned A2C hyperparameters per env id, applied only to fields the user left unset.

As rl-zoo keeps `hyperparams/a2c.yml`: the seed's values stay `A2CConfig`'s defaults; this table
fills in what a user did not choose, and the run's saved config lists what it filled in
(`tuned`). `--no-tuned` / `"use_tuned": false` turns it off.
"""

from __future__ import annotations

from typing import Any

TUNED: dict[str, dict[str, dict[str, Any]]] = {
    # Seed defaults (2048-sample batches in 64 off-policy mini-batch steps) reach ~60-300 at
    # 200k steps and can collapse to a one-action policy (return ~9) when a rare failure
    # yields large negative advantages. Classic full-batch A2C on 256-sample batches, Monte
    # Carlo advantages and a separate value torso reached 465-500 on seeds 0-3 (200k steps,
    # 2 workers x 8 envs); see the notes of issue 2 for the sweep.
    "CartPole-v1": {
        "a2c": {"steps_per_batch": 256, "mini_batch_size": None, "learning_rate": 1e-3,
                "gae_lambda": 1.0},
        "policy": {"share_torso": False},
    },
}
"""env id -> {"a2c": {field: value}, "policy": {field: value}}"""
