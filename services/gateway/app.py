"""The gateway's Quart application: the WebSocket at /ws, the HTTP API, the web client, and the
operational routes. The app owns no state of its own: `ChatGateway` holds it."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from quart import Quart, Response, request, send_file
from quart_schema import QuartSchema, RequestSchemaValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from roomcast.shared.bus import BusUnavailableError
from roomcast.shared.ops import Check, add_ops_routes

from .api import api
from .apikeys import install as install_api_keys
from .backend_api import SECURITY_SCHEMES, backend_api
from .docs import GatewayOpenAPI, add_docs_route
from .gateway import ChatGateway
from .protocol import ProtocolError
from .websocket import WebSocketEndpoint

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
TITLE = "roomcast gateway"
_STATUS = {
    "invalid": 400,
    "unauthorized": 401,
    "room_private": 403,
    "forbidden": 403,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


def create_app(gateway: ChatGateway, checks: dict[str, Check] | None = None) -> Quart:
    """Build the app around a gateway; `checks` are extra readiness checks (e.g. a store)."""
    app = Quart(__name__, static_folder=str(STATIC), static_url_path="/static")
    app.extensions["roomcast.gateway"] = gateway
    QuartSchema(
        app,
        info={"title": TITLE, "version": "1"},
        openapi_path="/openapi.json",
        # quart-schema's pages load their scripts from CDNs: /docs is ours (docs.py)
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=GatewayOpenAPI,
        security_schemes=SECURITY_SCHEMES,
    )
    add_docs_route(app, TITLE)
    app.register_blueprint(api)
    app.register_blueprint(backend_api)
    install_api_keys(app.extensions, gateway.settings)

    async def gateway_ready() -> bool:
        return gateway.is_ready

    add_ops_routes(app, {"bus": gateway_ready, **(checks or {})})

    @app.after_request
    async def security_headers(response: Response) -> Response:
        # /docs sets its own (docs.py): it carries a nonce per response
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path.startswith("/static/"):
            # modules must not mix versions across a deploy: revalidate (ETag) every time
            response.cache_control.no_cache = True
            response.cache_control.max_age = None
        return response

    @app.get("/")
    async def index() -> Response:
        page = STATIC / "index.html"
        if not page.exists():
            return Response(
                "roomcast is running; connect a WebSocket to /ws", mimetype="text/plain"
            )
        response = await send_file(page, mimetype="text/html")
        response.cache_control.no_cache = True
        return response

    @app.errorhandler(RequestSchemaValidationError)
    async def bad_request(error: RequestSchemaValidationError) -> tuple[dict[str, str], int]:
        detail = error.validation_error
        if isinstance(detail, ValidationError):
            first = detail.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return {"code": "invalid", "message": f"{where}: {first['msg']}"}, 400
        return {"code": "invalid", "message": f"bad request: {detail}"}, 400

    @app.errorhandler(ProtocolError)
    async def refused(error: ProtocolError) -> tuple[dict[str, str], int]:
        return {"code": error.code, "message": error.message}, _STATUS.get(error.code, 400)

    @app.errorhandler(BusUnavailableError)
    async def unavailable(error: BusUnavailableError) -> tuple[dict[str, str], int]:
        return {"code": "unavailable", "message": "the service is unavailable; try again"}, 503

    @app.errorhandler(404)
    async def not_found(error: Exception) -> tuple[dict[str, str], int]:
        return {"code": "invalid", "message": "no such resource"}, 404

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> tuple[dict[str, str], int, dict[str, str]]:
        """Every other HTTP error (405, 413, an unexpected 500...) in the protocol's JSON shape,
        not Quart's HTML page (PROTOCOL.md, "HTTP")."""
        status = error.code or 500
        code = "internal" if status >= 500 else "invalid"
        headers = {}
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        message = (error.description or error.name) if status < 500 else "internal error"
        return {"code": code, "message": message}, status, headers

    app.asgi_app = WebSocketEndpoint(app.asgi_app, gateway)  # type: ignore[method-assign, assignment]
    return app
