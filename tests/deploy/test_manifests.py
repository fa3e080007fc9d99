"""deploy/: the cluster launcher config passes Ray's own validation; the KubeRay manifests and
the Dockerfile name the kinds, images, versions and entry points that the service needs."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from api.cli import build_parser
from service.run.spec import build_spec

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
REPO = DEPLOY.parent


def load_all(name: str) -> list[dict]:
    """Every YAML document of a file under deploy/."""
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def one(docs: list[dict], kind: str) -> dict:
    """The single document of a kind."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def ray_containers(cluster_spec: dict) -> dict[str, dict]:
    """group name ("head" or a worker group) -> its first (Ray) container."""
    groups = {"head": cluster_spec["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]})
    return {name: g["template"]["spec"]["containers"][0] for name, g in groups.items()}


# ---- deploy/cluster.yaml (ray up / ray submit) ----------------------------------------------

@pytest.fixture(scope="module")
def launcher_config() -> dict:
    return yaml.safe_load((DEPLOY / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_own_validation(launcher_config):
    pytest.importorskip("jsonschema")  # what validate_config itself needs
    from ray.autoscaler._private.util import prepare_config, validate_config
    # What `ray up` does before it touches the cloud: fill defaults, merge setup commands, check.
    prepared = prepare_config(copy.deepcopy(launcher_config))
    validate_config(prepared)
    assert set(prepared["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    assert prepared["head_node_type"] == "head"


def test_every_node_type_installs_the_project_and_the_right_torch(launcher_config):
    from ray.autoscaler._private.util import prepare_config
    prepared = prepare_config(copy.deepcopy(launcher_config))
    per_type = {"head": prepared["head_setup_commands"], "cpu_worker": prepared["worker_setup_commands"],
                "gpu_worker": prepared["available_node_types"]["gpu_worker"]["worker_setup_commands"]}
    for node_type, commands in per_type.items():
        text = "\n".join(commands)
        assert "pip install -q -e ~/a2c-service" in text, node_type
        index = "whl/cu" if node_type == "gpu_worker" else "whl/cpu"
        assert f"download.pytorch.org/{index}" in text, node_type
    assert launcher_config["file_mounts"]["~/a2c-service"] == "."


def test_cluster_yaml_runs_the_installed_ray_version_with_token_auth(launcher_config):
    docker = launcher_config["docker"]
    gpu_image = launcher_config["available_node_types"]["gpu_worker"]["docker"]["worker_image"]
    assert docker["image"] == f"rayproject/ray:{ray.__version__}-py311-cpu"
    assert gpu_image == f"rayproject/ray:{ray.__version__}-py311-gpu"
    starts = launcher_config["head_start_ray_commands"] + launcher_config["worker_start_ray_commands"]
    for command in (c for c in starts if "ray start" in c):
        assert "RAY_AUTH_MODE=token ray start" in command
    head = next(c for c in launcher_config["head_start_ray_commands"] if "ray start --head" in c)
    assert "--dashboard-host=127.0.0.1" in head  # reached through `ray dashboard` (SSH), not the network
    assert launcher_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_cluster_yaml_starts_the_api_on_loopback_behind_a_token(launcher_config):
    serve = next(c for c in launcher_config["head_start_ray_commands"] if "a2c serve" in c)
    assert "A2C_API_TOKEN=" in serve
    argv = shlex.split(serve.split("nohup", 1)[1].split(">", 1)[0])
    assert argv[:2] == ["a2c", "serve"]
    args = build_parser().parse_args(argv[1:])
    assert (args.address, args.host, args.port) == ("auto", "127.0.0.1", 8000)


def test_no_deploy_file_turns_ray_auth_off():
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not re.search(r"RAY_AUTH_MODE\W+disabled|mode:\s*disabled", text), path


# ---- deploy/kuberay ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def raycluster_docs() -> list[dict]:
    return load_all("kuberay/raycluster.yaml")


@pytest.fixture(scope="module")
def rayjob_docs() -> list[dict]:
    return load_all("kuberay/rayjob.yaml")


def check_ray_cluster_spec(spec: dict) -> dict[str, dict]:
    """What both manifests' clusters share: Ray version, token auth, images, GPU group."""
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token", "secretName": "a2c-ray-token"}
    containers = ray_containers(spec)
    assert set(containers) == {"head", "cpu", "gpu"}
    for group, container in containers.items():
        flavour = "gpu" if group == "gpu" else "cpu"
        assert container["image"] == f"a2c-service:0.1.0-{flavour}", group
    gpu = containers["gpu"]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1 and gpu["requests"]["nvidia.com/gpu"] == 1
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    return containers


def test_raycluster_manifest_runs_ray_and_the_api_server(raycluster_docs):
    assert [d["kind"] for d in raycluster_docs] == ["PersistentVolumeClaim", "RayCluster", "Service"]
    cluster = one(raycluster_docs, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    containers = check_ray_cluster_spec(cluster["spec"])
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    for container in containers.values():  # with that annotation every container starts Ray itself
        assert "$KUBERAY_GEN_RAY_START_CMD" in container["args"][0]
    head = containers["head"]
    script = head["args"][0]
    serve = re.search(r"a2c serve [^&;]*", script).group(0).split()
    args = build_parser().parse_args(serve[1:])
    assert (args.address, args.host, args.port) == ("auto", "0.0.0.0", 8000)
    token = next(e for e in head["env"] if e["name"] == "A2C_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "a2c-api-token", "key": "token"}
    assert {"containerPort": 8000, "name": "a2c-api"} in head["ports"]
    # Checkpoints go to A2C_STORAGE, here on the head's PVC next to the job database.
    env = {e["name"]: e["value"] for e in head["env"] if "value" in e}
    from api.config import Settings
    settings = Settings(storage=env["A2C_STORAGE"], data_dir=args.data_dir)
    data = next(m for m in head["volumeMounts"] if m["name"] == "data")
    for path in (settings.storage, str(settings.data_dir)):
        assert path.startswith(data["mountPath"] + "/"), path
    service = one(raycluster_docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == {"ray.io/cluster": cluster["metadata"]["name"],
                                           "ray.io/node-type": "head"}


def test_rayjob_manifest_runs_a_training_job_from_its_config(rayjob_docs):
    assert [d["kind"] for d in rayjob_docs] == ["ConfigMap", "PersistentVolumeClaim", "RayJob"]
    job = one(rayjob_docs, "RayJob")
    assert job["apiVersion"] == "ray.io/v1" and job["spec"]["shutdownAfterJobFinishes"] is True
    check_ray_cluster_spec(job["spec"]["rayClusterSpec"])
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:3] == ["python", "-m", "service.train"]
    args = build_parser().parse_args(["train", *entry[3:]])
    # The config file is the ConfigMap's job.yaml, mounted in the head pod where the driver runs.
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "spec")
    assert args.config == Path(mount["mountPath"]) / "job.yaml"
    config_map = one(rayjob_docs, "ConfigMap")
    volume = next(v for v in head["volumes"] if v["name"] == "spec")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    spec = build_spec(yaml.safe_load(config_map["data"]["job.yaml"]))
    assert spec.env == "CartPole-v1"
    # Checkpoints land on the PVC, which outlives the ephemeral cluster.
    runs = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "runs")
    assert str(args.out).startswith(runs["mountPath"] + "/")


# ---- deploy/Dockerfile ------------------------------------------------------------------------

def test_dockerfile_builds_on_the_ray_image_and_names_the_entry_points():
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE=rayproject/ray:{ray.__version__}-py311-cpu" in text
    assert "python -m service.train" in text and "a2c serve --address auto --host 0.0.0.0" in text
    assert "--index-url" in text and "download.pytorch.org/whl/cpu" in text
    # PROJECT_EXTRAS names extras of pyproject.toml (the object-store filesystems).
    import tomllib
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in re.findall(r"PROJECT_EXTRAS=(\w+)", text):
        assert extra in extras, extra
    copied = re.findall(r"^COPY --chown=\S+ (.+) \S+$", text, re.M)
    sources = [src for line in copied for src in line.split()]
    for package in ("learner/", "workers/", "service/", "api/"):
        assert package in sources, package
    for src in sources:
        assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    assert re.search(r'^CMD \["a2c"', text, re.M)


def test_readme_walkthrough_covers_the_commands_users_run():
    text = (DEPLOY / "README.md").read_text()
    for command in ("ray up deploy/cluster.yaml", "ray submit deploy/cluster.yaml", "ray job submit",
                    "kubectl port-forward", "/checkpoints/latest/archive", "RAY_AUTH_MODE=token"):
        assert command in text, command
