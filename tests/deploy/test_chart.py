"""The Helm chart in deploy/helm/atman, rendered by Helm's own engine and validated offline.

Helm: helm-python-sdk (PyPI) binds Helm v4's Go SDK (the code the `helm` CLI runs) through a C
ABI, so `render`, `lint` and values.schema.json validation here are Helm's, not a re-implementation.
Kubernetes objects are validated with kubernetes-validate (PyPI), which ships the Kubernetes
JSON schemas (strict: unknown fields are errors). The two custom resources (ServiceMonitor,
ScaledObject) have no schema there: they are checked against SUBSET schemas written here from
the operators' API references, covering every field the chart sets.
"""
import copy
import os
import pathlib
import re

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(os.environ.get("ATMAN_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
CHART = ROOT / "deploy" / "helm" / "atman"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: native gRPC probes are GA in
# 1.27) and the newest whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.27.0", kubernetes_validate.utils.latest_version()]

PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"

# GPU, TLS (mutual), tokens, HPA autoscaling and a ServiceMonitor together.
PRODUCTION = {
    "replicaCount": 2,
    "image": {"repository": "registry.example/atman-server", "tag": "0.1.0", "digest": "sha256:" + "a" * 64},
    "server": {"dtype": "bfloat16", "maxBatchRows": 64},  # devices: derived from gpu.count
    "gpu": {"count": 1},
    "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "48Gi"}},
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "runtimeClassName": "nvidia",
    "model": {"source": "pvc", "path": "/models/llama", "pvc": {"claimName": "models", "subPath": "llama-3-8b"}},
    "tls": {"enabled": True, "mutual": True, "cert": PEM_CERT, "key": PEM_KEY, "ca": PEM_CERT},
    "auth": {"enabled": True, "tokens": ["0123456789abcdef0123"]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "autoscaling": {"enabled": True, "mode": "hpa", "minReplicas": 2, "maxReplicas": 8},
}


def merged(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(values):
    """Renders like `helm template rel . -n ns` (schema first, as install does): a list of objects."""
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    rendered = chart.render(values, name="rel", namespace="ns", is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                objects.append(doc)
    return objects


def by_kind(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


SERVICE_MONITOR_SUBSET = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                        "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    }}},
            },
        },
    },
}

SCALED_OBJECT_SUBSET = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                                   "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                                  "name": {"type": "string"}}},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "fallback": {"type": "object", "additionalProperties": False,
                             "required": ["failureThreshold", "replicas"],
                             "properties": {"failureThreshold": {"type": "integer", "minimum": 1},
                                            "replicas": {"type": "integer", "minimum": 0}}},
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False,
                                                      "properties": {"behavior": {"type": "object"}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"],
                    "properties": {"type": {"const": "prometheus"},
                                   # KEDA reads trigger metadata as strings only.
                                   "metadata": {"type": "object", "required": ["serverAddress", "query", "threshold"],
                                                "additionalProperties": {"type": "string"}}}}},
            },
        },
    },
}
# PrometheusRule (monitoring.coreos.com/v1, the operator's API reference): groups of rules, each
# either a recording rule (record) or an alert (alert, for, labels, annotations).
PROMETHEUS_RULE_SUBSET = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string"},
                    "rules": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False, "required": ["expr"],
                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                        "properties": {
                            "record": {"type": "string"}, "alert": {"type": "string"},
                            "expr": {"type": "string"}, "for": {"type": "string"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}},
                }}}},
        },
    },
}
CRD_SUBSETS = {"ServiceMonitor": SERVICE_MONITOR_SUBSET, "ScaledObject": SCALED_OBJECT_SUBSET,
               "PrometheusRule": PROMETHEUS_RULE_SUBSET}


def validate_all(objects):
    """Every object against its Kubernetes (or CRD subset) schema; returns the kinds seen."""
    kinds = []
    for obj in objects:
        kinds.append(obj["kind"])
        if obj["kind"] in CRD_SUBSETS:
            jsonschema.Draft7Validator(CRD_SUBSETS[obj["kind"]]).validate(obj)
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    return sorted(kinds)


