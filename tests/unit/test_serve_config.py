"""config/serve.yaml is a valid Serve config that deploys serve_app:app."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.serve.schema import ServeDeploySchema

CONFIG = Path(__file__).resolve().parents[2] / "config" / "serve.yaml"


def test_serve_yaml_is_a_valid_serve_config_for_the_app() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert app.import_path == "serve_app:app"
    assert app.route_prefix == "/"
    (deployment,) = app.deployments
    assert deployment.name == "RaychatIngress"
    # Every open socket holds a slot: thousands per replica, and a bounded queue.
    assert deployment.max_ongoing_requests >= 2000
    assert 0 < deployment.max_queued_requests < deployment.max_ongoing_requests


def test_serve_yaml_gives_the_replicas_the_environment_serve_app_asks_for() -> None:
    from serve_app import REPLICA_ENV

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert REPLICA_ENV.items() <= app.runtime_env["env_vars"].items()


def test_serve_yaml_asks_for_haproxy_for_the_controller_and_the_replicas() -> None:
    from config.serve_env import HAPROXY_FLAG

    schema = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    (app,) = schema.applications
    assert schema.controller_options is not None
    assert schema.controller_options.runtime_env is not None
    assert schema.controller_options.runtime_env["env_vars"][HAPROXY_FLAG] == "1"
    assert app.runtime_env["env_vars"][HAPROXY_FLAG] == "1"
