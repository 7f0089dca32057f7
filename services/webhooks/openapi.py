"""The webhooks in the gateway's OpenAPI document (OpenAPI 3.1 `webhooks`): what roomcast POSTs
to `ROOMCAST_WEBHOOK_URL`, next to the API it serves, from the same models that encode them."""

from __future__ import annotations

from typing import Any

from . import signing
from .events import WebhookPayload

_REF = "#/components/schemas/{model}"

DESCRIPTION = (
    "roomcast POSTs room and message events here when `ROOMCAST_WEBHOOK_URL` is set, at least "
    "once: drop repeats by event `id`. Verify `Roomcast-Signature` over the raw body first "
    "(docs/auth.md, Webhooks). Any answer but 2xx is retried with exponential backoff."
)


def add_webhooks(document: dict[str, Any]) -> None:
    """Add the `webhooks` entry and the schemas it refers to (existing ones are kept)."""
    schema = WebhookPayload.model_json_schema(ref_template=_REF)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, definition)
    schemas.setdefault("WebhookPayload", schema)
    document.setdefault("webhooks", {})["roomcastEvents"] = {
        "post": {
            "summary": "Room and message events",
            "description": DESCRIPTION,
            "operationId": "roomcastEvents",
            "parameters": [
                {
                    "name": signing.HEADER,
                    "in": "header",
                    "required": True,
                    "description": 't=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">',
                    "schema": {"type": "string"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="WebhookPayload")}}
                },
            },
            "responses": {
                "2XX": {"description": "Received: the events are not sent again."},
                "default": {"description": "Anything else: the POST is retried later."},
            },
        }
    }
