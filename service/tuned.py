"""Tuned A2C hyperparameters per env id, applied only to fields the user left unset.

As rl-zoo keeps `hyperparams/a2c.yml`: the seed's values stay `A2CConfig`'s defaults; this table
fills in what a user did not choose, and the run's saved config lists what it filled in.
"""

from __future__ import annotations

from typing import Any

TUNED: dict[str, dict[str, dict[str, Any]]] = {}
"""env id -> {"a2c": {field: value}, "policy": {field: value}}"""
