"""cluster.yaml must be a config `ray up` accepts: checked with Ray's own schema, offline."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema():
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)  # raises on any field Ray does not accept


def test_cpu_head_and_autoscaling_gpu_workers():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0
               and t["max_workers"] >= 1 for t in workers)
    assert any("make install" in command for command in config["setup_commands"])


def test_serve_config_places_service_on_the_head_only():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"]["retroiva_head"] == 1
    assert all("retroiva_head" not in t["resources"] for n, t in types.items() if n != head)
    serve = yaml.safe_load((CLUSTER_YAML.parent / "serve_config.yaml").read_text())
    [app] = serve["applications"]
    assert app["import_path"] == "serve_app.deployments:service"
    placed = {d["name"]: d["ray_actor_options"]["resources"] for d in app["deployments"]}
    assert set(placed) == {"api", "runner"}
    assert all(r.get("retroiva_head", 0) > 0 for r in placed.values())
    # Secrets come from the node's environment, never from the config file.
    assert not any("SECRET" in k or "MONGODB" in k or "AWS" in k
                   for k in app.get("runtime_env", {}).get("env_vars", {}))
