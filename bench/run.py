"""One command for the whole benchmark: ours vs SB3 A2C vs RLlib PPO-as-A2C, on this machine.

    python -m bench.run --quick      # ~3 min: every runner and section on tiny budgets
    python -m bench.run              # ~45 min: comparison, scaling, learner, sample efficiency, 10-min soak
    python -m bench.run --only compare --seeds 0 1 2

Each runner is its own process tree (ours: `python -m api.cli train`), launched one after
another, so they never compete with each other; the machine's load average is recorded before
and after each run, because nothing else is stopped. The headline figures count from process
launch, as a user waits: the whole process's wall time, and the time to a 20-episode mean of
475. Start-up (launch to the first env step: imports, Ray, actors, envs) and the training
loop's env steps/s are reported beside them. SB3 runs with 1 and with 2 torch threads
(`sb3-a2c-1t`, `sb3-a2c-2t`), without callbacks. Results go to
bench/results/<time>-<mode>.json (curves thinned).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ours import REPO, run_ours, running_cluster
from bench.procmon import Launched, load_average
from bench.record import RunRecord, thin

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = {"CartPole-v1": 475.0}
"""Return (mean of the last 20 episodes) whose first crossing is timed."""
ZOO_A2C = {"CartPole-v1": (500.0, 500_000), "Acrobot-v1": (-83.0, 500_000),
           "Pendulum-v1": (-163.0, 1_000_000), "LunarLander-v3": (156.0, 200_000)}
"""rl-zoo's published A2C results: env -> (mean return, env-step budget)."""

PLANS = {
    "quick": {"steps": {"ours": 60_000, "sb3-a2c-1t": 15_000, "sb3-a2c-2t": 15_000, "rllib-ppo": 15_000},
              "max_wall_s": 30,
              "grid": [(1, 8), (2, 8), (2, 64)], "grid_s": 3, "async": [(2, 8)],
              "batches": [256, 4096], "efficiency": [], "soak_s": 20, "startup_steps": 5_000},
    "full": {"steps": {"ours": 200_000, "sb3-a2c-1t": 200_000, "sb3-a2c-2t": 200_000, "rllib-ppo": 300_000},
             "max_wall_s": 200,
             "grid": [(w, n) for w in (1, 2, 4) for n in (8, 64, 256)], "grid_s": 8,
             "async": [(2, 8), (2, 64)], "batches": [256, 1024, 4096, 16384, 65536],
             "efficiency": [("CartPole-v1", 500_000), ("Acrobot-v1", 500_000), ("Pendulum-v1", 1_000_000),
                            ("LunarLander-v3", 200_000)], "soak_s": 600, "startup_steps": 20_000},
}


def _peer(module: str, runner: str, env: str, steps: int, seed: int, max_wall_s: float,
          log_dir: Path, extra: list[str] | None = None) -> RunRecord:
    """Run a peer library's runner module in its own process tree and read its record."""
    with tempfile.TemporaryDirectory(prefix="a2c-bench-") as tmp:
        out = Path(tmp) / "record.json"
        # Start-up counts from here, as for ours (whose clock starts at Popen too).
        cmd = [sys.executable, "-m", module, "--env", env, "--steps", str(steps), "--seed", str(seed),
               "--max-wall-s", str(max_wall_s), "--out", str(out), "--launched-at", repr(time.time()),
               *(extra or [])]
        proc = Launched(cmd, log_dir / f"{runner}-{env}-s{seed}.log", cwd=REPO)
        code = proc.wait(max_wall_s + 240)
        try:
            record = RunRecord.from_json(out.read_text())
        except (OSError, json.JSONDecodeError, TypeError) as exc:
            record = RunRecord(runner, env, seed, error=f"exit {code}, no record ({exc!r}): {proc.tail()}")
        record.peak_rss_mb, record.peak_pss_mb = proc.monitor.peak_rss_mb, proc.monitor.peak_pss_mb
        record.process_wall_s = proc.wall_s
        record.load_before, record.load_after = proc.load_before, proc.load_after
        return record


RUNNERS = {"ours": None, "sb3-a2c-1t": ("bench.sb3_a2c", ["--threads", "1"]),
           "sb3-a2c-2t": ("bench.sb3_a2c", ["--threads", "2"]), "rllib-ppo": ("bench.rllib_ppo", [])}
