"""/docs loads nothing from another origin (PROTOCOL.md 2.2): its HTML names only this origin,
its Content-Security-Policy allows no other, and what it loads is served here as package data
(ReDoc, vendored by scripts/vendor-redoc.sh, with its licence beside it)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.inprocess import Server

ROOT = Path(__file__).resolve().parents[2]
DOCS_STATIC = ROOT / "services" / "gateway" / "static" / "docs"
VENDOR_SCRIPT = ROOT / "scripts" / "vendor-redoc.sh"
#: Source expressions that name no origin: keywords, nonces and hashes, and the page's own
#: blob:/data: URLs.
ORIGINLESS = re.compile(
    r"^('self'|'none'|'nonce-[A-Za-z0-9_+/=-]+'|'sha(256|384|512)-[A-Za-z0-9+/=]+'|data:|blob:)$"
)


class _References(HTMLParser):
    """Every URL-valued attribute of a page, and the nonces of its scripts."""

    URL_ATTRIBUTES = {"src", "href", "action", "data-spec-url", "poster", "srcset", "formaction"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.scripts: list[dict[str, str | None]] = []
        self.stylesheets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value))
        if tag == "script":
            self.scripts.append(values)
        if tag == "link" and values.get("rel") == "stylesheet" and values.get("href"):
            self.stylesheets.append(values["href"] or "")


def directives(policy: str) -> dict[str, list[str]]:
    result = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            result[words[0].lower()] = words[1:]
    return result


def refs_of(page: str) -> _References:
    parser = _References()
    parser.feed(page)
    return parser


async def get_docs(server: Server) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        return await http.get("/docs")


async def test_docs_html_references_only_its_own_origin(server: Server) -> None:
    docs = await get_docs(server)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    refs = refs_of(docs.text)
    assert refs.scripts, "no <script> on /docs"
    elsewhere = [
        (tag, attribute, url)
        for tag, attribute, url in refs.urls
        if urlsplit(url).scheme or urlsplit(url).netloc or url.startswith("//")
    ]
    assert elsewhere == [], elsewhere
    # Nor an origin written anywhere else in the page (an inline import, a CSS url(...)).
    assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}", docs.text), docs.text


async def test_docs_policy_allows_no_other_origin(server: Server) -> None:
    first, second = await get_docs(server), await get_docs(server)
    policy = first.headers.get("Content-Security-Policy", "")
    rules = directives(policy)
    assert rules.get("default-src") == ["'none'"], policy
    assert rules.get("script-src") == ["'self'"], policy
    named = [
        (directive, source)
        for directive, sources in rules.items()
        for source in sources
        if not ORIGINLESS.match(source)
    ]
    assert named == [], f"sources that are not this origin: {named}"
    for directive in ("style-src", "script-src"):
        assert "'unsafe-inline'" not in rules[directive] and "'unsafe-eval'" not in rules[directive]
    assert rules.get("frame-ancestors") == ["'none'"], policy
    # The style nonce is the one the page's script hands ReDoc, and new on every response.
    nonces = [s for s in rules["style-src"] if s.startswith("'nonce-")]
    assert len(nonces) == 1, policy
    script_nonces = {s.get("nonce") for s in refs_of(first.text).scripts} - {None}
    assert script_nonces == {nonces[0][len("'nonce-") : -1]}
    assert second.headers["Content-Security-Policy"] != policy
    assert "no-store" in first.headers.get("Cache-Control", "")


async def test_docs_assets_are_served_from_the_package(server: Server) -> None:
    refs = refs_of((await get_docs(server)).text)
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        for script in refs.scripts:
            src = script.get("src") or ""
            response = await http.get(src)
            assert response.status_code == 200, src
            assert response.headers["content-type"].split(";")[0] in {
                "text/javascript",
                "application/javascript",
            }, (src, response.headers["content-type"])
            assert len(response.content) > 0
            assert (DOCS_STATIC / Path(src).name).read_bytes() == response.content
        for href in refs.stylesheets:
            response = await http.get(href)
            assert response.status_code == 200, href
            assert response.headers["content-type"].startswith("text/css"), href
        spec_url = next(url for _, name, url in refs.urls if name == "data-spec-url")
        spec = await http.get(spec_url)
    assert spec.status_code == 200 and "paths" in spec.json()
    assert "/docs" not in spec.json()["paths"]


def test_vendored_redoc_is_the_version_its_script_pins_with_its_licence() -> None:
    pinned = re.search(r'^REDOC_VERSION="([^"]+)"', VENDOR_SCRIPT.read_text(), re.M)
    assert pinned, "scripts/vendor-redoc.sh pins no REDOC_VERSION"
    notices = (DOCS_STATIC / "redoc.standalone.js.LICENSE.txt").read_text()
    assert f'Version: "{pinned[1]}"' in notices
    bundle_head = (DOCS_STATIC / "redoc.standalone.js").read_text()[:200]
    assert "redoc.standalone.js.LICENSE.txt" in bundle_head
    licence = (DOCS_STATIC / "LICENSE.redoc").read_text()
    assert licence.startswith("The MIT License") and "Rebilly" in licence


@pytest.mark.parametrize("path", ["/openapi.json", "/healthz", "/"])
async def test_other_pages_keep_the_strict_policy(server: Server, path: str) -> None:
    async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
        response = await http.get(path)
        # a second request on the connection: the first one's handler has closed its file
        # (test_bad_input.py: an unclosed-file warning otherwise races the server's shutdown)
        assert (await http.get("/healthz")).status_code == 200
    policy = directives(response.headers.get("Content-Security-Policy", ""))
    assert policy.get("script-src") == ["'self'"], path
    assert all(ORIGINLESS.match(s) for sources in policy.values() for s in sources), policy
