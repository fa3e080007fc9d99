"""The Atari data path: bytes per rollout, where observations are copied, and a worker's memory.

One RolloutWorker actor with 8 PongNoFrameskip-v4 envs and the tuned job's T = 5 samples
rollouts with a Nature-CNN policy on a local Ray; a Learner actor receives them as the trainer
passes them (object refs). Reported:

- the rollout's bytes by field, and its size once serialized for the object store;
- whether the learner's copy of the observations is the object store's (zero-copy, read-only)
  and their dtype on the learner and on its device;
- the worker's RSS, USS and PSS after --rollouts rollouts, next to those of an idle Ray actor
  (Ray's own share of every actor process).

    python -m bench.atari_datapath --rollouts 500 --out bench/results/atari-datapath-2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import time
from pathlib import Path

ENV = "PongNoFrameskip-v4"


def memory_mb(pid: int) -> dict[str, float]:
    """RSS, USS and PSS of a process in MB (psutil's full memory info)."""
    import psutil
    info = psutil.Process(pid).memory_full_info()
    return {k: round(getattr(info, k) / 2**20, 1) for k in ("rss", "uss", "pss")}


def serialized_bytes(obj) -> tuple[int, int]:
    """(in-band pickle bytes, out-of-band buffer bytes) of pickle protocol 5, as Ray stores
    numpy arrays: their data as separate buffers, copied once into the object store."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(head), sum(memoryview(b).nbytes for b in buffers)


def main(argv: list[str] | None = None) -> None:
    """Measure and print; write the JSON when --out is given."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, default=500)
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    import ray

    from learner.learner import Learner
    from service.cluster import connect
    from service.run.spec import build_spec
    from service.run.spec import job_spaces
    from workers.worker import RolloutWorker

    connect(None, num_cpus=3)
    spec = build_spec({"env": ENV, "envs_per_worker": args.envs, "workers": 2})
    spaces = job_spaces(spec)

    @ray.remote(num_cpus=1)
    class Idle:
        """An actor that does nothing: Ray's baseline memory per actor process."""

        def pid(self) -> int:
            return os.getpid()

    worker = ray.remote(RolloutWorker).options(num_cpus=1).remote(
        ENV, {}, args.envs, spec.steps_per_env, spaces, spec.policy, 0, 0)
    learner = ray.remote(Learner).options(num_cpus=1).remote(spaces, spec.policy, spec.a2c, 10**6, 0)
    idle = Idle.remote()
    worker_pid = ray.get(worker.__ray_call__.remote(lambda self: os.getpid()))
    weights = learner.weights.remote()
    t0 = time.monotonic()
    for _ in range(args.rollouts):
        rollout_ref, _ = worker.sample.options(num_returns=2).remote(weights)
    ray.get(rollout_ref)
    sample_s = time.monotonic() - t0
    rollout = ray.get(rollout_ref)

    def learner_view(self, rollout):
        host, device = self._batch((rollout,))
        return {"obs_dtype_arrived": str(rollout.obs.dtype), "obs_writeable": bool(rollout.obs.flags.writeable),
                "obs_owns_data": bool(rollout.obs.flags.owndata), "host_batch_dtype": str(host["obs"].dtype),
                "device_batch_dtype": str(device["obs"].dtype)}

    view = ray.get(learner.__ray_call__.remote(learner_view, rollout_ref))
    fields = {name: int(getattr(rollout, name).nbytes) for name in rollout.__dataclass_fields__
              if hasattr(getattr(rollout, name), "nbytes")}
    head, buffers = serialized_bytes(rollout)
    result = {
        "bench": "atari_datapath", "env": ENV, "envs": args.envs, "T": spec.steps_per_env,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
        "rollout_bytes": sum(fields.values()), "rollout_bytes_by_field": fields,
        "serialized": {"pickle_bytes": head, "buffer_bytes": buffers},
        "weights_bytes": int(sum(t.nbytes for t in ray.get(weights).tensors.values())),
        "learner_view": view,
        "rollouts_sampled": args.rollouts, "sample_s": round(sample_s, 1),
        "worker_memory_mb": memory_mb(worker_pid),
        "idle_actor_memory_mb": memory_mb(ray.get(idle.pid.remote())),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
