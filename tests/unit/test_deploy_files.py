"""The cluster deploy files agree with each other, with the app and with the installed Ray.

config/serve.cluster.yaml (a `ray start` cluster), deploy/rayservice.yaml (KubeRay)
and deploy/Dockerfile (its image) are read as data: no Ray cluster, no Docker.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema
from sqlalchemy.engine import make_url

from config.serve_env import HAPROXY_FLAG

ROOT = Path(__file__).resolve().parents[2]
SERVE_YAML = ROOT / "config" / "serve.yaml"
CLUSTER_YAML = ROOT / "config" / "serve.cluster.yaml"
RAYSERVICE_YAML = ROOT / "deploy" / "rayservice.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"

SECRET_NAME = "raychat"  # the Kubernetes Secret deploy/rayservice.yaml reads
SECRET_VARIABLES = ("RAYCHAT_SECRET", "RAYCHAT_DATABASE_URL")
# Keys of a Serve config that KubeRay's serveConfigV2 cannot carry, left out of both
# sides of the comparison. None: KubeRay hands the whole document, as JSON, to the
# dashboard's `PUT /api/serve/applications/`, which validates it as ServeDeploySchema
# and applies http_options, proxy_location, grpc_options, logging_config and
# controller_options as well as the applications (Ray 2.60 serve_head.py); KubeRay
# itself only adds target_capacity, for incremental upgrades.
NOT_IN_SERVE_CONFIG_V2: frozenset[str] = frozenset()
# What the cluster variant may change of config/serve.yaml; everything else it keeps.
CLUSTER_CHANGES = {
    ("http_options", "host"),
    ("applications", 0, "deployments", 0, "num_replicas"),
}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _cluster() -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(_load(CLUSTER_YAML))


def _rayservice() -> dict[str, Any]:
    manifest: dict[str, Any] = _load(RAYSERVICE_YAML)
    return manifest


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar of a parsed YAML document by its path of keys and list indexes."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return {path: node}
    found: dict[tuple[Any, ...], Any] = {}
    for key, value in items:
        found.update(_leaves(value, (*path, key)))
    return found


def _all_env_vars(schema: ServeDeploySchema) -> list[dict[str, str]]:
    """Every env_vars mapping the config sets: controller, apps, deployments."""
    envs = []
    if schema.controller_options is not None and schema.controller_options.runtime_env:
        envs.append(schema.controller_options.runtime_env.get("env_vars") or {})
    for app in schema.applications:
        envs.append((app.runtime_env or {}).get("env_vars") or {})
        for deployment in app.deployments:
            runtime_env = getattr(deployment.ray_actor_options, "runtime_env", None)
            envs.append((runtime_env or {}).get("env_vars") or {})
    return envs


def _containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


# -- config/serve.cluster.yaml --------------------------------------------------------


def test_cluster_config_is_a_valid_serve_config_for_the_app() -> None:
    schema = _cluster()
    (app,) = schema.applications
    assert app.import_path == "serve_app:app"
    assert app.route_prefix == "/"
    (deployment,) = app.deployments
    assert deployment.name == "RaychatIngress"
    # Ingress replicas reserve no CPU (Serve's default is a whole one).
    assert deployment.ray_actor_options.num_cpus == 0


def test_cluster_config_keeps_everything_serve_yaml_sets() -> None:
    base, cluster = _leaves(_load(SERVE_YAML)), _leaves(_load(CLUSTER_YAML))
    kept = {path: value for path, value in base.items() if path not in CLUSTER_CHANGES}
    assert {path: cluster.get(path, "<missing>") for path in kept} == kept


def test_cluster_config_listens_for_other_nodes_and_proxies_on_every_node() -> None:
    schema = _cluster()
    # HAProxy on one node forwards to replicas on the others.
    assert schema.http_options.host == "0.0.0.0"
    assert schema.http_options.port == 8000
    assert schema.proxy_location == "EveryNode"


def test_cluster_config_runs_one_ingress_replica_per_node() -> None:
    (deployment,) = _cluster().applications[0].deployments
    assert deployment.max_replicas_per_node == 1
    assert isinstance(deployment.num_replicas, int) and deployment.num_replicas >= 2


def test_cluster_config_gives_the_replicas_the_environment_serve_app_asks_for() -> None:
    from serve_app import REPLICA_ENV

    (app,) = _cluster().applications
    assert REPLICA_ENV.items() <= app.runtime_env["env_vars"].items()


def test_cluster_config_asks_for_haproxy_for_the_controller_and_the_replicas() -> None:
    schema = _cluster()
    (app,) = schema.applications
    assert schema.controller_options is not None
    assert schema.controller_options.runtime_env is not None
    assert schema.controller_options.runtime_env["env_vars"][HAPROXY_FLAG] == "1"
    assert app.runtime_env["env_vars"][HAPROXY_FLAG] == "1"


def test_cluster_config_holds_no_secret() -> None:
    for env in _all_env_vars(_cluster()):
        assert "RAYCHAT_SECRET" not in env
        assert "RAYCHAT_OPENAI_API_KEY" not in env
        url = env.get("RAYCHAT_DATABASE_URL")
        assert url is None or make_url(url).password is None
    # Nor a URL with a password anywhere, commented-out examples included (but for the
    # placeholder USER:PASSWORD).
    for user, password in re.findall(r"://([^/\s:@]+):([^@\s]+)@", CLUSTER_YAML.read_text()):
        assert (user, password) == ("USER", "PASSWORD")


# -- deploy/rayservice.yaml ------------------------------------------------------------


def test_rayservice_serve_config_is_config_serve_cluster_yaml() -> None:
    manifest = _rayservice()
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    cluster = _load(CLUSTER_YAML)
    for key in NOT_IN_SERVE_CONFIG_V2:  # both sides, explicitly (none today)
        serve_config.pop(key, None)
        cluster.pop(key, None)
    assert serve_config == cluster
    ServeDeploySchema.model_validate(serve_config)


def test_rayservice_containers_take_the_secrets_from_the_kubernetes_secret() -> None:
    containers = _containers(_rayservice())
    assert len(containers) >= 2  # the head and at least one worker group
    for container in containers:
        env = {item["name"]: item for item in container.get("env", [])}
        for name in SECRET_VARIABLES:
            assert name in env, f"{container['name']}: no {name}"
            assert "value" not in env[name], f"{container['name']}: {name} written in the file"
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME


def test_rayservice_containers_start_ray_with_haproxy_and_expose_serve_port() -> None:
    for container in _containers(_rayservice()):
        env = {item["name"]: item for item in container.get("env", [])}
        assert env[HAPROXY_FLAG]["value"] == "1", container["name"]
        ports = {port["containerPort"]: port.get("name") for port in container.get("ports", [])}
        assert ports.get(8000) == "serve", container["name"]
        assert container["image"] == "raychat:latest"
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]


def test_rayservice_names_the_installed_ray_version() -> None:
    assert _rayservice()["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__


def test_rayservice_has_at_least_as_many_nodes_as_ingress_replicas() -> None:
    manifest = _rayservice()
    (deployment,) = (
        ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
        .applications[0]
        .deployments
    )
    workers = sum(
        group["replicas"] for group in manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    )
    # max_replicas_per_node: 1, so every replica needs a node of its own (the head is one).
    assert 1 + workers >= deployment.num_replicas


# -- deploy/Dockerfile -----------------------------------------------------------------


def test_dockerfile_base_image_is_the_installed_ray() -> None:
    froms = [args for instruction, args in _dockerfile_instructions() if instruction == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)", froms[0])
    assert match is not None, froms[0]
    assert match["ray"] == ray.__version__
    assert int(match["py"][1:]) >= 11  # pyproject: requires-python >= 3.11


def test_dockerfile_installs_the_project_with_postgres_and_sets_the_environment() -> None:
    instructions = _dockerfile_instructions()
    runs = [shlex.split(args) for instruction, args in instructions if instruction == "RUN"]
    assert any("pip" in words and "install" in words and ".[postgres]" in words for words in runs)
    env = " ".join(args for instruction, args in instructions if instruction == "ENV")
    assert re.search(r"\bRAY_USAGE_STATS_ENABLED=0\b", env)
    assert re.search(r"\bOPENAI_AGENTS_DISABLE_TRACING=1\b", env)
    # The project is copied to the working directory (`serve_app:app`, ./data resolve there).
    workdir = [args for instruction, args in instructions if instruction == "WORKDIR"][-1]
    copies = [args.split()[-1] for instruction, args in instructions if instruction == "COPY"]
    assert copies and copies[-1] in (".", "./", workdir, workdir + "/")


@pytest.mark.parametrize("pattern", ["data/", ".git", "benchmarks/results", "**/__pycache__"])
def test_docker_build_context_leaves_out_local_state(pattern: str) -> None:
    # data/ holds the generated token secret and the SQLite file.
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert pattern in patterns
