"""The Helm chart, rendered and linted by Helm's own engine, checked against Kubernetes.

helm-python-sdk binds Helm's Go SDK (the same code as the `helm` binary: template
engine, values coalescing, values.schema.json validation, lint), so what renders here
renders the same in `helm install`. Every rendered manifest is validated against the
Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict: unknown fields
fail), for the chart's minimum Kubernetes and the newest bundled one. Then the
values that matter are followed to where they must land.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm  # helm-python-sdk, in the test extra
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = ROOT / "helm" / "framecast"
RELEASE, NAMESPACE = "fc", "video"
FULLNAME = f"{RELEASE}-framecast"

# Chart.yaml's kubeVersion floor and the newest schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.29.0", "1.37.0")
# Custom resources: kubernetes-validate bundles only the built-in API schemas, and no
# PyPI package ships the Prometheus Operator or Gateway API CRD schemas. Their
# fields are checked by hand below (selectors, ports, backend refs, timeouts).
CRD_KINDS = {"ServiceMonitor", "HTTPRoute"}

PROFILES = {"default": None, "gpu": "values-gpu.yaml", "cpu": "values-cpu.yaml"}

# Every optional part switched on at once, on top of the defaults, so each template
# is rendered and schema-checked at least once.
EVERYTHING: dict[str, Any] = {
    "apiKeys": {"keys": ["key-one", "key,two"]},
    "jobStore": {"redis": {"enabled": True}},
    "model": {"source": "initContainer", "path": "student",
              "initContainer": {"image": {"repository": "registry.example.com/weights", "tag": "v1"}}},
    "engines": {"cache": {"type": "pvc", "storageClassName": "fast"}},
    "ingress": {"enabled": True, "tls": [{"secretName": "tls", "hosts": ["framecast.example.com"]}]},
    "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}],
                  "hostnames": ["framecast.example.com"]},
    "autoscaling": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
    "podAnnotations": {"example.com/team": "video"},
    "webrtc": {"iceServers": [{"urls": "stun:stun.example.com:3478"},
                              {"urls": ["turn:turn.example.com:3478?transport=udp"], "username": "u", "credential": "p"}]},
}


# --- rendering ------------------------------------------------------------------------

def merged(base: dict | None, override: dict | None) -> dict:
    """`helm -f base -f override`: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base or {})
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def profile(name: str) -> dict:
    filename = PROFILES[name]
    return yaml.safe_load((CHART_DIR / filename).read_text()) if filename else {}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart, values: dict | None = None) -> list[dict]:
    """All rendered Kubernetes objects (NOTES.txt and empty templates left out)."""
    files = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in files.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def one(docs: list[dict], kind: str, name: str = FULLNAME) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {[(d['kind'], d['metadata']['name']) for d in docs]}"
    return found[0]


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(spec: dict, name: str, init: bool = False) -> dict:
    found = [c for c in spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    assert len(found) == 1, f"no {'init ' if init else ''}container {name}"
    return found[0]


def env(c: dict) -> dict[str, Any]:
    """name -> value, or the valueFrom mapping for references."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- Helm's own checks ---------------------------------------------------------------------

@pytest.mark.parametrize("name", PROFILES)
def test_chart_lints_clean(name):
    report = helm.lint(CHART_DIR, profile(name) or None, strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("name", [*PROFILES, "everything"])
def test_every_manifest_matches_the_kubernetes_schemas(chart, name):
    values = merged(profile("default"), EVERYTHING) if name == "everything" else profile(name)
    docs = render(chart, values)
    checked = set()
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version} at {where}: {exc.message}")
        checked.add(doc["kind"])
    assert {"Deployment", "Service", "ServiceAccount"} <= checked
    if name == "everything":
        assert {"Secret", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                "PersistentVolumeClaim"} <= checked
        assert {d["kind"] for d in docs} >= CRD_KINDS


# --- GPU versus CPU ----------------------------------------------------------------------

def test_gpu_profile_schedules_on_gpu_nodes(chart):
    docs = render(chart, profile("gpu"))
    spec = pod_spec(docs)
    server = container(spec, "server")
    builder = container(spec, "build-engines", init=True)
    # The engine is built on the same kind of GPU it serves from: both hold one.
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert builder["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["runtimeClassName"] == "nvidia"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert server["image"].endswith("-gpu")
    assert env(server)["FRAMECAST_DEVICE"] == "cuda"
    assert env(server)["FRAMECAST_BACKEND"] == "tensorrt"


def test_cpu_profile_runs_without_a_gpu(chart):
    files = chart.render(values=profile("cpu"), name=RELEASE, namespace=NAMESPACE)
    assert "nvidia.com/gpu" not in "".join(files.values())
    docs = render(chart, profile("cpu"))
    spec = pod_spec(docs)
    server = container(spec, "server")
    assert "runtimeClassName" not in spec and "tolerations" not in spec and "nodeSelector" not in spec
    assert "initContainers" not in spec, "no TensorRT engines to build on CPU"
    assert server["image"].endswith("-cpu")
    assert env(server)["FRAMECAST_DEVICE"] == "cpu"
    # The embedded default model: no FRAMECAST_MODEL, no model volume.
    assert "FRAMECAST_MODEL" not in env(server)
    assert "model" not in {v["name"] for v in spec["volumes"]}


def test_gpu_count_sets_the_limit(chart):
    spec = pod_spec(render(chart, {"gpu": {"count": 4}}))
    assert container(spec, "server")["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert container(spec, "server")["resources"]["limits"]["memory"] == "32Gi", "user limits are kept"


# --- probes, ports, volumes ---------------------------------------------------------------------

@pytest.mark.parametrize("name", PROFILES)
def test_probes_reach_the_server_health_endpoints(chart, name):
    docs = render(chart, profile(name))
    server = container(pod_spec(docs), "server")
    assert server["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert server["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports["http"] == 8000
    assert server["args"][:5] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


@pytest.mark.parametrize("name", [*PROFILES, "everything"])
def test_every_volume_mount_names_a_pod_volume(chart, name):
    values = merged(profile("default"), EVERYTHING) if name == "everything" else profile(name)
    spec = pod_spec(render(chart, values))
    volumes = {v["name"] for v in spec["volumes"]}
    for c in spec["containers"] + spec.get("initContainers", []):
        missing = {m["name"] for m in c.get("volumeMounts", [])} - volumes
        assert not missing, f"{c['name']} mounts {missing}, which the pod does not define"


def test_pod_runs_as_the_image_user_on_a_read_only_root(chart):
    spec = pod_spec(render(chart))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    server = container(spec, "server")
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    # Everything the process writes has a volume: caches, scratch, engines, clips.
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert {"/tmp", "/home/framecast", "/var/cache/framecast/engines", "/var/lib/framecast"} <= mounts
    assert env(server)["HOME"] == "/home/framecast"


# --- engines and model --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "gpu"])
def test_build_engines_init_step_fills_the_cache_the_server_reads(chart, name):
    spec = pod_spec(render(chart, profile(name)))
    builder = container(spec, "build-engines", init=True)
    server = container(spec, "server")
    args = builder["args"]
    assert args[0] == "build-engines"
    cache_dir = args[args.index("--cache-dir") + 1]
    assert cache_dir == env(server)["FRAMECAST_ENGINE_CACHE_DIR"] == env(builder)["FRAMECAST_ENGINE_CACHE_DIR"]
    for c in (builder, server):
        assert {"name": "engines", "mountPath": cache_dir} in c["volumeMounts"]
    # Engines are keyed by model: the builder must build for the model that is served.
    if "FRAMECAST_MODEL" in env(server):
        assert args[args.index("--model") + 1] == env(server)["FRAMECAST_MODEL"]
    else:
        assert "--model" not in args
    assert env(server)["BUILD_ENGINES_ON_START"] == "0", "the image must not build a second time"


def test_gpu_profile_keeps_engines_and_reads_the_model_claim(chart):
    docs = render(chart, profile("gpu"))
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes["engines"]["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "framecast-models", "readOnly": True}
    server = container(spec, "server")
    assert env(server)["FRAMECAST_MODEL"] == "/models/student"
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]


def test_model_from_an_init_container_is_fetched_before_engines_are_built(chart):
    spec = pod_spec(render(chart, merged(profile("default"), {"model": EVERYTHING["model"]})))
    assert [c["name"] for c in spec["initContainers"]] == ["fetch-model", "build-engines"]
    fetch = container(spec, "fetch-model", init=True)
    assert fetch["image"] == "registry.example.com/weights:v1"
    assert {"name": "model", "mountPath": "/models"} in fetch["volumeMounts"]
    assert "emptyDir" in {v["name"]: v for v in spec["volumes"]}["model"]
    assert env(container(spec, "server"))["FRAMECAST_MODEL"] == "/models/student"


# --- traffic ----------------------------------------------------------------------------------

def test_ingress_keeps_websockets_open_and_sticky(chart):
    docs = render(chart, profile("gpu"))
    ingress = one(docs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert notes["nginx.ingress.kubernetes.io/session-cookie-name"] == "framecast-affinity"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = one(docs, "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["sessionAffinity"] == "ClientIP"

    longer = one(render(chart, merged(profile("gpu"), {"ingress": {"websocketTimeoutSeconds": 7200}})), "Ingress")
    assert longer["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"
    other = one(render(chart, merged(profile("gpu"), {"ingress": {"className": "traefik"}})), "Ingress")
    assert "annotations" not in other["metadata"], "nginx annotations only for ingress-nginx"
    override = {"ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"}}}
    overridden = one(render(chart, merged(profile("gpu"), override)), "Ingress")["metadata"]["annotations"]
    assert overridden["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "60", "the operator's value wins"
    assert overridden["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"


def test_httproute_points_at_the_service_without_a_request_timeout(chart):
    docs = render(chart, merged(profile("default"), {"httpRoute": EVERYTHING["httpRoute"]}))
    route = one(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    rule = route["spec"]["rules"][0]
    service = one(docs, "Service")
    assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}]
    assert rule["timeouts"] == {"request": "0s"}


def test_httproute_needs_a_gateway(chart):
    with pytest.raises(helm.HelmError, match="httpRoute.parentRefs"):
        render(chart, {"httpRoute": {"enabled": True}})


# --- scaling and disruption ------------------------------------------------------------------------

def server_metric_names() -> set[str]:
    """The series the server's /metrics exposes, from its own registry."""
    from server.metrics import Metrics  # here, so a server problem fails only this test

    return {family.name for family in Metrics().registry.collect()}


@pytest.mark.parametrize("metric", ["activeSessions", "queueDepth"])
def test_hpa_scales_on_a_metric_the_server_exports(chart, metric):
    docs = render(chart, merged(profile("gpu"), {"autoscaling": {"metric": metric}}))
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    (target,) = hpa["spec"]["metrics"]
    assert target["type"] == "Pods"
    assert target["pods"]["target"] == {"type": "AverageValue", "averageValue": "6"}
    assert target["pods"]["metric"]["name"] in server_metric_names()
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"


def test_pdb_and_service_monitor_select_the_server(chart):
    docs = render(chart, profile("gpu"))
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    service = one(docs, "Service")
    assert labels_match(service["spec"]["selector"], pod_labels)
    monitor = one(docs, "ServiceMonitor")
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # Redis is not a server: no server selector may catch it.
    redis_labels = one(docs, "Deployment", f"{FULLNAME}-redis")["spec"]["template"]["metadata"]["labels"]
    assert not labels_match(service["spec"]["selector"], redis_labels)
    assert not labels_match(pdb["spec"]["selector"]["matchLabels"], redis_labels)

    min_available = one(render(chart, merged(profile("gpu"), {"podDisruptionBudget": {"minAvailable": 1}})),
                        "PodDisruptionBudget")
    assert min_available["spec"]["minAvailable"] == 1 and "maxUnavailable" not in min_available["spec"]


# --- server limits -----------------------------------------------------------------------------

def test_limits_reach_the_server_env_and_capacity_is_measured_by_default(chart):
    server = env(container(pod_spec(render(chart)), "server"))
    assert "FRAMECAST_MAX_SESSIONS" not in server  # measured at warm-up
    assert "FRAMECAST_MEMORY_BUDGET_BYTES" not in server
    assert "FRAMECAST_FORWARDED_ALLOW_IPS" not in server  # no proxy in front: the server's default
    assert server["FRAMECAST_STALL_TIMEOUT_S"] == "30"
    assert server["FRAMECAST_SESSIONS_PER_ADDRESS"] == "4"
    assert server["FRAMECAST_MAX_BODY_BYTES"] == "1048576"
    assert (server["FRAMECAST_MAX_PENDING_JOBS"], server["FRAMECAST_PENDING_JOBS_PER_KEY"]) == ("32", "8")

    pinned = env(container(pod_spec(render(chart, {"server": {"maxSessions": 3, "memoryBudgetBytes": 40 << 30}})),
                           "server"))
    assert (pinned["FRAMECAST_MAX_SESSIONS"], pinned["FRAMECAST_MEMORY_BUDGET_BYTES"]) == ("3", str(40 << 30))


def test_behind_an_ingress_the_client_address_comes_from_the_proxy(chart):
    # Per-address stream limits would otherwise count every viewer as the ingress.
    for values in ({"ingress": {"enabled": True}}, profile("gpu")):
        assert env(container(pod_spec(render(chart, values)), "server"))["FRAMECAST_FORWARDED_ALLOW_IPS"] == "*"
    chosen = render(chart, {"ingress": {"enabled": True}, "server": {"forwardedAllowIps": "10.0.0.0/8"}})
    assert env(container(pod_spec(chosen), "server"))["FRAMECAST_FORWARDED_ALLOW_IPS"] == "10.0.0.0/8"


def test_webrtc_ice_servers_reach_the_server_as_its_settings_read_them(chart, monkeypatch):
    from server.settings import Settings

    server = env(container(pod_spec(render(chart)), "server"))
    assert "FRAMECAST_WEBRTC_ICE_SERVERS" not in server  # host candidates only
    assert (server["FRAMECAST_WEBRTC_CODEC"], server["FRAMECAST_WEBRTC_PEER_TIMEOUT_S"]) == ("h264", "5")
    listed = env(container(pod_spec(render(chart, {"webrtc": EVERYTHING["webrtc"]})), "server"))
    monkeypatch.setenv("FRAMECAST_WEBRTC_ICE_SERVERS", listed["FRAMECAST_WEBRTC_ICE_SERVERS"])
    settings = Settings()
    assert [s.model_dump() for s in settings.webrtc_ice_servers] == [
        {"urls": "stun:stun.example.com:3478", "username": None, "credential": None},
        {"urls": ["turn:turn.example.com:3478?transport=udp"], "username": "u", "credential": "p"}]
    secret = {"webrtc": {**EVERYTHING["webrtc"], "iceServersSecret": {"name": "turn-creds"}}}
    ref = env(container(pod_spec(render(chart, secret)), "server"))["FRAMECAST_WEBRTC_ICE_SERVERS"]
    assert ref == {"secretKeyRef": {"name": "turn-creds", "key": "ice-servers"}}  # the Secret wins


# --- secrets and the job store --------------------------------------------------------------------

def test_api_keys_secret_reaches_the_server_env(chart):
    docs = render(chart, {"apiKeys": EVERYTHING["apiKeys"]})
    secret = one(docs, "Secret", f"{FULLNAME}-api-keys")
    ref = env(container(pod_spec(docs), "server"))["FRAMECAST_API_KEYS"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    # A JSON list, which the server's settings parse whole: a key may hold a comma.
    assert json.loads(base64.b64decode(secret["data"][ref["key"]])) == ["key-one", "key,two"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/api-keys" in annotations


def test_existing_api_keys_secret_is_referenced_not_created(chart):
    docs = render(chart, profile("gpu"))
    assert not [d for d in docs if d["kind"] == "Secret"]
    ref = env(container(pod_spec(docs), "server"))["FRAMECAST_API_KEYS"]["secretKeyRef"]
    assert ref == {"name": "framecast-api-keys", "key": "api-keys"}


def test_no_api_keys_means_no_key_env(chart):
    assert "FRAMECAST_API_KEYS" not in env(container(pod_spec(render(chart)), "server"))


def test_replicas_share_the_in_chart_redis(chart):
    docs = render(chart, profile("gpu"))
    redis = one(docs, "Service", f"{FULLNAME}-redis")
    url = env(container(pod_spec(docs), "server"))["FRAMECAST_JOB_STORE_URL"]
    assert url == f"redis://{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}/0"
    redis_pod = one(docs, "Deployment", f"{FULLNAME}-redis")["spec"]["template"]["metadata"]["labels"]
    assert labels_match(redis["spec"]["selector"], redis_pod)


def test_external_job_store_replaces_the_in_chart_redis(chart):
    docs = render(chart, merged(profile("gpu"), {"jobStore": {"url": "redis://cache.internal:6379/3"}}))
    assert not [d for d in docs if "redis" in d["metadata"]["name"]]
    assert env(container(pod_spec(docs), "server"))["FRAMECAST_JOB_STORE_URL"] == "redis://cache.internal:6379/3"
    docs = render(chart, merged(profile("gpu"), {"jobStore": {"urlSecret": {"name": "store"}}}))
    ref = env(container(pod_spec(docs), "server"))["FRAMECAST_JOB_STORE_URL"]
    assert ref == {"secretKeyRef": {"name": "store", "key": "url"}}


# --- values the chart refuses ------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "named"), [
    ({"replicaCount": -1}, "/replicaCount"),
    ({"gpu": {"count": "1"}}, "/gpu/count"),
    ({"gpu": {"count": -2}}, "/gpu/count"),
    ({"server": {"backend": "cuda"}}, "/server/backend"),
    ({"autoscaling": {"metric": "gpuUtilization"}}, "/autoscaling/metric"),
    ({"ingress": {"websocketTimeoutSeconds": 30}}, "/ingress/websocketTimeoutSeconds"),
    ({"model": {"source": "s3"}}, "/model/source"),
    ({"jobStore": {"url": "memcached://x"}}, "/jobStore/url"),
    ({"replicas": 2}, "'replicas' not allowed"),
])
def test_schema_rejects_bad_values_naming_the_field(chart, values, named):
    with pytest.raises(helm.HelmValuesError) as raised:
        render(chart, values)
    assert named in str(raised.value)
    # `helm lint` reports the same problem as an error.
    report = helm.lint(CHART_DIR, values)
    assert any(named in m["error"] for m in report["messages"] if m["severity"] == 3)


@pytest.mark.parametrize(("values", "named"), [
    ({"replicaCount": 3}, "jobStore"),
    ({"autoscaling": {"enabled": True}}, "jobStore"),
    ({"model": {"source": "pvc"}}, "model.pvc.claimName"),
    ({"model": {"source": "initContainer"}}, "model.initContainer.image.repository"),
    ({"terminationGracePeriodSeconds": 20}, "terminationGracePeriodSeconds"),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2},
      "jobStore": {"redis": {"enabled": True}}}, "autoscaling.minReplicas"),
])
def test_inconsistent_values_fail_rendering_naming_the_value(chart, values, named):
    with pytest.raises(helm.HelmRenderError, match=named.replace(".", r"\.")):
        render(chart, values)
