"""A 16-trial ASHA sweep on Acrobot-v1 through the API, against the tuned-table default.

    nice -n 5 python -m bench.sweep_acrobot --budget 100000

Starts `a2c serve` (embedded Ray, a fresh data dir), submits the sweep (learning rate, entropy
coefficient, GAE lambda and gamma around the tuned values; every trial `--budget` env steps;
ASHA with reduction factor 4), then one job with the tuned default at the same budget and seed.
The JSON (bench/results/sweep-acrobot-<git>.json unless `--out`) has: the sweep's wall time;
every trial's config, steps run, status and best metric; the best trial's config, its final
20-episode training return and final deterministic evaluation next to the default's; and the
compute ASHA saved: the env steps all trials ran over 16 x budget (what running every trial to
its end would cost). The machine's load average is recorded: on a shared machine, say so when
quoting wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

from service.sweeps.trial import ServiceClient  # noqa: E402


def _git() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_body(budget: int, samples: int, seed: int) -> dict[str, Any]:
    """The sweep: the tuned Acrobot layout (1 worker x 16 envs, 256-step batches), ranked by the
    20-episode training return (rows every update; the evaluation runs once, at the end)."""
    return {
        "base": {"env": "Acrobot-v1", "total_steps": budget, "workers": 1, "seed": 0,
                 "eval_every": 0, "eval_episodes": 10, "checkpoint_every": 1000},
        "space": {"a2c.learning_rate": {"loguniform": [2e-4, 5e-3]},
                  "a2c.entropy_coef": {"uniform": [0.0, 0.01]},
                  "a2c.gae_lambda": {"uniform": [0.8, 1.0]},
                  "a2c.gamma": {"choice": [0.98, 0.99, 0.995]}},
        "num_samples": samples, "max_concurrent_trials": 2, "metric": "episode_return_mean", "mode": "max",
        "scheduler": "asha", "asha": {"reduction_factor": 4}, "search": "random", "seed": seed,
    }


def _final(client: ServiceClient, job_id: str) -> dict[str, Any]:
    job = client.call("GET", f"/jobs/{job_id}")
    rows = client.call("GET", f"/jobs/{job_id}/metrics?limit=10000")["rows"]
    evals = [r["eval_return_mean"] for r in rows if r.get("eval_return_mean") is not None]
    return {"job_id": job_id, "status": job["status"], "steps": job["progress"]["step"],
            "final_return_mean": (job.get("summary") or {}).get("final_return_mean"),
            "final_eval_return_mean": evals[-1] if evals else None}


def main() -> int:
    """Run the benchmark; print and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=100_000, help="env steps per trial (and for the default)")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="the search's seed")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    data = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("A2C_") and k != "RAY_ADDRESS"}
    env.update({"RAY_TMPDIR": tempfile.mkdtemp(prefix="a2c-sb-", dir="/tmp"), "A2C_RAY_NUM_CPUS": "4"})
    log = open(data / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--data-dir",
                               str(data / "data")], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    client = ServiceClient(f"http://127.0.0.1:{port}", retry_s=180)
    try:
        client.call("GET", "/readyz")
        load_before = os.getloadavg()
        started = time.monotonic()
        sweep = client.call("POST", "/sweeps", sweep_body(args.budget, args.samples, args.seed))
        while sweep["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(5)
            sweep = client.call("GET", f"/sweeps/{sweep['id']}")
            print(f"{time.monotonic() - started:6.0f}s {sweep['status']} {len(sweep['trials'])} trials, "
                  f"best {(sweep.get('best_trial') or {}).get('best_metric')}", file=sys.stderr)
        wall = time.monotonic() - started
        load_during = os.getloadavg()
        default_job = client.call("POST", "/jobs", sweep_body(args.budget, 1, 0)["base"])
        while client.call("GET", f"/jobs/{default_job['id']}")["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(5)
        best = sweep.get("best_trial") or {}
        steps = sum(t["step"] for t in sweep["trials"])
        result = {
            "bench": "sweep_acrobot", "git": _git(), "budget": args.budget, "samples": args.samples,
            "sweep": {"id": sweep["id"], "status": sweep["status"], "message": sweep["message"],
                      "spec": sweep["spec"], "wall_s": round(wall, 1), "trial_errors": sweep["trial_errors"]},
            "trials": [{"job_id": t["job_id"], "config": t["config"], "status": t["status"], "steps": t["step"],
                        "best_metric": t["best_metric"]} for t in sweep["trials"]],
            "best": {"config": best.get("config"), "best_metric": best.get("best_metric"),
                     **(_final(client, best["job_id"]) if best else {})},
            "tuned_default": _final(client, default_job["id"]),
            "compute": {"steps_run": steps, "steps_without_asha": args.samples * args.budget,
                        "fraction": round(steps / (args.samples * args.budget), 3)},
            "loadavg_before": load_before, "loadavg_after_sweep": load_during, "cpus": os.cpu_count(),
        }
    finally:
        server.terminate()
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
    out = args.out or RESULTS / f"sweep-acrobot-{_git()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps({k: result[k] for k in ("sweep", "best", "tuned_default", "compute")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
