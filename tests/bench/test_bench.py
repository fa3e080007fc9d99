"""Fast checks of the benchmark's bookkeeping: curves, targets, medians, ratios, run parsing.

No timing is asserted; the runners themselves are exercised by `python -m bench.run --quick`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from bench.ours import parse_run
from bench.procmon import machine_cpu_s, process_cpu_s, roles_cpu_s, tree_memory_mb, tree_pids
from bench.profile import summarize_stacks
from bench.record import RunRecord, thin
from bench.run import aggregate, ratios


def _record(runner="ours", curve=((1.0, 100, 20.0), (2.0, 200, 480.0), (3.0, 300, 500.0)), **kw):
    return RunRecord(runner, "CartPole-v1", 0, steps=300, loop_wall_s=3.0, startup_s=2.0,
                     curve=list(curve), **kw)


def test_time_to_target_is_the_first_crossing_of_the_20_episode_mean():
    assert _record().time_to(475) == (2.0, 200)
    assert _record().time_to(501) is None


def test_steps_per_second_counts_only_the_training_loop():
    assert _record().env_steps_per_s == 100.0


def test_record_round_trips_through_json():
    rec = _record(extra={"x": 1})
    assert RunRecord.from_json(rec.to_json()) == rec


def test_thin_keeps_first_and_last_points():
    curve = [(float(i), i, None) for i in range(1000)]
    out = thin(curve, 60)
    assert len(out) == 60 and out[0] == curve[0] and out[-1] == curve[-1]


def test_aggregate_takes_medians_and_counts_runs_that_reached_the_target():
    recs = [_record(), _record(curve=((1.0, 100, 10.0),)), _record(error="boom")]
    agg = aggregate(recs, 475)
    assert (agg["runs"], agg["reached"]) == (2, 1)
    assert agg["time_to_target_s"] == 2.0
    assert agg["errors"] == ["boom"]


def test_ratios_are_ours_over_peer():
    r = ratios({"process_wall_s": 10, "launch_to_target_s": 3, "env_steps_per_s": 300, "time_to_target_s": 1,
                "startup_s": None, "peak_rss_mb": 2},
               {"process_wall_s": 40, "launch_to_target_s": 12, "env_steps_per_s": 100, "time_to_target_s": 4,
                "startup_s": 1, "peak_rss_mb": 0})
    assert r == {"process_wall_s": 0.25, "launch_to_target_s": 0.25, "env_steps_per_s": 3.0,
                 "time_to_target_s": 0.25, "startup_s": None, "peak_rss_mb": None}


def test_headline_figures_count_from_process_launch():
    s = _record(process_wall_s=7.5).summary(475)
    assert s["launch_to_target_s"] == 4.0  # 2 s of start-up, then 2 s of loop to 475
    assert s["time_to_target_s"] == 2.0 and s["process_wall_s"] == 7.5
    assert _record().summary(501)["launch_to_target_s"] is None


def test_sb3_curve_comes_from_the_monitors_episodes_not_a_callback():
    from bench.sb3_a2c import monitor_curve

    class Monitor:  # what SB3's Monitor keeps: per episode, its return, length and end time
        def __init__(self, t_start, episodes):
            self.t_start, self.episodes = t_start, episodes

        def get_episode_rewards(self):
            return [e[0] for e in self.episodes]

        def get_episode_lengths(self):
            return [e[1] for e in self.episodes]

        def get_episode_times(self):
            return [e[2] for e in self.episodes]

    curve = monitor_curve([Monitor(100.0, [(10.0, 10, 1.5), (30.0, 30, 4.0)]),
                           Monitor(100.5, [(20.0, 20, 2.0)])], n_envs=2, loop_started_at=101.0)
    # (loop s, env steps = n_envs x that env's own steps, running mean of the returns so far)
    assert curve == [(0.5, 20, 10.0), (1.5, 40, 15.0), (3.0, 80, 20.0)]


def test_parse_run_reads_metrics_and_events_of_a_cli_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(
        {"step": 256 * i, "wall_s": 0.01 * i, "episode_return_mean": 10.0 * i, "policy_lag": 0})
        for i in range(1, 5)) + "\n")
    (tmp_path / "events.jsonl").write_text(
        json.dumps({"time": 105.0, "kind": "ray", "message": "embedded local Ray (1 node, 3 CPUs), up in 4.25s"}) + "\n"
        + json.dumps({"time": 107.5, "kind": "started", "message": ""}) + "\n")
    (tmp_path / "config.json").write_text(json.dumps(
        {"workers": 2, "envs_per_worker": 8, "mode": "sync", "a2c": {}, "policy": {}, "tuned": []}))
    rec = parse_run(tmp_path, launched_at=100.0, env="CartPole-v1", seed=0)
    assert (rec.steps, rec.loop_wall_s, rec.startup_s) == (1024, 0.04, 7.5)
    assert rec.extra["actors_ready_s"] == 2.5 and rec.curve[-1] == (0.04, 1024, 40.0)
    assert (rec.extra["ray_connected_s"], rec.extra["ray_init_s"]) == (5.0, 4.25)


def test_process_tree_memory_includes_this_process():
    assert os.getpid() in tree_pids(os.getpid())
    rss, pss = tree_memory_mb(os.getpid())
    assert rss > 0


def test_py_spy_stacks_are_grouped_by_process_role():
    raw = ("process 1:\"ray::RolloutWorker.sample\";sample (workers/worker.py:60);act (learner/policy.py:90) 3\n"
           "process 2:\"ray::Learner.update\";update (learner/learner.py:150);backward (torch) 1\n")
    out = summarize_stacks(raw)
    assert out["worker"]["samples"] == 3 and out["worker"]["inclusive_pct"]["act"] == 100.0
    assert out["learner"]["inclusive_pct"]["backward"] == 100.0


def test_rllib_config_is_one_full_batch_epoch_without_kl():
    pytest.importorskip("ray.rllib")
    from bench.rllib_ppo import build_config
    cfg = build_config("CartPole-v1", 0, 2, 8, 256)
    assert (cfg.num_epochs, cfg.minibatch_size, cfg.train_batch_size_per_learner) == (1, 256, 256)
    assert cfg.use_kl_loss is False and cfg.clip_param >= 1e3


def test_cpu_accounting_counts_a_busy_child_under_its_parent():
    """bench.load's cores-by-role table: a child's CPU shows up in its parent's tree, and the
    machine's busy time grows at least as much."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.6: pass\ntime.sleep(30)"])
    try:
        before = machine_cpu_s()["machine busy"]
        deadline = time.monotonic() + 30
        while process_cpu_s(child.pid) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.05)
        used = process_cpu_s(child.pid)
        assert used >= 0.6
        roles = roles_cpu_s(os.getpid(), root_role="parent")
        assert roles["ray"] >= used and 0 < roles["parent"] <= process_cpu_s(os.getpid())
        assert machine_cpu_s()["machine busy"] - before >= 0.4  # the part of the child's burn after `before`
    finally:
        child.kill()
        child.wait()