"""Runner name -> (module, its extra flags); SB3 runs with 1 and with 2 torch threads."""


def run_one(runner: str, env: str, steps: int, seed: int, max_wall_s: float, log_dir: Path) -> RunRecord:
    """One training run of `runner` (a key of RUNNERS)."""
    if runner == "ours":
        return run_ours(env, steps, seed, timeout_s=max_wall_s + 240, log_dir=log_dir)
    module, extra = RUNNERS[runner]
    record = _peer(module, runner, env, steps, seed, max_wall_s, log_dir, extra)
    record.runner = runner
    return record


def aggregate(records: list[RunRecord], target: float | None) -> dict[str, Any]:
    """Median over seeds of a runner's headline numbers (max for memory)."""
    rows = [r.summary(target) for r in records if not r.error]

    def med(key):
        vals = [r[key] for r in rows if r[key] is not None]
        return round(statistics.median(vals), 2) if vals else None

    reached = [r for r in rows if r["time_to_target_s"] is not None]
    return {"runner": records[0].runner, "runs": len(rows), "reached": len(reached),
            "env_steps_per_s": med("env_steps_per_s"), "startup_s": med("startup_s"),
            "process_wall_s": med("process_wall_s"), "launch_to_target_s": med("launch_to_target_s"),
            "time_to_target_s": med("time_to_target_s"), "steps_to_target": med("steps_to_target"),
            "final_return_mean": med("final_return_mean"), "loop_wall_s": med("loop_wall_s"),
            "peak_rss_mb": max((r["peak_rss_mb"] for r in rows if r["peak_rss_mb"]), default=None),
            "peak_pss_mb": max((r["peak_pss_mb"] for r in rows if r["peak_pss_mb"]), default=None),
            "load_1m": [r["load_before"][0] for r in rows if r["load_before"]],
            "errors": [r.error[:400] for r in records if r.error]}


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float | None]:
    """ours / peer for each headline number (steps/s: higher is better; the others: lower)."""
    def div(key):
        a, b = ours.get(key), peer.get(key)
        return round(a / b, 2) if a is not None and b else None
    return {k: div(k) for k in ("process_wall_s", "launch_to_target_s", "env_steps_per_s", "time_to_target_s",
                                "startup_s", "peak_rss_mb")}


def compare(plan: dict, seeds: list[int], runners: list[str], log_dir: Path) -> dict[str, Any]:
    """The side-by-side CartPole-v1 comparison: each runner for each seed, then medians, ratios."""
    env, target = "CartPole-v1", TARGET["CartPole-v1"]
    records: dict[str, list[RunRecord]] = {r: [] for r in runners}
    for seed in seeds:  # interleave runners so that a burst of load hits all of them alike
        for runner in runners:
            rec = run_one(runner, env, plan["steps"][runner], seed, plan["max_wall_s"], log_dir)
            records[runner].append(rec)
            s = rec.summary(target)
            print(f"  {runner:10s} seed {seed}: {s['env_steps_per_s']} steps/s, startup {s['startup_s']}s, "
                  f"475 at {s['launch_to_target_s']}s from launch, process {s['process_wall_s']}s, "
                  f"final {s['final_return_mean']}, "
                  f"load {s['load_before']}{'  ERROR ' + rec.error[:300] if rec.error else ''}", flush=True)
    agg = {r: aggregate(recs, target) for r, recs in records.items() if recs}
    out: dict[str, Any] = {"env": env, "target": target, "aggregate": agg,
                           "runs": [dict(rec.summary(target), curve=thin(rec.curve), config=rec.config)
                                    for recs in records.values() for rec in recs]}
    if "ours" in agg:
        out["ratios"] = {f"ours/{p}": ratios(agg["ours"], agg[p]) for p in agg if p != "ours"}
    return out