def test_lint_strict_passes():
    report = helm.lint(CHART, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == [], problems


def test_default_values_render_and_validate():
    objects = render({})
    # One replica: no PodDisruptionBudget (it would let the only pod go, or block node drains).
    assert validate_all(objects) == ["ConfigMap", "Deployment", "Service", "Service", "Service", "ServiceAccount"]
    # Metrics only on their own ClusterIP Service, never on the main one (maybe a LoadBalancer).
    assert [p["name"] for p in by_kind(objects, "Service", "rel-atman")["spec"]["ports"]] == ["grpc"]
    metrics = by_kind(objects, "Service", "rel-atman-metrics")
    assert metrics["spec"]["type"] == "ClusterIP" and metrics["spec"]["ports"][0]["port"] == 9090
    deployment = by_kind(objects, "Deployment")
    assert deployment["spec"]["progressDeadlineSeconds"] == 1800
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "atman", "app.kubernetes.io/instance": "rel"}}}]
    (container,) = pod["containers"]
    # Native gRPC probes on the standard health service: liveness/startup on "", readiness on ours.
    assert container["startupProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 600
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": "atman.v1.Atman"}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    # Termination: preStop sleep (endpoints drop the pod), drain delay, grace, margin.
    assert container["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert pod["terminationGracePeriodSeconds"] == 5 + 5 + 30 + 15
    assert pod["volumes"][-1] == {"name": "model", "persistentVolumeClaim": {"claimName": "atman-model", "readOnly": True}}
    headless = by_kind(objects, "Service", "rel-atman-headless")
    assert headless["spec"]["clusterIP"] == "None"
    # The settings the chart owns are flags (they win over the image's and extraEnv's ATMAN_*
    # variables); the config file holds the tuning keys only.
    assert container["args"] == ["--config=/etc/atman/config/atman.json", "--model=/models/model", "--devices=cpu",
                                 "--port=50051", "--metrics-port=9090"]
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["atman.json"])
    assert not {"model", "devices", "port", "metrics-port", "tls-cert", "auth-tokens-file"} & set(config)
    assert (config["drain-delay-seconds"], config["max-connection-age-seconds"],
            config["max-connection-age-grace-seconds"]) == (5, 300, 600)
    # Certificates and tokens are re-read every minute: a renewal needs no restart.
    assert config["credentials-refresh-seconds"] == 60
    # CPU mode: the server sizes its workers and threads to the CPU request (2), not to the
    # node's cores; no OMP_NUM_THREADS unless set.
    assert config["cpu-cores"] == 2 and config["workers-per-device"] == 0
    assert "env" not in container


def test_rollout_strategy_volumes_and_pdb_are_configurable():
    objects = render({"replicaCount": 3, "strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                      "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
                      "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
                      "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                                     "whenUnsatisfiable": "DoNotSchedule",
                                                     "labelSelector": {"matchLabels": {"a": "b"}}}]})
    validate_all(objects)
    deployment = by_kind(objects, "Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == ["topology.kubernetes.io/zone"]
    assert by_kind(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    recreate = by_kind(render({"strategy": {"type": "Recreate"}}), "Deployment")
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}
    validate_all([recreate])


def test_network_policy_limits_grpc_metrics_and_egress():
    objects = render({"networkPolicy": {
        "enabled": True,
        "grpcFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]}})
    validate_all(objects)
    policy = by_kind(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    grpc_rule, metrics_rule = policy["ingress"]
    assert grpc_rule == {"ports": [{"port": "grpc", "protocol": "TCP"}],
                         "from": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]}
    assert metrics_rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert policy["egress"][0]["ports"][0]["port"] == 53 and policy["egress"][1]["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert "NetworkPolicy" not in [o["kind"] for o in render({})]


def assert_hardened(pod):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod.get("initContainers", []) + pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, container["name"]
        assert ctx["allowPrivilegeEscalation"] is False, container["name"]
        assert ctx["capabilities"] == {"drop": ["ALL"]}, container["name"]


def test_gpu_tls_autoscaling_servicemonitor_render_and_validate():
    objects = render(PRODUCTION)
    assert validate_all(objects) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                     "Secret", "Secret", "Service", "Service", "Service", "ServiceAccount",
                                     "ServiceMonitor"]
    deployment = by_kind(objects, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    pod = deployment["spec"]["template"]["spec"]
    assert_hardened(pod)
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/atman-server:0.1.0@sha256:" + "a" * 64
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # kubelet's gRPC probe cannot speak TLS: the probes run atman-health with the mounted CA.
    readiness = container["readinessProbe"]
    assert "grpc" not in readiness
    assert readiness["exec"]["command"] == [
        "atman-health", "--addr=127.0.0.1:50051", "--service=atman.v1.Atman", "--timeout-ms=5000", "--tls",
        "--tls-ca=/etc/atman/tls/ca.crt", "--tls-server-name=rel-atman.ns.svc",
        "--tls-cert=/etc/atman/tls/tls.crt", "--tls-key=/etc/atman/tls/tls.key"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model"] == {"name": "model", "mountPath": "/models/llama", "readOnly": True, "subPath": "llama-3-8b"}
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["atman.json"])
    assert config["dtype"] == "bfloat16" and config["max-batch-rows"] == 64
    assert container["args"] == [
        "--config=/etc/atman/config/atman.json", "--model=/models/llama", "--devices=cuda:0", "--port=50051",
        "--metrics-port=9090", "--tls-cert=/etc/atman/tls/tls.crt", "--tls-key=/etc/atman/tls/tls.key",
        "--tls-client-ca=/etc/atman/tls/ca.crt", "--credentials-staging-dir=/run/atman",
        "--auth-tokens-file=/etc/atman/auth/tokens"]
    # The copy of the TLS files the server serves (key included) lives in memory.
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    assert {"name": "tls-staging", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in pod["volumes"]
    assert {"name": "tls-staging", "mountPath": "/run/atman"} in container["volumeMounts"]
    assert "env" not in container, "no OMP_NUM_THREADS on GPUs"
    tls = by_kind(objects, "Secret", "rel-atman-tls")
    assert tls["type"] == "kubernetes.io/tls" and sorted(tls["data"]) == ["ca.crt", "tls.crt", "tls.key"]
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "atman_queued_requests_avg"
    assert hpa["spec"]["metrics"][0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert hpa["spec"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
        "scaleDown": {"stabilizationWindowSeconds": 300}}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    monitor = by_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"]["atman.dev/metrics"] == "true"
    selected = [o["metadata"]["name"] for o in objects if o["kind"] == "Service" and
                monitor["spec"]["selector"]["matchLabels"].items() <= o["metadata"]["labels"].items()]
    assert selected == ["rel-atman-metrics"]


def test_keda_object_storage_variant_renders_and_validates():
    values = merged(PRODUCTION, {
        "autoscaling": {"mode": "keda"},
        "model": {"source": "objectStorage", "objectStorage": {"uri": "s3://models/llama", "credentialsSecret": "s3"}},
        "tls": {"enabled": False}, "auth": {"enabled": False},
    })
    objects = render(values)
    kinds = validate_all(objects)
    assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds
    scaled = by_kind(objects, "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["query"] == \
        'sum(avg_over_time(atman_queued_requests{namespace="ns",service="rel-atman-metrics"}[2m]))'
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleUp"]["policies"] == [
        {"type": "Pods", "value": 1, "periodSeconds": 300}]
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    assert_hardened(pod)
    (init,) = pod["initContainers"]
    assert init["args"][-2:] == ["s3://models/llama", "/models/llama"]
    assert {"name": "model", "emptyDir": {"sizeLimit": "64Gi"}} in pod["volumes"]


def test_host_path_and_demo_image_variants_render_and_validate():
    host = render({"model": {"source": "hostPath", "hostPath": {"path": "/data/models/llama"}}})
    validate_all(host)
    volumes = by_kind(host, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model", "hostPath": {"path": "/data/models/llama", "type": "Directory"}} in volumes
    demo = render({"model": {"source": "image", "path": "/opt/atman/models/default"}})
    validate_all(demo)
    pod = by_kind(demo, "Deployment")["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["config", "tmp"]


@pytest.mark.parametrize("gpu, devices, expected", [
    (0, "", "cpu"), (1, "", "cuda:0"), (4, "", "cuda:0,cuda:1,cuda:2,cuda:3"), (2, "cuda:1,cuda:0", "cuda:1,cuda:0")])
def test_devices_follow_the_gpu_count(gpu, devices, expected):
    container = by_kind(render({"gpu": {"count": gpu}, "server": {"devices": devices}}),
                        "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert f"--devices={expected}" in container["args"]
    if gpu:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu


@pytest.mark.parametrize("resources, threads, cores, omp", [
    ({"requests": {"cpu": "500m"}}, 0, 1, None), ({"requests": {"cpu": "2500m"}}, 0, 3, None),
    ({"requests": {"cpu": 3}, "limits": {"cpu": "6"}}, 0, 6, None), ({"requests": {"cpu": "2"}}, 5, 2, "5"),
    ({"requests": {"cpu": None}}, 0, None, None)])  # null removes the default request
def test_cpu_mode_sizes_the_server_to_the_cpu_resources(resources, threads, cores, omp):
    objects = render({"resources": resources, "server": {"ompNumThreads": threads}})
    container = by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["atman.json"])
    assert config.get("cpu-cores") == cores
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env.get("OMP_NUM_THREADS") == omp


# Settings whose chart default differs from the server's on purpose (docs/deployment.md).
CHART_OVERRIDES = {"max-connection-age-seconds": 300, "max-connection-age-grace-seconds": 600,
                   "log-format": "json"}


def test_chart_defaults_are_the_servers_documented_defaults():
    """Every setting of the default ConfigMap has the default docs/operations.md gives the flag,
    but for the chart's deliberate overrides (and cpu-cores, which comes from the resources)."""
    documented = dict(re.findall(r"^\| `--([a-z-]+)[^|]*` \| `?([^|`]*?)`? \|",
                                 (ROOT / "docs" / "operations.md").read_text(), re.M))
    config = yaml.safe_load(by_kind(render({}), "ConfigMap")["data"]["atman.json"])
    config.pop("cpu-cores")
    assert len(config) >= 20
    for key, value in config.items():
        assert key in documented, f"{key} is not in docs/operations.md's flag table"
        expected = CHART_OVERRIDES.get(key, documented[key])
        assert str(value) == str(expected), f"{key}: chart {value!r}, server {documented[key]!r}"


def test_server_host_binds_both_ports_where_it_is_set():
    def args(values):
        objects = render(values)
        return by_kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--host") for a in args({}))  # the server's 0.0.0.0
    assert args({"server": {"host": "::"}})[-1] == "--host=::"
    assert args({"server": {"host": "10.0.0.7"}})[-1] == "--host=10.0.0.7"


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": "three"}, "replicaCount"),
    ({"server": {"host": "atman.local"}}, "host"),  # a name: the metrics port binds addresses only
    ({"gpu": {"count": 1.5}}, "count"),
    ({"server": {"devices": "gpu0"}}, "devices"),
    ({"server": {"dtype": "int8"}}, "dtype"),
    ({"tls": {"enabled": "yes"}}, "enabled"),
    ({"autoscaling": {"mode": "vpa"}}, "mode"),
    ({"ports": {"grpc": 70000}}, "grpc"),
    ({"model": {"source": "nfs"}}, "source"),
    ({"replicas": 3}, "replicas"),  # unknown key (a typo of replicaCount)
    ({"server": {"maxBatchRow": 8}}, "maxBatchRow"),
    ({"server": {"maxMessageBytes": 1023}}, "maxMessageBytes"),  # the server's bounds
    ({"server": {"workersPerDevice": 65}}, "workersPerDevice"),
])
def test_values_schema_rejects(values, message):
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(values)
    assert message in str(error.value)
    # Helm's lint runs the same schema check.
    report = helm.lint(CHART, values, strict=True)
    assert any(message in str(m["error"]) for m in report["messages"] if m["severity"] == 3), report


@pytest.mark.parametrize("values, message", [
    ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
    ({"auth": {"enabled": True}}, "auth.enabled needs auth.existingSecret"),
    ({"model": {"source": "objectStorage"}}, "model.source=objectStorage needs model.objectStorage.uri"),
    ({"model": {"source": "hostPath"}}, "model.source=hostPath needs model.hostPath.path"),
    ({"gpu": {"count": 1}, "server": {"devices": "cpu"}}, "server.devices=cpu with gpu.count=1"),
    ({"server": {"devices": "cuda:0"}}, "server.devices=cuda:0 names 1 CUDA device(s) but gpu.count=0"),
    ({"gpu": {"count": 2}, "server": {"devices": "cuda:0"}}, "names 1 CUDA device(s) but gpu.count=2"),
    ({"gpu": {"count": 2}, "server": {"devices": "cuda:0,cuda:2"}}, "server.devices: cuda:2 is past the 2 GPU(s)"),
])
def test_incomplete_values_fail_with_a_message(values, message):
    with pytest.raises(helm.HelmRenderError) as error:
        render(values)
    assert message in str(error.value)


def _object_storage(**extra):
    return merged(PRODUCTION, {"model": {"source": "objectStorage", "objectStorage": {"uri": "s3://models/llama", **extra}},
                               "tls": {"enabled": False}, "auth": {"enabled": False}})


def test_object_storage_with_workload_identity_needs_no_secret_and_requests_the_disk():
    values = _object_storage(ephemeralStorageRequest="40Gi")
    values["serviceAccount"] = {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/atman"}}
    objects = render(values)
    validate_all(objects)
    assert not [o for o in objects if o["kind"] == "Secret"]
    account = by_kind(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/atman"}
    pod = by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    (fetch,) = pod["initContainers"]  # no manifest: no verify-model
    assert "envFrom" not in fetch and fetch["args"] == ["s3", "sync", "--no-progress", "s3://models/llama", "/models/llama"]
    (server,) = pod["containers"]
    assert server["resources"]["requests"]["ephemeral-storage"] == "40Gi"
    assert server["resources"]["requests"]["nvidia.com/gpu"] == 1
    # Default request: the download volume's sizeLimit. A user's own request wins.
    server = by_kind(render(_object_storage()), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["requests"]["ephemeral-storage"] == "64Gi"
    own = _object_storage()
    own["resources"]["requests"]["ephemeral-storage"] = "100Gi"
    server = by_kind(render(own), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert server["resources"]["requests"]["ephemeral-storage"] == "100Gi"
    # Another tool (GCS with GKE Workload Identity): the command, then the uri and the path.
    gcs = _object_storage(uri="gs://models/llama", command=["gcloud", "storage", "rsync", "--recursive"])
    (fetch,) = by_kind(render(gcs), "Deployment")["spec"]["template"]["spec"]["initContainers"]
    assert (fetch["command"], fetch["args"]) == (["gcloud", "storage", "rsync", "--recursive"],
                                                 ["gs://models/llama", "/models/llama"])


def _run_verify_model(container, folder, shell):
    """The rendered verify-model container's command, run here on `folder` (its MODEL_DIR)."""
    command = list(container["command"])
    assert command[:2] == ["/bin/sh", "-c"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_DIR"] == "/models/llama"
    env["MODEL_DIR"] = str(folder)
    import subprocess
    out = subprocess.run([shell, *command[1:]], env={"PATH": os.environ["PATH"], **env},
                         capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


@pytest.mark.parametrize("shell", ["/bin/sh", "bash"])  # dash here; bash in Amazon Linux's aws-cli image
def test_the_rendered_manifest_check_fails_the_pod_naming_the_file(tmp_path, shell):
    import hashlib
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\x00" * 4096,
             "tokenizer/tokenizer.json": b"{}"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    sums = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    manifest = "# sha256sum output\n" + "".join(f"{sums[n]}  {n}\n" for n in files)

    def verify(text):
        pod = by_kind(render(_object_storage(sha256sums=text)), "Deployment")["spec"]["template"]["spec"]
        fetch, check = pod["initContainers"]
        assert (fetch["name"], check["name"]) == ("fetch-model", "verify-model")
        assert check["image"] == fetch["image"] and check["securityContext"] == fetch["securityContext"]
        assert {"name": "model", "mountPath": "/models/llama", "readOnly": True} in check["volumeMounts"]
        return _run_verify_model(check, folder, shell)

    assert verify(manifest) == (0, "model manifest: 3 file(s) verified\n")
    # sha256sum's binary-mode marker is read too.
    assert verify(manifest.replace("  model.safetensors", " *model.safetensors"))[0] == 0

    (folder / "model.safetensors").write_bytes(b"\x00" * 4095 + b"\x01")  # one byte off
    rc, out = verify(manifest)
    actual = hashlib.sha256(b"\x00" * 4095 + b"\x01").hexdigest()
    assert rc == 1
    assert f"model manifest: model.safetensors: sha256 {actual}, expected {sums['model.safetensors']}\n" in out
    assert out.endswith(f"model manifest: mismatch in {folder}; the pod does not start\n")
    (folder / "model.safetensors").write_bytes(files["model.safetensors"])

    (folder / "config.json").unlink()
    rc, out = verify(manifest)
    assert rc == 1 and "model manifest: config.json: missing\n" in out
    (folder / "config.json").write_bytes(files["config.json"])

    rc, out = verify(manifest + "not-a-sum  x\n" + f"{sums['config.json']}  ../outside\n")
    assert rc == 1
    assert "model manifest: line 5: not '<64 lowercase hex digits>  <file>': not-a-sum  x\n" in out
    assert "model manifest: line 6: ../outside leaves the model folder\n" in out
    assert verify("# nothing\n") == (1, "model manifest: lists no file\n")


def test_prometheus_rule_and_dashboard_ship_the_repository_files():
    import json
    rules_file = yaml.safe_load((ROOT / "deploy" / "prometheus" / "atman-rules.yaml").read_text())
    dashboard_file = json.loads((ROOT / "deploy" / "grafana" / "atman-dashboard.json").read_text())
    assert not [o for o in render({}) if o["kind"] == "PrometheusRule" or o["metadata"]["name"].endswith("-dashboard")]
    values = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                          "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "atman"}}}}
    objects = render(values)
    validate_all(objects)
    rule = by_kind(objects, "PrometheusRule", "rel-atman")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == {"groups": rules_file["groups"]}  # the same rules, {{ $labels }} untouched
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) == 9
    assert all(r["annotations"]["runbook_url"] == f"docs/deployment.md#{r['alert'].lower()}" for r in alerts)
    assert "{{ $labels.job }}" in alerts[0]["annotations"]["summary"]
    board = by_kind(objects, "ConfigMap", "rel-atman-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"] == {"grafana_folder": "atman"}
    assert json.loads(board["data"]["atman-dashboard.json"]) == dashboard_file

    base = "https://git.example/atman/blob/v0.1.0/docs/deployment.md"
    values["metrics"]["prometheusRule"]["runbookBaseUrl"] = base
    values["metrics"]["grafanaDashboard"].update(namespace="monitoring",
                                                     labels={"grafana_dashboard": None, "dashboards": "atman"})
    objects = render(values)
    rule = by_kind(objects, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert {r["annotations"]["runbook_url"] for r in alerts} == {f"{base}#{r['alert'].lower()}" for r in alerts}
    board = by_kind(objects, "ConfigMap", "rel-atman-dashboard")
    assert board["metadata"]["namespace"] == "monitoring" and board["metadata"]["labels"]["dashboards"] == "atman"
    assert "grafana_dashboard" not in board["metadata"]["labels"]
