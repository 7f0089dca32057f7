"""/docs: the OpenAPI reference, rendered by ReDoc from this package's own files.

quart-schema's ReDoc page loads its script from a CDN (an unpinned `redoc@next`, with the chat's
origin as its privileges); this page loads only `static/docs/` (ReDoc 2.5 vendored by
scripts/vendor-redoc.sh) and `/openapi.json`, under a policy that names no other origin. ReDoc
writes its styles as <style> elements at run time: each response's nonce admits those and
nothing else inline.
"""

from __future__ import annotations

import html
import secrets
from typing import Any

from quart import Quart, Response
from quart_schema import hide
from quart_schema.openapi import OpenAPIProvider

from roomcast.webhooks.openapi import add_webhooks

DOCS_STATIC = "/static/docs"
SPEC_URL = "/openapi.json"


#: The one <style> ReDoc 2.5.4 writes before it knows the nonce (perfect-scrollbar's CSS, written
#: empty and then filled): admitted by the hashes of its two states. A re-vendored ReDoc with
#: other CSS fails tests/browser/test_docs.py until these are updated.
STATIC_STYLE_HASHES = (
    "sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc=",
    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",  # the empty string
)


def docs_policy(nonce: str) -> str:
    """The CSP of /docs: this origin only; inline styles only with `nonce` or one of the known
    hashes; search runs in a worker that ReDoc builds from a blob: URL (a blob the page made is
    of the page's origin)."""
    hashes = " ".join(f"'{digest}'" for digest in STATIC_STYLE_HASHES)
    return (
        "default-src 'none'; script-src 'self'; "
        f"style-src 'self' 'nonce-{nonce}' {hashes}; img-src 'self' data:; font-src 'self'; "
        "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def docs_html(title: str, nonce: str) -> str:
    title = html.escape(title)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{DOCS_STATIC}/docs.css">
</head>
<body>
  <div id="redoc" data-spec-url="{SPEC_URL}"></div>
  <noscript>{title}: this page needs JavaScript; the API is described at
    <a href="{SPEC_URL}">{SPEC_URL}</a>.</noscript>
  <script src="{DOCS_STATIC}/redoc.standalone.js"></script>
  <script src="{DOCS_STATIC}/docs.js" nonce="{nonce}"></script>
</body>
</html>
"""


def add_docs_route(app: Quart, title: str, path: str = "/docs") -> None:
    """Serve the reference at `path` (left out of the OpenAPI document itself)."""

    @hide
    async def docs() -> Response:
        nonce = secrets.token_urlsafe(16)
        response = Response(docs_html(title, nonce), mimetype="text/html")
        response.headers["Content-Security-Policy"] = docs_policy(nonce)
        response.cache_control.no_store = True
        return response

    app.add_url_rule(path, "docs", docs, methods=["GET"])


_READINESS = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "unready"]},
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
}
#: What quart-schema cannot say: routes it knows no response model for (pages, Prometheus text,
#: the ops routes every service shares). Each documented response: (media type, schema, why).
_RESPONSES: dict[str, dict[str, tuple[str, dict[str, Any], str]]] = {
    "/": {"200": ("text/html", {"type": "string"}, "the web client")},
    "/healthz": {
        "200": (
            "application/json",
            {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"const": "ok"}},
            },
            "the process lives",
        )
    },
    "/readyz": {
        "200": ("application/json", _READINESS, "every check passes"),
        "503": ("application/json", _READINESS, "a check fails (named in `checks`)"),
    },
    "/metrics": {"200": ("text/plain", {"type": "string"}, "Prometheus text format")},
}


class GatewayOpenAPI(OpenAPIProvider):
    """quart-schema's document, with the responses it leaves empty filled in (an operation
    without responses is not valid OpenAPI) and the error every API route may answer."""

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        for path, responses in _RESPONSES.items():
            operation = document["paths"].get(path, {}).get("get")
            if operation is None or operation.get("responses"):
                continue
            operation["responses"] = {
                status: {"description": why, "content": {media: {"schema": schema}}}
                for status, (media, schema, why) in responses.items()
            }
        add_webhooks(document)  # what roomcast POSTs to the application (protocol 2.4)
        return document