def startup(plan: dict, seeds: list[int], log_dir: Path) -> dict[str, Any]:
    """Ours' start-up, split into launch -> Ray connected (imports, then connecting) -> actors
    ready, with an embedded Ray (as in `compare`) and attached to a cluster that is already
    running (`--address`). `ray_and_actors_s` is the target's "Ray start-up plus actor creation"."""
    def parts(rec: RunRecord) -> dict[str, Any]:
        ray_init, actors = rec.extra.get("ray_init_s"), rec.extra.get("actors_ready_s")
        both = round(ray_init + actors, 2) if ray_init is not None and actors is not None else None
        cpu = rec.extra.get("ray_and_actors_cpu_s")
        return {"seed": rec.seed, "startup_s": round(rec.startup_s, 2) if rec.startup_s else None,
                "ray_connected_s": rec.extra.get("ray_connected_s"), "ray_init_s": ray_init, "actors_ready_s": actors,
                "ray_and_actors_s": both, "ray_and_actors_cpu_s": cpu,
                "cores_busy": round(cpu / both, 2) if cpu is not None and both else None,
                "cpu_by_process_s": rec.extra.get("startup_cpu_by_process_s"), "error": rec.error}

    steps = plan["startup_steps"]
    out: dict[str, Any] = {"embedded": [parts(run_ours("CartPole-v1", steps, s, log_dir=log_dir, track_processes=True))
                                        for s in seeds]}
    with running_cluster(3, log_dir) as (address, env):
        out["attached"] = [parts(run_ours("CartPole-v1", steps, s, log_dir=log_dir, extra=["--address", address],
                                          proc_env=env, track_processes=True)) for s in seeds]
    for mode in ("embedded", "attached"):
        for row in out[mode]:
            print(f"  ours {mode:8s} seed {row['seed']}: start-up {row['startup_s']}s = Ray connected "
                  f"{row['ray_connected_s']}s (of which connecting {row['ray_init_s']}s) + actors ready "
                  f"{row['actors_ready_s']}s; Ray + actors {row['ray_and_actors_s']}s, in which the machine "
                  f"was busy {row['ray_and_actors_cpu_s']} CPU-s ({row['cores_busy']} cores, all processes)"
                  + (f"  ERROR {row['error'][:300]}" if row["error"] else ""), flush=True)
            if row["cpu_by_process_s"]:
                by_cpu = sorted(row["cpu_by_process_s"].items(), key=lambda kv: -kv[1])
                print("    CPU-s of each process from its start to the first env step (when attached, the "
                      "cluster's processes are not in this tree): " + ", ".join(f"{k} {v:.2f}" for k, v in by_cpu),
                      flush=True)
    return out


def scaling(plan: dict, log_dir: Path) -> dict[str, Any]:
    """Env steps/s over workers x envs per worker (sync, plus async points), and learner times."""
    from bench.scaling import grid_point, learner_update_times
    points = []
    for workers, envs in plan["grid"]:
        points.append(grid_point(workers, envs, plan["grid_s"], log_dir=log_dir))
        print(f"  grid {workers}x{envs} sync: {points[-1]['env_steps_per_s']} steps/s "
              f"(load {points[-1]['load_before']})", flush=True)
    for workers, envs in plan["async"]:
        points.append(grid_point(workers, envs, plan["grid_s"], mode="async", log_dir=log_dir))
        print(f"  grid {workers}x{envs} async: {points[-1]['env_steps_per_s']} steps/s", flush=True)
    learner = learner_update_times(plan["batches"])
    learner += learner_update_times([2048], mini_batch_size=32)  # the seed's default layout
    return {"grid": points, "learner_update": learner}


def efficiency(plan: dict, log_dir: Path) -> list[dict[str, Any]]:
    """Ours at rl-zoo's A2C budgets (seed 0, the service's defaults plus its tuned table)."""
    rows = []
    for env, steps in plan["efficiency"]:
        rec = run_ours(env, steps, 0, timeout_s=600, log_dir=log_dir)
        zoo_return, zoo_steps = ZOO_A2C[env]
        best = max((m for _, _, m in rec.curve if m is not None), default=None)
        rows.append({"env": env, "steps": rec.steps, "final_return_mean": rec.final_return_mean,
                     "best_return_mean": best, "zoo_a2c_return": zoo_return, "zoo_steps": zoo_steps,
                     "env_steps_per_s": rec.summary(None)["env_steps_per_s"],
                     "loop_wall_s": round(rec.loop_wall_s, 1), "tuned": rec.config.get("tuned"),
                     "load_before": rec.load_before, "error": rec.error})
        print(f"  {env} {rec.steps} steps: final {rec.final_return_mean} (zoo {zoo_return})", flush=True)
    return rows


