"""A server job's TensorBoard event files, read back with TensorBoard's own event reader, hold the
same values as GET /jobs/{id}/metrics, under the metrics keys' names, in a run named
`<env>-[<name>-]<job id>` under `<data-dir>/tensorboard/`."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_event_files_in_a_run_named_env_id_hold_the_metrics_rows_under_their_key_names(client, server, finished_job):
    run_dir = server.data_dir / "tensorboard" / f"CartPole-v1-{finished_job['id']}"  # the run's name in TensorBoard
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not list((server.data_dir / "jobs" / finished_job["id"]).glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    logged = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}

    rows = client.all_metrics(finished_job["id"])
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(key, {})[row["step"]] = value
    assert {"episode_return_mean", "policy_loss", "value_loss", "entropy", "env_steps_per_s",
            "eval_return_mean"} <= set(expected)
    assert set(logged) == set(expected)
    for key, by_step in expected.items():  # TensorBoard stores float32
        assert logged[key] == pytest.approx(by_step, rel=1e-6, abs=1e-30), key
