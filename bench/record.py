"""What one benchmark run reports, and how its numbers are derived from a learning curve.

Every runner (ours through the CLI, SB3, RLlib) ends up as a `RunRecord`: start-up time (from
process launch to the first env step of the training loop), the training loop's wall time and
env steps, and the curve of (loop seconds, env steps, mean return of the last 20 episodes).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RETURN_WINDOW = 20
"""Episode returns are averaged over the last this many finished episodes, for every runner."""


@dataclass
class RunRecord:
    """One training run of one library, as measured by its runner and the parent's monitor."""

    runner: str
    env: str
    seed: int
    steps: int = 0
    """Env steps taken in the training loop."""
    loop_wall_s: float = 0.0
    """Wall time of the training loop: start-up and teardown excluded."""
    startup_s: float = 0.0
    """Process launch to the first env step of the loop: imports, Ray start, actors, envs."""
    process_wall_s: float | None = None
    """Process launch to process exit: what a user of the command waits for, in all."""
    curve: list[tuple[float, int, float | None]] = field(default_factory=list)
    """(loop seconds, env steps, mean of the last 20 episode returns), one point per update."""
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Runner-specific numbers (e.g. ours: actor start-up as the CLI reports it)."""
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    error: str | None = None

    @property
    def env_steps_per_s(self) -> float | None:
        """Env steps per second of the training loop (start-up excluded)."""
        return self.steps / self.loop_wall_s if self.loop_wall_s > 0 else None

    @property
    def final_return_mean(self) -> float | None:
        """Mean of the last 20 episode returns at the end of training."""
        return self.curve[-1][2] if self.curve else None

    def time_to(self, target: float) -> tuple[float, int] | None:
        """(loop seconds, env steps) when the 20-episode mean first reached `target`, or None."""
        for wall_s, steps, mean in self.curve:
            if mean is not None and mean >= target:
                return wall_s, steps
        return None

    def summary(self, target: float | None) -> dict[str, Any]:
        """The record's headline numbers, as the table and the JSON results show them.

        `launch_to_target_s` and `process_wall_s` count from process launch; `time_to_target_s`
        and `env_steps_per_s` count the training loop only (start-up excluded)."""
        reached = self.time_to(target) if target is not None else None
        return {
            "runner": self.runner, "env": self.env, "seed": self.seed, "steps": self.steps,
            "env_steps_per_s": _round(self.env_steps_per_s), "startup_s": _round(self.startup_s, 2),
            "loop_wall_s": _round(self.loop_wall_s, 2), "process_wall_s": _round(self.process_wall_s, 2),
            "launch_to_target_s": _round(self.startup_s + reached[0], 2) if reached else None,
            "time_to_target_s": _round(reached[0], 2) if reached else None,
            "steps_to_target": reached[1] if reached else None,
            "final_return_mean": _round(self.final_return_mean, 1),
            "peak_rss_mb": _round(self.peak_rss_mb), "peak_pss_mb": _round(self.peak_pss_mb),
            "load_before": self.load_before, "load_after": self.load_after, "error": self.error,
            **({"extra": self.extra} if self.extra else {}),
        }

    def to_json(self) -> str:
        """The whole record (curve included) as JSON."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        """A record written by `to_json`."""
        data = json.loads(text)
        data["curve"] = [tuple(p) for p in data.get("curve", [])]
        return cls(**data)


def _round(value: float | None, digits: int = 0) -> float | None:
    return None if value is None else round(float(value), digits)


def thin(curve: list[tuple[float, int, float | None]], points: int = 60) -> list:
    """At most `points` evenly spaced points of a curve (first and last kept): small JSON files."""
    if len(curve) <= points:
        return list(curve)
    stride = (len(curve) - 1) / (points - 1)
    return [curve[round(i * stride)] for i in range(points)]


class CurveClock:
    """A runner's clock: loop start, and one curve point per update, relative to that start."""

    def __init__(self, launched_at: float) -> None:
        self.launched_at = launched_at
        self.loop_t0: float | None = None
        self.curve: list[tuple[float, int, float | None]] = []

    def start_loop(self) -> None:
        """Mark the first env step of the training loop."""
        self.loop_t0 = time.monotonic()
        self.loop_started_at = time.time()

    def elapsed(self) -> float:
        """Seconds since the loop started."""
        return time.monotonic() - self.loop_t0

    def point(self, steps: int, mean: float | None) -> None:
        """Record (now, steps, mean return of the last 20 episodes)."""
        self.curve.append((round(self.elapsed(), 4), int(steps), mean))

    def record(self, runner: str, env: str, seed: int, steps: int, config: dict[str, Any],
               extra: dict[str, Any] | None = None) -> RunRecord:
        """The finished run; call right after the loop ends."""
        return RunRecord(runner, env, seed, steps=int(steps), loop_wall_s=self.elapsed(),
                         startup_s=self.loop_started_at - self.launched_at, curve=self.curve,
                         config=config, extra=extra or {})


def write_record(record: RunRecord, path: str | None) -> None:
    """Write a runner's record to `path` (the parent reads it), or to stdout."""
    if path:
        Path(path).write_text(record.to_json())
    else:
        sys.stdout.write(record.to_json() + "\n")