def test_machine_busy_seconds_are_interpolated_between_samples():
    from bench.procmon import TreeMonitor
    monitor = TreeMonitor(os.getpid())
    monitor.busy = [(10.0, 100.0), (11.0, 101.5), (12.0, 103.5)]
    assert monitor.machine_busy_s(10.5, 11.5) == pytest.approx(0.75 + 1.0)
    assert monitor.machine_busy_s(10.0, 12.0) == pytest.approx(3.5)
    assert monitor.machine_busy_s(9.0, 11.0) is None  # before the first sample: unknown


def test_startup_cpu_is_split_by_process_named_by_its_script_or_actor(tmp_path):
    """The startup section's profile: each process of a tree by name (Ray's daemons by their
    script or actor name, workers numbered), interpolated per process at a time between samples."""
    from bench.procmon import TreeMonitor, processes_cpu_s, process_names
    script = tmp_path / "probe_daemon.py"  # a Python daemon, as Ray's log_monitor.py
    script.write_text("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
                      "time.sleep(30)\n")
    root = subprocess.Popen(["bash", "-c", "(exec -a ray::RolloutWorker.sample sleep 30) & "
                             "(exec -a ray::RolloutWorker.sample sleep 30) & "
                             f"{sys.executable} -u {script} & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            names = process_names(processes_cpu_s(root.pid, root_role="root"))
            if names.get("ray probe_daemon", 0) >= 0.3 and "worker 2" in names:
                break
            time.sleep(0.05)
        assert set(names) == {"root", "worker 1", "worker 2", "ray probe_daemon"}, names
        assert names["ray probe_daemon"] >= 0.3
    finally:
        os.killpg(root.pid, 9)
        root.wait()
    monitor = TreeMonitor(os.getpid())
    # pid 7 is renamed between the samples (an idle Ray worker becoming the learner), pid 9
    # starts in between, pid 8 ends in between.
    monitor.cpu = [(10.0, {5: ("driver", 1.0), 7: ("ray IDLE", 0.2), 8: ("ray IDLE", 0.1)}),
                   (11.0, {5: ("driver", 2.0), 7: ("learner", 1.2), 9: ("worker", 0.4)})]
    assert monitor.cpu_by_process_s(10.5) == {"driver": 1.5, "learner": 0.7, "ray IDLE": 0.1, "worker 1": 0.2}
    assert monitor.cpu_by_process_s(12.0) is None


def test_pong_plot_labels_an_earlier_run_by_the_spec_fields_it_differs_in(tmp_path):
    from bench.atari_pong import mean_curve, plot, spec_difference
    spec = {"env": "PongNoFrameskip-v4", "seed": 0, "tuned": ["a2c.gamma"],
            "a2c": {"learning_rate_schedule": "constant", "gamma": 0.99}}
    earlier = {**spec, "tuned": ["a2c.gamma", "a2c.learning_rate_schedule"],
               "a2c": {"learning_rate_schedule": "linear", "gamma": 0.99}}
    assert spec_difference(earlier, spec) == "a2c.learning_rate_schedule=linear"
    assert spec_difference(spec, spec) == "same spec"
    games = [[i * 1000, float(i), -21.0 + i / 10, 800] for i in range(150)]
    frames, means = mean_curve(games)  # from the 100th game on: 51 points
    assert len(frames) == len(means) == 51 and frames[0] == 99 * 1000 * 4 / 1e6
    assert means[0] == pytest.approx(sum(-21.0 + i / 10 for i in range(100)) / 100)
    result = {"env": "PongNoFrameskip-v4", "seed": 0, "spec": spec, "games": games,
              "summary": {"games": 150, "last_100_mean": -13.5}}
    plot(result, tmp_path / "run.png", compare={"spec": earlier, "games": games[:120]})
    assert (tmp_path / "run.png").stat().st_size > 0


@pytest.mark.ray
def test_a_stopped_pong_bench_run_resumes_from_its_newest_checkpoint(ray_session, tmp_path):
    """`bench.atari_pong --resume`: the games and rows past the newest checkpoint are dropped, the
    job goes on from it to the run's budget, loop times go on from the checkpoint's, and each part
    is recorded with its own wall time. (CartPole stands in for Pong: the bench takes any env id.)"""
    from bench.atari_pong import main, resume_point
    out, run_dir = tmp_path / "run.json", tmp_path / "job"
    t0 = time.time()
    main(["--env", "CartPole-v1", "--frames", str(6 * 512 * 4), "--seed", "0", "--out", str(out),
          "--run-dir", str(run_dir), "--spec", '{"checkpoint_every": 1, "eval_every": 0, "video_every": 0}'],
         launched_at=t0)
    first_s = time.time() - t0
    first = json.loads(out.read_text())
    assert first["run_dir"] == str(run_dir.resolve()) and len(first["parts"]) == 1
    assert 0 < first["parts"][0]["wall_s"] <= first_s and first["wall_s"] == first["parts"][0]["wall_s"]
    archives = sorted((run_dir / "checkpoints").glob("step-*.tar.gz"))
    assert [a.name for a in archives][-1] == "step-0000003072.tar.gz"
    for archive in archives[-4:]:  # as if the run had stopped after its second update
        archive.unlink()
    loop_at_stop = max(g[1] for g in first["games"] if g[0] <= 1024)

    # A record written before --resume existed: no run directory, no parts, no wall time.
    old = {k: v for k, v in first.items() if k not in ("run_dir", "parts", "wall_s")}
    with pytest.raises(SystemExit, match="pass --run-dir"):
        resume_point(dict(old))
    checkpoint, loop_s = resume_point(old, run_dir)
    assert checkpoint.state.step == 1024 and loop_s == loop_at_stop and max(g[0] for g in old["games"]) <= 1024
    assert old["run_dir"] == str(run_dir.resolve())
    assert old["parts"] == [{"commit": first["commit"], "command": first["command"], "from_step": 0,
                             "wall_s": loop_at_stop, "wall_s_is": "its loop time at the checkpoint"}]

    with pytest.raises(SystemExit):  # the run's own settings, not new ones
        main(["--resume", "--out", str(out), "--seed", "1"])
    t1 = time.time()
    main(["--resume", "--out", str(out)], launched_at=t1)
    second_s = time.time() - t1
    second = json.loads(out.read_text())
    assert [p["from_step"] for p in second["parts"]] == [0, 1024]
    assert second["parts"][0] == first["parts"][0] and 0 < second["parts"][1]["wall_s"] <= second_s
    assert second["spec"] == first["spec"] and second["trainer_summary"]["steps"] == 3072
    steps = [g[0] for g in second["games"]]
    assert steps == sorted(steps) and steps[-1] == 3072
    assert [g for g in second["games"] if g[0] <= 1024] == [g for g in first["games"] if g[0] <= 1024]
    assert min(g[1] for g in second["games"] if g[0] > 1024) > loop_at_stop
    assert (out.with_suffix(".png")).stat().st_size > 0