def soak(plan: dict, log_dir: Path, sps_guess: float = 20_000) -> dict[str, Any]:
    """RSS of the driver, the learner and one worker over a CartPole run of about `soak_s`
    seconds (the tuned job; its length is set from `sps_guess`), sampled every tenth of it."""
    seconds = plan["soak_s"]
    steps = int(sps_guess * seconds) // 512 * 512
    rec = run_ours("CartPole-v1", steps, 0, timeout_s=seconds * 3 + 120, log_dir=log_dir,
                   roles_every_s=max(seconds / 10, 2))
    roles = rec.extra.get("rss_by_role", [])
    # The first sample is taken before Ray has started; compare from the first with a learner.
    live = [(t, r) for t, r in roles if "learner" in r and "worker" in r]
    first, last = (live[0], live[-1]) if live else ((None, {}), (None, {}))
    growth = {k: round(last[1][k] - first[1][k], 1) for k in ("driver", "learner", "worker", "ray")
              if k in first[1] and k in last[1]}
    print(f"  soak {rec.loop_wall_s:.0f}s loop: RSS MB at {first[0]}s {first[1]}, at {last[0]}s {last[1]}",
          flush=True)
    return {"loop_wall_s": round(rec.loop_wall_s, 1), "steps": rec.steps, "first": first, "last": last,
            "growth_mb": growth, "samples": roles, "error": rec.error}


def profile_section() -> dict[str, Any]:
    """The in-process breakdown of one env step (see bench/profile.py)."""
    from bench.profile import env_step_rates, policy_forward_rates, sample_breakdown
    return {"sample_breakdown": [sample_breakdown(8, 16), sample_breakdown(64, 16, 10),
                                 sample_breakdown(256, 16, 4)],
            "env_step_rates": env_step_rates([8, 64, 256], seconds=0.5),
            "policy_forward": policy_forward_rates([8, 64, 256])}


