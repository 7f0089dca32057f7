"""The optional webhooks component (deploy/k8s/components/webhooks), rendered into a copy of the
dev overlay the way its docs say to take it, passes the same checks as every overlay; without
its secret or its URL it does not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.test_manifests import (
    K8S,
    committed_secret_errors,
    copy_tree,
    k8s_invariant_errors,
    render,
    schema_errors,
)

pytestmark = pytest.mark.deploy

URL = "https://app.example.com/webhooks/roomcast"


def with_webhooks(tmp_path: Path) -> Path:
    """A copy of the repository whose dev overlay takes the component as its docs say: the
    component, and the URL in the overlay's ConfigMap."""
    dev = copy_tree(tmp_path) / "deploy" / "k8s" / "overlays" / "dev"
    kustomization = dev / "kustomization.yaml"
    text = kustomization.read_text(encoding="utf-8")
    debug = "      - ROOMCAST_LOG_LEVEL=debug\n"
    assert debug in text, "the dev overlay changed: update this test"
    text = text.replace(debug, f"{debug}      - ROOMCAST_WEBHOOK_URL={URL}\n")
    text += "\ncomponents:\n  - ../../components/webhooks\n"
    kustomization.write_text(text, encoding="utf-8")
    return dev


def deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    return found


def env_of(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    container = deployment(objects, name)["spec"]["template"]["spec"]["containers"][0]
    config = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(config[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value") or item["valueFrom"]["secretKeyRef"]["key"]
    return env


def test_the_component_renders_and_passes_every_check(tmp_path: Path) -> None:
    objects = render(with_webhooks(tmp_path))
    assert schema_errors(objects) == []
    assert k8s_invariant_errors(objects, "dev") == []
    sender = env_of(objects, "webhooks")
    assert sender["ROOMCAST_WEBHOOK_SECRET"] == "ROOMCAST_WEBHOOK_SECRET"  # from the Secret
    for emitter in ("history", "presence", "webhooks"):
        assert env_of(objects, emitter)["ROOMCAST_WEBHOOK_URL"] == URL
    args = deployment(objects, "webhooks")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "webhooks"
    assert {o["kind"] for o in objects if o["metadata"].get("name") == "webhooks"} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_production_takes_it_with_its_own_image(tmp_path: Path) -> None:
    prod = copy_tree(tmp_path) / "deploy" / "k8s" / "overlays" / "prod"
    kustomization = prod / "kustomization.yaml"
    kustomization.write_text(
        kustomization.read_text(encoding="utf-8")
        + "\ncomponents:\n  - ../../components/webhooks\n"
        + "configMapGenerator:\n  - name: roomcast-config\n    behavior: merge\n"
        + f"    literals:\n      - ROOMCAST_WEBHOOK_URL={URL}\n",
        encoding="utf-8",
    )
    objects = render(prod)
    assert k8s_invariant_errors(objects, "prod") == []
    images = {
        name: deployment(objects, name)["spec"]["template"]["spec"]["containers"][0]["image"]
        for name in ("history", "webhooks")
    }
    assert images["webhooks"] == images["history"] == "registry.example.com/roomcast/roomcast:0.1.0"
    assert env_of(objects, "presence")["ROOMCAST_WEBHOOK_URL"] == URL


def test_without_the_component_no_overlay_runs_a_sender(tmp_path: Path) -> None:
    for overlay in ("dev", "prod"):
        directory = copy_tree(tmp_path / overlay) / "deploy" / "k8s" / "overlays" / overlay
        objects = render(directory)
        assert not [o for o in objects if o["metadata"].get("name") == "webhooks"]
    assert committed_secret_errors(K8S, ("base", "prod")) == []


def test_a_sender_without_its_secret_is_caught(tmp_path: Path) -> None:
    dev = with_webhooks(tmp_path)
    manifest = dev.parents[1] / "components" / "webhooks" / "webhooks.yaml"
    text = manifest.read_text(encoding="utf-8")
    start = text.index("            - name: ROOMCAST_WEBHOOK_SECRET")
    end = text.index("          resources:")
    manifest.write_text(text[:start] + text[end:], encoding="utf-8")
    errors = k8s_invariant_errors(render(dev), "dev")
    assert any("ROOMCAST_WEBHOOK_SECRET does not come from a Secret" in e for e in errors), errors
