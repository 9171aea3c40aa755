"""deploy/ and the Dockerfile: the rendered manifests are valid Kubernetes and keep the design's promises.

Renders the kustomize base and the example overlay with the real `kubectl kustomize`, validates every
document with kubernetes-validate in strict mode (an unknown schema counts as a failure, as does any error),
then checks what matters for operating bgproxy: least-privilege RBAC, hardened pods, probes, drain timing, the
admin API kept off the Ingress. Lints the Dockerfile with hadolint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAY = DEPLOY / "overlays" / "example"
SERVICEMONITOR_COMPONENT = DEPLOY / "components" / "servicemonitor"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

KUBECTL = shutil.which("kubectl")

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: it is needed to render the kustomizations (CI installs it)",
)

NAMESPACE = "bgproxy-demo"
STATE_CONFIGMAP = "bgproxy-state"
ADMIN_SECRET = "bgproxy-admin-token"
HTTP_PORT = 8080
ADMIN_PORT = 9090
RUN_AS_USER = 10001

# 1.30: the oldest supported (the preStop `sleep` action is beta and on by default from 1.30 on);
# 1.32: the kubectl on these machines; and the newest schema kubernetes-validate ships.
K8S_VERSIONS = sorted(
    {"1.30", "1.32", ".".join(kubernetes_validate.latest_version().split(".")[:2])},
    key=lambda v: tuple(int(p) for p in v.split(".")),
)

# Every setting DESIGN.md knows; any other BGPROXY_* name in a manifest is a typo that bgproxy would ignore.
KNOWN_SETTINGS = {
    f"BGPROXY_{name}"
    for name in (
        "BLUE_URL GREEN_URL LISTEN ADMIN_LISTEN ADMIN_TOKEN INITIAL_ACTIVE STATE_BACKEND STATE_FILE "
        "CONFIGMAP_NAME CONFIGMAP_NAMESPACE PREVIEW_HEADER PREVIEW_COOKIE COLOR_HEADER "
        "UPSTREAM_CONNECT_TIMEOUT UPSTREAM_READ_TIMEOUT LOG_LEVEL LOG_FORMAT DRAIN_GRACE DRAIN_TIMEOUT "
        "HEALTH_PATH HEALTH_INTERVAL "
        "ADMIN_TOKEN_FILE MAX_REQUEST_LINE MAX_HEADER_BYTES HEADER_TIMEOUT IDLE_TIMEOUT MAX_CONNECTIONS"
    ).split()
}
DRAIN_DEFAULTS = {"BGPROXY_DRAIN_GRACE": 5.0, "BGPROXY_DRAIN_TIMEOUT": 30.0}

Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# rendering and lookup helpers


def kustomize(path: Path) -> list[Doc]:
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"kubectl kustomize {path} rendered nothing"
    return docs


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[Doc]:
    return kustomize(OVERLAY)


@pytest.fixture(scope="module", params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def bgproxy_deployment(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", "bgproxy")


def bgproxy_container(docs: list[Doc]) -> Doc:
    containers = bgproxy_deployment(docs)["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == "bgproxy"]
    assert len(found) == 1
    return found[0]


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: Doc, name: str) -> str | None:
    entry = env_of(container).get(name)
    return None if entry is None else entry.get("value")


def container_port(container: Doc, port: int | str) -> int:
    """A probe's or Service's targetPort (number or name) as the container port number it reaches."""
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in container["ports"]), f"no container port {port}"
        return port
    by_name = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert port in by_name, f"no container port named {port!r} in {container['name']}"
    return int(by_name[port])


def pod_templates(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for d in docs:
        if d["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]
        elif d["kind"] == "CronJob":
            yield f"CronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service_target(svc: Doc, docs: list[Doc], port_ref: int | str) -> tuple[Doc, Doc, int]:
    """The (pod template, container, container port) that a Service port (by number or name) leads to."""
    ports = svc["spec"]["ports"]
    matches = [p for p in ports if port_ref in (p.get("name"), p["port"])]
    assert len(matches) == 1, f"Service/{svc['metadata']['name']} has no single port {port_ref!r}"
    target = matches[0].get("targetPort", matches[0]["port"])
    backends = [
        (tpl, c)
        for _, tpl in pod_templates(docs)
        if selects(svc["spec"].get("selector", {}), tpl["metadata"].get("labels", {}))
        for c in tpl["spec"]["containers"]
        if any(target in (p.get("name"), p["containerPort"]) for p in c.get("ports", []))
    ]
    assert len(backends) == 1, (
        f"Service/{svc['metadata']['name']} port {port_ref!r} should reach exactly one container, "
        f"reaches {len(backends)}"
    )
    tpl, c = backends[0]
    return tpl, c, container_port(c, target)


def pre_stop_seconds(container: Doc) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    assert pre_stop, "the container needs a preStop pause so endpoints are removed before SIGTERM"
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    if len(command) == 1:
        command = shlex.split(command[0])
    assert Path(command[0]).name == "sleep", f"preStop should be a sleep, is {command}"
    return float(command[1])


# --------------------------------------------------------------------------------------------------
# schema validation


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_document_is_valid_kubernetes_strict(rendered: list[Doc], version: str) -> None:
    failures = []
    for doc in rendered:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.append(f"{what}: {path}: {e.message}")
        except Exception as e:  # no schema for the kind, bad schema, ...: what the CLI calls a warning
            failures.append(f"{what}: {type(e).__name__}: {getattr(e, 'message', e)}")
    assert not failures, f"against Kubernetes {version}:\n" + "\n".join(failures)


@needs_kubectl
def test_kubernetes_validate_cli_strict_reports_nothing(tmp_path: Path, overlay: list[Doc]) -> None:
    """The same through the command line tool, as an operator would run it: no WARN, no ERROR."""
    cli = require_tool("kubernetes-validate")
    for name, path in (("base", BASE), ("overlay", OVERLAY)):
        out = tmp_path / f"{name}.yaml"
        out.write_text(
            subprocess.run(
                [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=60
            ).stdout
        )
        proc = subprocess.run(
            [cli, "--strict", "--quiet", "-k", K8S_VERSIONS[-1], str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), (
            f"kubernetes-validate --strict on {name}: rc={proc.returncode}\n{proc.stdout}{proc.stderr}"
        )


@needs_kubectl
def test_every_object_has_a_name_and_no_duplicates(rendered: list[Doc]) -> None:
    keys = [
        (d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in rendered
    ]
    assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------------------------------
# RBAC


ALLOWED_VERBS = {"get", "list", "watch", "patch", "create"}
NAME_RESTRICTABLE = {"get", "list", "watch", "patch"}
EVENT_VERBS = {"create", "patch"}  # an Event per change, and its count on a repeat: never a read or a delete


def allows(rules: list[Doc], verb: str, resource: str, name: str | None, group: str = "") -> bool:
    """Kubernetes RBAC evaluation for one namespaced request (name None: a request without one)."""
    for rule in rules:
        if group not in rule.get("apiGroups", []) and "*" not in rule.get("apiGroups", []):
            continue
        if resource not in rule.get("resources", []) and "*" not in rule.get("resources", []):
            continue
        if verb not in rule.get("verbs", []) and "*" not in rule.get("verbs", []):
            continue
        names = rule.get("resourceNames")
        if names and name not in names:
            continue
        return True
    return False


@needs_kubectl
def test_role_grants_only_the_state_configmap_and_its_events(rendered: list[Doc]) -> None:
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        assert not of_kind(rendered, kind), f"bgproxy needs no {kind}"
    roles = of_kind(rendered, "Role")
    assert [r["metadata"]["name"] for r in roles] == ["bgproxy"]
    rules = roles[0]["rules"]

    granted: set[str] = set()
    event_rules = [rule for rule in rules if rule.get("resources") == ["events"]]
    shapes = [(r["apiGroups"], set(r["verbs"]), "resourceNames" in r) for r in event_rules]
    assert shapes == [([""], EVENT_VERBS, False)]
    for rule in rules:
        if rule in event_rules:
            continue
        assert "nonResourceURLs" not in rule
        assert rule["apiGroups"] == [""], rule
        assert rule["resources"] == ["configmaps"], rule  # no subresources, no other kinds
        verbs = set(rule["verbs"])
        assert verbs <= ALLOWED_VERBS, f"verbs beyond get/list/watch/patch/create: {verbs - ALLOWED_VERBS}"
        assert "*" not in str(rule), f"wildcard in {rule}"
        if "resourceNames" in rule:
            assert rule["resourceNames"] == [STATE_CONFIGMAP], rule
        else:
            # Only create cannot be restricted by name; every other verb must be.
            assert verbs == {"create"}, f"a rule without resourceNames may only create: {rule}"
        granted |= verbs
    assert granted == ALLOWED_VERBS

    # What bgproxy does is allowed ...
    for verb in sorted(NAME_RESTRICTABLE):
        assert allows(rules, verb, "configmaps", STATE_CONFIGMAP), verb
    assert allows(rules, "create", "configmaps", None)
    assert allows(rules, "create", "events", None) and allows(rules, "patch", "events", "bgproxy-state.0123abcd")
    # ... and nothing next to it.
    denied = [
        ("get", "configmaps", "some-other-config"),
        ("patch", "configmaps", "some-other-config"),
        ("list", "configmaps", None),  # a list without the metadata.name field selector
        ("watch", "configmaps", None),
        ("update", "configmaps", STATE_CONFIGMAP),
        ("delete", "configmaps", STATE_CONFIGMAP),
        ("deletecollection", "configmaps", None),
        ("get", "secrets", ADMIN_SECRET),
        ("list", "secrets", None),
        ("get", "pods", None),
        ("create", "pods", None),
        ("get", "serviceaccounts", None),
        ("create", "rolebindings", None),
        ("create", "serviceaccounts/token", None),
        ("get", "events", "bgproxy-state.0123abcd"),
        ("list", "events", None),
        ("watch", "events", None),
        ("update", "events", "bgproxy-state.0123abcd"),
        ("delete", "events", "bgproxy-state.0123abcd"),
        ("deletecollection", "events", None),
    ]
    for verb, resource, name in denied:
        assert not allows(rules, verb, resource, name), f"{verb} {resource} {name} should be denied"
    assert not allows(rules, "create", "rolebindings", None, group="rbac.authorization.k8s.io")
    assert not allows(rules, "get", "leases", None, group="coordination.k8s.io")
    assert not allows(rules, "create", "events", None, group="events.k8s.io")


@needs_kubectl
def test_role_is_bound_to_the_pods_service_account(rendered: list[Doc], overlay: list[Doc]) -> None:
    bindings = of_kind(rendered, "RoleBinding")
    assert len(bindings) == 1
    binding = bindings[0]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "bgproxy"}
    assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", "bgproxy")]
    one(rendered, "ServiceAccount", "bgproxy")
    assert bgproxy_deployment(rendered)["spec"]["template"]["spec"]["serviceAccountName"] == "bgproxy"
    # In the overlay the subject carries the namespace, as the API server requires for a ServiceAccount.
    (ov_binding,) = of_kind(overlay, "RoleBinding")
    assert ov_binding["subjects"][0]["namespace"] == NAMESPACE


# --------------------------------------------------------------------------------------------------
# the bgproxy Deployment


@needs_kubectl
def test_deployment_shape(rendered: list[Doc]) -> None:
    dep = bgproxy_deployment(rendered)
    assert dep["spec"]["replicas"] == 2
    assert selects(dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"])
    rolling = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
    assert rolling.get("maxUnavailable") == 0, "a rollout must never take a serving replica away first"
    c = bgproxy_container(rendered)
    assert container_port(c, "http") == HTTP_PORT
    assert container_port(c, "admin") == ADMIN_PORT
    assert sorted(p["containerPort"] for p in c["ports"]) == [HTTP_PORT, ADMIN_PORT]


@needs_kubectl
def test_probes_use_the_admin_port(rendered: list[Doc]) -> None:
    c = bgproxy_container(rendered)
    ready = c["readinessProbe"]["httpGet"]
    live = c["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and container_port(c, ready["port"]) == ADMIN_PORT
    assert live["path"] == "/healthz" and container_port(c, live["port"]) == ADMIN_PORT
    assert ready.get("scheme", "HTTP") == live.get("scheme", "HTTP") == "HTTP"


@needs_kubectl
def test_resources_are_bounded(rendered: list[Doc]) -> None:
    for name, tpl in pod_templates(rendered):
        for c in tpl["spec"]["containers"]:
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(section, {})), f"{name}/{c['name']} {section}: {res}"


def assert_hardened(name: str, tpl: Doc) -> None:
    pod = tpl["spec"]
    psc = pod.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: pod seccompProfile"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
    for c in pod.get("initContainers", []) + pod["containers"]:
        where = f"{name}/{c['name']}"
        csc = c.get("securityContext", {})
        assert csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert csc.get("privileged", False) is False, where
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities.drop"
        assert not csc.get("capabilities", {}).get("add"), f"{where}: capabilities.add"
        assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, f"{where}: needs a numeric non-zero runAsUser, has {uid!r}"
        seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccompProfile"


@needs_kubectl
def test_every_pod_is_hardened(rendered: list[Doc]) -> None:
    templates = list(pod_templates(rendered))
    assert templates
    for name, tpl in templates:
        assert_hardened(name, tpl)
    dep = bgproxy_deployment(rendered)["spec"]["template"]["spec"]
    assert dep["securityContext"]["runAsUser"] == RUN_AS_USER
    assert bgproxy_container(rendered)["securityContext"].get("runAsUser", RUN_AS_USER) == RUN_AS_USER


@needs_kubectl
def test_tmp_is_a_writable_emptydir(rendered: list[Doc]) -> None:
    spec = bgproxy_deployment(rendered)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in bgproxy_container(rendered).get("volumeMounts", [])}
    assert "/tmp" in mounts
    (vol,) = [v for v in spec["volumes"] if v["name"] == mounts["/tmp"]]
    assert "emptyDir" in vol and vol["emptyDir"].get("sizeLimit"), vol


@needs_kubectl
def test_grace_period_outlasts_prestop_and_drain(rendered: list[Doc]) -> None:
    spec = bgproxy_deployment(rendered)["spec"]["template"]["spec"]
    c = bgproxy_container(rendered)
    drain = {name: float(env_value(c, name) or default) for name, default in DRAIN_DEFAULTS.items()}
    pause = pre_stop_seconds(c)
    assert pause > 0
    # The grace period runs from the start of preStop; SIGTERM follows it, then DRAIN_GRACE + DRAIN_TIMEOUT.
    needed = pause + drain["BGPROXY_DRAIN_GRACE"] + drain["BGPROXY_DRAIN_TIMEOUT"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > needed, f"terminationGracePeriodSeconds {grace} must exceed preStop + drain = {needed}"


@needs_kubectl
def test_environment(rendered: list[Doc]) -> None:
    c = bgproxy_container(rendered)
    env = env_of(c)
    unknown = {n for n in env if n.startswith("BGPROXY_")} - KNOWN_SETTINGS
    assert not unknown, f"settings bgproxy does not know: {unknown}"
    assert env_value(c, "BGPROXY_STATE_BACKEND") == "configmap"
    assert env["BGPROXY_CONFIGMAP_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env_value(c, "BGPROXY_CONFIGMAP_NAME") in (None, STATE_CONFIGMAP)
    admin_host, _, admin_port = env_value(c, "BGPROXY_ADMIN_LISTEN").rpartition(":")  # type: ignore[union-attr]
    assert admin_host == "0.0.0.0" and int(admin_port) == ADMIN_PORT
    listen = env_value(c, "BGPROXY_LISTEN") or f"0.0.0.0:{HTTP_PORT}"
    assert int(listen.rpartition(":")[2]) == HTTP_PORT
    for colour in ("BLUE", "GREEN"):
        url = urlsplit(env_value(c, f"BGPROXY_{colour}_URL") or "")
        assert url.scheme == "http" and url.hostname, f"BGPROXY_{colour}_URL: {url.geturl()!r}"
    # The token comes from the mounted Secret, never from a literal in the manifest.
    assert "BGPROXY_ADMIN_TOKEN" not in env


@needs_kubectl
def test_admin_token_file_is_the_mounted_secret(rendered: list[Doc]) -> None:
    spec = bgproxy_deployment(rendered)["spec"]["template"]["spec"]
    c = bgproxy_container(rendered)
    token_file = Path(env_value(c, "BGPROXY_ADMIN_TOKEN_FILE") or "")
    mounts = [m for m in c["volumeMounts"] if token_file.parent == Path(m["mountPath"])]
    assert len(mounts) == 1, f"{token_file} is not in a mounted volume"
    assert mounts[0].get("readOnly") is True
    (vol,) = [v for v in spec["volumes"] if v["name"] == mounts[0]["name"]]
    secret = vol["secret"]
    assert secret["secretName"] == ADMIN_SECRET
    assert not secret.get("optional", False), "bgproxy must not start without its admin token"
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    assert items.get(token_file.name, token_file.name) == "token"
    # Secret files are owned by root and the pod's fsGroup: bgproxy (non-root) reads the token through the
    # group, and nobody else can.
    mode = secret.get("defaultMode", 0o644)
    assert mode & 0o007 == 0, f"secret files are world-readable: {oct(mode)}"
    assert mode & 0o040, f"the token file is not group-readable: {oct(mode)}"
    assert spec["securityContext"].get("fsGroup") is not None, (
        "without an fsGroup bgproxy cannot read the token"
    )


@needs_kubectl
def test_prometheus_annotations(rendered: list[Doc]) -> None:
    ann = bgproxy_deployment(rendered)["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == str(ADMIN_PORT)
    assert ann["prometheus.io/path"] == "/metrics"


@needs_kubectl
def test_state_configmap(rendered: list[Doc]) -> None:
    cm = one(rendered, "ConfigMap", STATE_CONFIGMAP)
    assert cm["data"]["active"] == "blue"
    assert cm["data"].get("weight", "0") == "0"  # a fresh install never starts with traffic split
    assert set(cm["data"]) <= {"active", "reason", "previous", "revision", "updated_at", "source", "weight"}


@needs_kubectl
def test_disruption_budget(rendered: list[Doc]) -> None:
    (pdb,) = of_kind(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    labels = bgproxy_deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert bgproxy_deployment(rendered)["spec"]["replicas"] > pdb["spec"]["minAvailable"]


# --------------------------------------------------------------------------------------------------
# Services and the Ingress


@needs_kubectl
def test_traffic_and_admin_services_are_separate(rendered: list[Doc]) -> None:
    traffic = one(rendered, "Service", "bgproxy")
    admin = one(rendered, "Service", "bgproxy-admin")
    for svc in (traffic, admin):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", "neither Service is exposed by itself"
    (t_port,) = traffic["spec"]["ports"]
    (a_port,) = admin["spec"]["ports"]
    tpl, _, reached = service_target(traffic, rendered, t_port["port"])
    assert reached == HTTP_PORT and t_port["port"] in (80, HTTP_PORT)
    assert tpl is bgproxy_deployment(rendered)["spec"]["template"]
    tpl, _, reached = service_target(admin, rendered, a_port["port"])
    assert reached == ADMIN_PORT and a_port["port"] == ADMIN_PORT
    assert tpl is bgproxy_deployment(rendered)["spec"]["template"]


@needs_kubectl
def test_ingress_never_reaches_the_admin_port(overlay: list[Doc]) -> None:
    ingresses = of_kind(overlay, "Ingress")
    assert ingresses, "the example overlay has an Ingress"
    for ing in ingresses:
        backends = [ing["spec"]["defaultBackend"]] if "defaultBackend" in ing["spec"] else []
        for rule in ing["spec"].get("rules", []):
            backends += [p["backend"] for p in rule["http"]["paths"]]
        assert backends
        for backend in backends:
            svc_ref = backend["service"]
            assert svc_ref["name"] == "bgproxy", f"the Ingress must point at the bgproxy Service: {svc_ref}"
            port_ref = svc_ref["port"].get("number", svc_ref["port"].get("name"))
            _, _, reached = service_target(one(overlay, "Service", svc_ref["name"]), overlay, port_ref)
            assert reached == HTTP_PORT, f"the Ingress reaches container port {reached}"
        for tls in ing["spec"].get("tls", []):
            assert tls.get("secretName") != ADMIN_SECRET


# --------------------------------------------------------------------------------------------------
# base vs. overlay


@needs_kubectl
def test_base_is_namespace_agnostic_and_holds_no_secret(base: list[Doc]) -> None:
    assert not of_kind(base, "Secret"), "the admin token Secret belongs to an overlay, never the base"
    assert not of_kind(base, "Namespace")
    assert all("namespace" not in d["metadata"] for d in base)
    assert not of_kind(base, "ServiceMonitor"), "the ServiceMonitor is optional (its CRD may be missing)"


@needs_kubectl
def test_overlay_namespace_secret_and_demo_upstreams(overlay: list[Doc]) -> None:
    ns = one(overlay, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    for d in overlay:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']}/{d['metadata']['name']}"
    secret = one(overlay, "Secret", ADMIN_SECRET)
    assert "token" in {**secret.get("data", {}), **secret.get("stringData", {})}
    assert not of_kind(overlay, "ServiceMonitor"), "the ServiceMonitor component is not on by default"

    # BGPROXY_BLUE_URL / GREEN_URL name the demo Services, which reach the demo pods (not bgproxy itself).
    c = bgproxy_container(overlay)
    proxy_tpl = bgproxy_deployment(overlay)["spec"]["template"]
    targets = set()
    for colour in ("blue", "green"):
        url = urlsplit(env_value(c, f"BGPROXY_{colour.upper()}_URL") or "")
        host = (url.hostname or "").split(".")
        assert len(host) == 1 or host[1] == NAMESPACE, f"{colour} upstream {url.geturl()} outside the overlay"
        svc = one(overlay, "Service", host[0])
        tpl, container, _ = service_target(svc, overlay, url.port or 80)
        assert tpl is not proxy_tpl, f"the {colour} upstream must not be bgproxy itself"
        assert f"-text={colour}" in container.get("args", []), f"the {colour} demo answers {colour}"
        targets.add(id(tpl))
    assert len(targets) == 2, "blue and green must be different Deployments"
    # Only bgproxy's Services select bgproxy's pods.
    for svc in of_kind(overlay, "Service"):
        hits = selects(svc["spec"].get("selector", {}), proxy_tpl["metadata"]["labels"])
        assert hits == svc["metadata"]["name"].startswith("bgproxy"), svc["metadata"]["name"]


# --------------------------------------------------------------------------------------------------
# the optional ServiceMonitor component


@needs_kubectl
def test_servicemonitor_component(tmp_path: Path, overlay: list[Doc]) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": NAMESPACE,
                "resources": [os.path.relpath(OVERLAY, tmp_path)],
                "components": [os.path.relpath(SERVICEMONITOR_COMPONENT, tmp_path)],
            }
        )
    )
    docs = kustomize(tmp_path)
    (sm,) = of_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == NAMESPACE
    # With the component the rest is unchanged.
    assert len(docs) == len(overlay) + 1

    # kubernetes-validate ships only built-in kinds; should it ever learn this CRD, hold it to the schema too.
    try:
        kubernetes_validate.validate(sm, K8S_VERSIONS[-1], strict=True)
    except kubernetes_validate.utils.SchemaNotFoundError:
        pass

    spec = sm["spec"]
    assert set(spec) <= {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
    }, spec
    selector = spec["selector"]["matchLabels"]
    matched = [s for s in of_kind(docs, "Service") if selects(selector, s["metadata"].get("labels", {}))]
    assert [s["metadata"]["name"] for s in matched] == ["bgproxy-admin"], "scrape the admin Service only"
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {
        "port",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "honorLabels",
        "relabelings",
        "metricRelabelings",
    }, endpoint
    admin_port_names = {p.get("name") for p in matched[0]["spec"]["ports"]}
    assert endpoint["port"] in admin_port_names, "ServiceMonitor endpoints name a Service port"
    _, _, reached = service_target(matched[0], docs, endpoint["port"])
    assert reached == ADMIN_PORT
    assert endpoint.get("path", "/metrics") == "/metrics"
    assert endpoint.get("scheme", "http") == "http"
    duration = re.compile(r"^(\d+(ms|s|m|h))+$")
    for key in ("interval", "scrapeTimeout"):
        if key in endpoint:
            assert duration.match(endpoint[key]), f"{key}: {endpoint[key]!r} is not a Prometheus duration"


# --------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    froms = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a final stage"
    final = instructions[froms[-1] :]
    for _, args in [instructions[i] for i in froms]:
        image = args.split()[0]
        if image.startswith("${"):
            default = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
            image = default[image.strip("${}")]
        assert re.match(r"^python:3\.11(\.\d+)?-slim", image), f"expected a slim Python 3.11 base: {image}"

    final_words = [w for w, _ in final]
    assert ("COPY" in final_words) and any(w == "COPY" and a.startswith("--from=") for w, a in final), (
        "the final stage copies the built venv from the builder"
    )
    final_runs = " ".join(a for w, a in final if w == "RUN")
    for tool in ("apt-get install", "pip install", "gcc", "build-essential"):
        assert tool not in final_runs, f"no build tools in the final image: {tool}"

    users = [a for w, a in final if w == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == RUN_AS_USER, f"USER {users[-1]} must be the Deployment's UID"

    env = " ".join(a for w, a in final if w == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    exposed = {int(p.split("/")[0]) for w, a in final if w == "EXPOSE" for p in a.split()}
    assert exposed == {HTTP_PORT, ADMIN_PORT}
    entry = [a for w, a in final if w == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["bgproxy", "serve"]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert "*" in lines, ".dockerignore should allow-list the build context"
    copied = [
        src
        for word, args in dockerfile_instructions()
        if word == "COPY" and not args.startswith("--from=")
        for src in args.split()[:-1]
    ]
    assert copied
    for src in copied:
        src = src.rstrip("/").removeprefix("./")
        assert f"!{src}" in lines or f"!{src}/" in lines, f"{src} is COPY'd but excluded by .dockerignore"


def test_hadolint_finds_nothing() -> None:
    """No finding at any level: errors and warnings, and the info and style ones too."""
    hadolint = require_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert proc.stdout.strip(), f"hadolint printed nothing: rc={proc.returncode} {proc.stderr}"
    findings = json.loads(proc.stdout)
    assert findings == [], "hadolint:\n" + "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert proc.returncode == 0, proc.stderr