def _fmt(v, digits=0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def table(result: dict[str, Any]) -> str:
    """The comparison (and, when present, scaling and efficiency) as plain-text tables."""
    lines = []
    cmp_ = result.get("compare")
    if cmp_:
        agg = cmp_["aggregate"]
        lines.append(f"CartPole-v1, median over seeds. From process launch: the whole process and the "
                     f"time to a 20-episode mean of {cmp_['target']:g}; loop only: env steps/s")
        lines.append(f"{'runner':10s} {'runs':>4s} {'process s':>9s} {'to 475 s':>9s} {'start-up s':>10s} "
                     f"{'loop steps/s':>12s} {'(steps)':>9s} {'reached':>7s} {'final ret':>9s} "
                     f"{'peak RSS MB':>11s}  load 1m")
        for a in agg.values():
            lines.append(f"{a['runner']:10s} {a['runs']:4d} {_fmt(a['process_wall_s'], 1):>9s} "
                         f"{_fmt(a['launch_to_target_s'], 1):>9s} {_fmt(a['startup_s'], 1):>10s} "
                         f"{_fmt(a['env_steps_per_s']):>12s} {_fmt(a['steps_to_target']):>9s} "
                         f"{a['reached']:>3d}/{a['runs']:<3d} {_fmt(a['final_return_mean'], 1):>9s} "
                         f"{_fmt(a['peak_rss_mb']):>11s}  {a['load_1m']}")
        for name, r in cmp_.get("ratios", {}).items():
            lines.append(f"{name:16s} process x{_fmt(r['process_wall_s'], 2)}, launch to 475 "
                         f"x{_fmt(r['launch_to_target_s'], 2)}, start-up x{_fmt(r['startup_s'], 2)}, "
                         f"loop steps/s x{_fmt(r['env_steps_per_s'], 2)}, peak RSS x{_fmt(r['peak_rss_mb'], 2)}")
    sc = result.get("scaling")
    if sc:
        lines.append("\nours, CartPole-v1 env steps/s (T=16 per env, batch = W x N x 16)")
        for p in sc["grid"]:
            lines.append(f"  {p['workers']} workers x {p['envs_per_worker']:3d} envs {p['mode']:5s} "
                         f"batch {p['batch']:6d}: {_fmt(p['env_steps_per_s']):>9s} steps/s  "
                         f"(load {p['load_before'][0] if p['load_before'] else '-'})"
                         f"{'  ERROR ' + p['error'][:200] if p['error'] else ''}")
        lines.append("learner update (GAE + loss + Adam, 1 thread)")
        for u in sc["learner_update"]:
            lines.append(f"  batch {u['batch']:6d} minibatch {str(u['mini_batch_size'] or 'full'):>4s}: "
                         f"{u['update_ms']:8.2f} ms ({u['update_us_per_sample']} us/sample), "
                         f"weights export {u['weights_export_ms']} ms")
    eff = result.get("efficiency")
    if eff:
        lines.append("\nsample efficiency (ours, seed 0) vs rl-zoo A2C")
        for e in eff:
            lines.append(f"  {e['env']:12s} {e['steps']:>8,d} steps: final {_fmt(e['final_return_mean'], 1)}, "
                         f"best {_fmt(e['best_return_mean'], 1)}  | zoo {e['zoo_a2c_return']:g} at "
                         f"{e['zoo_steps']:,d}")
    so = result.get("soak")
    if so:
        lines.append(f"\nRSS over a {so['loop_wall_s']:.0f} s CartPole run (MB; driver, learner, one worker, "
                     "Ray's own processes)")
        for label, (t, roles) in (("start", so["first"]), ("end", so["last"])):
            lines.append(f"  {label:5s} t={t}s: " + ", ".join(f"{k} {v:,.0f}" for k, v in roles.items()))
        lines.append("  growth: " + ", ".join(f"{k} {v:+,.1f}" for k, v in so["growth_mb"].items()))
    pr = result.get("profile")
    if pr:
        lines.append("\nin-process worker breakdown, us per env step (CartPole, 1 thread)")
        for b in pr["sample_breakdown"]:
            parts = ", ".join(f"{k} {v}" for k, v in b["parts_us_per_step"].items())
            lines.append(f"  N={b['num_envs']:3d}: sample {b['sample_us_per_step']} ({parts}); "
                         f"learner update {b['update_us_per_step']}")
        lines.append("env alone, steps/s (random actions, 1 thread)")
        for r in pr["env_step_rates"]:
            lines.append(f"  N={r['num_envs']:3d}: " + ", ".join(f"{k} {v:,}" for k, v in r.items() if k != "num_envs"))
    return "\n".join(lines)


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "learner", "workers", "service"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print the tables, write the JSON result."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny budgets (~3 min); exercises every runner")
    p.add_argument("--only", nargs="+", choices=["compare", "startup", "scaling", "efficiency", "soak", "profile"],
                   help="run only these sections (default: all)")
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help="seeds of the comparison (default: 0 for --quick, 0 1 for the full run)")
    p.add_argument("--out", type=Path, help="JSON result path (default bench/results/<time>-<mode>.json)")
    args = p.parse_args(argv)
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    sections = args.only or ["compare", "startup", "scaling", "efficiency", "soak", "profile"]
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="a2c-bench-logs-"))
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "git": _git(),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_at_start": load_average()},
        "versions": _versions(), "seeds": seeds, "plan": plan,
    }
    print(f"bench ({mode}): sections {sections}, logs in {log_dir}, load {load_average()}", flush=True)
    if "compare" in sections:
        result["compare"] = compare(plan, seeds, args.runners, log_dir)
    if "startup" in sections:
        result["startup"] = startup(plan, seeds, log_dir)
    if "scaling" in sections:
        result["scaling"] = scaling(plan, log_dir)
    if "efficiency" in sections and plan["efficiency"]:
        result["efficiency"] = efficiency(plan, log_dir)
    if "soak" in sections:
        result["soak"] = soak(plan, log_dir)
    if "profile" in sections:
        result["profile"] = profile_section()
    result["machine"]["load_at_end"] = load_average()
    result["total_s"] = round(time.monotonic() - t0, 1)
    out = args.out or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{mode}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n" + table(result))
    print(f"\nwrote {out} ({result['total_s']}s; load at start {result['machine']['load_at_start']}, "
          f"at end {result['machine']['load_at_end']})")
    return 0


def _versions() -> dict[str, str | None]:
    """Installed versions of the libraries compared."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", "ray", "gymnasium", "numpy", "stable-baselines3"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
