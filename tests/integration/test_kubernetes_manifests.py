"""deploy/kubernetes/: every manifest passes the Kubernetes schemas (offline, strict), the
KEDA ScaledObject passes its own schema, and the settings that keep scale-in from causing a
reconnection storm hold together."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ops_kit import exposed_metric_names, redis_nodes, scrape

from tether_bench.redisserver import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject.schema.json"
K8S_VERSION = "1.30"  # the oldest Kubernetes these manifests are meant for


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def _one(name: str, kind: str) -> dict[str, Any]:
    [doc] = [doc for doc in _documents(name) if doc["kind"] == kind]
    return doc


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(p.name for p in MANIFESTS.glob("*.yaml")))
def test_every_kubernetes_object_passes_the_kubernetes_schema(name: str) -> None:
    docs = [doc for doc in _documents(name) if doc["kind"] != "ScaledObject"]
    for doc in docs:
        _validate(doc)
    assert docs or name == "autoscale-keda.yaml"


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    hpa = copy.deepcopy(_one("autoscale-hpa.yaml", "HorizontalPodAutoscaler"))
    hpa["spec"]["behavior"]["scaleDown"]["stabilisationWindowSeconds"] = 600
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(hpa)


def _as_hpa(scaled_object: dict[str, Any]) -> dict[str, Any]:
    """The HPA KEDA creates for a ScaledObject (its scale-down/up behaviour as given)."""
    spec = scaled_object["spec"]
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": spec["advanced"]["horizontalPodAutoscalerConfig"]["name"]},
        "spec": {
            "scaleTargetRef": spec["scaleTargetRef"],
            "minReplicas": spec["minReplicaCount"],
            "maxReplicas": spec["maxReplicaCount"],
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": "s0-prometheus"},
                        "target": {"type": "AverageValue", "averageValue": "600m"},
                    },
                }
            ],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }


def test_the_keda_scaled_object_passes_its_schema_and_its_behaviour_the_hpa_schema() -> None:
    scaled = _one("autoscale-keda.yaml", "ScaledObject")
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(scaled, schema)
    _validate(_as_hpa(scaled))
    broken = copy.deepcopy(scaled)
    broken["spec"]["triggers"][0]["metadata"].pop("threshold")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _tether_toml() -> dict[str, Any]:
    config = _one("tether.yaml", "ConfigMap")
    return tomllib.loads(config["data"]["tether.toml"])


def _pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = _one("tether.yaml", "Deployment")["spec"]["template"]["spec"]
    return spec


def test_grace_period_covers_the_prestop_sleep_and_the_whole_drain() -> None:
    pod = _pod_spec()
    [container] = pod["containers"]
    command = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    sleep = int(re.search(r"sleep (\d+);", command)[1])  # type: ignore[index]
    assert "kill -TERM 1" in command  # the node drains on SIGTERM
    config = _tether_toml()
    assert config["drain_window"] > 0  # disconnects are spread, not all at once
    assert config["drain_window"] < config["drain_timeout"]
    assert pod["terminationGracePeriodSeconds"] > sleep + config["drain_timeout"]


def _behaviours() -> list[dict[str, Any]]:
    keda = _one("autoscale-keda.yaml", "ScaledObject")
    hpa = _one("autoscale-hpa.yaml", "HorizontalPodAutoscaler")
    return [
        keda["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        hpa["spec"]["behavior"],
    ]


def test_scale_in_removes_one_pod_at_a_time_each_after_the_previous_is_gone() -> None:
    grace = _pod_spec()["terminationGracePeriodSeconds"]
    keda, hpa = _behaviours()
    assert keda == hpa  # both autoscalers behave the same
    down = hpa["scaleDown"]
    assert down["policies"], "no scale-down policy: Kubernetes' default removes many at once"
    for policy in down["policies"]:
        assert policy["type"] == "Pods"
        assert policy["value"] == 1
        assert policy["periodSeconds"] > grace
    assert down["stabilizationWindowSeconds"] >= 300


def test_both_autoscalers_keep_the_same_floor_and_ceiling() -> None:
    keda = _one("autoscale-keda.yaml", "ScaledObject")["spec"]
    hpa = _one("autoscale-hpa.yaml", "HorizontalPodAutoscaler")["spec"]
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    assert keda["minReplicaCount"] >= 2  # a drained pod's clients need somewhere to go
    [trigger] = keda["triggers"]
    [metric] = hpa["metrics"]
    assert float(trigger["metadata"]["threshold"]) == 0.6
    assert metric["pods"]["target"]["averageValue"] == "600m"


async def test_every_metric_the_autoscalers_read_is_exposed_by_a_node(
    redis_server: RedisServer,
) -> None:
    # A node on Redis, so that the broker's series (breaker, call latency) exist.
    async with redis_nodes(redis_server, "ops") as (node,):
        exposed = exposed_metric_names(await scrape(node))
    keda = _one("autoscale-keda.yaml", "ScaledObject")
    adapter = yaml.safe_load(_one("autoscale-hpa.yaml", "ConfigMap")["data"]["config.yaml"])
    hpa = _one("autoscale-hpa.yaml", "HorizontalPodAutoscaler")
    texts = [
        keda["spec"]["triggers"][0]["metadata"]["query"],
        *(rule["seriesQuery"] for rule in adapter["rules"]),
        *(rule["name"]["as"] for rule in adapter["rules"]),
        *(metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]),
    ]
    used = {name for text in texts for name in re.findall(r"\b(tether_\w+)", text)}
    assert used == {"tether_saturation"}
    assert used <= exposed
