"""Rollout workers: gymnasium vector envs stepped with a CPU copy of the policy."""
