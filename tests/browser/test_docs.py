"""/docs in Debian's Chromium: ReDoc renders the API from this origin alone (PROTOCOL.md 2.2).

The page is served with a policy that names no other origin, so a CDN script would not even
run; what this checks is that the self-hosted page works under that policy: the API's title and
operations are drawn, ReDoc's styles are admitted (a style blocked by the CSP would leave it
unstyled), and no request leaves for another origin.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.support.dev_process import DevProcess

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Request

pytestmark = pytest.mark.browser

#: Records every CSP violation the page reports, before any of its scripts run.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push({directive: e.effectiveDirective, blocked: e.blockedURI});
});
"""


def test_docs_renders_the_api_from_its_own_origin(browser: Browser, server: DevProcess) -> None:
    from playwright.sync_api import expect

    own = urlsplit(server.http)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(RECORD_VIOLATIONS)
        requests: list[Request] = []
        errors: list[str] = []
        page.on("request", lambda request: requests.append(request))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.http + "/docs")

        expect(page.get_by_role("heading", name=re.compile("roomcast gateway"))).to_be_visible()
        expect(page.get_by_text("/api/rooms/{room}/messages").first).to_be_attached()
        # styled-components' rules are in force: ReDoc's menu is laid out as a sidebar
        menu = page.locator(".menu-content")
        expect(menu).to_be_visible()
        assert menu.evaluate("e => getComputedStyle(e).display") != "inline"

        violations = page.evaluate("window.__violations")
        elsewhere = [
            r.url
            for r in requests
            if urlsplit(r.url).scheme not in {"data", "blob"} and urlsplit(r.url)[:2] != own[:2]
        ]
    finally:
        context.close()
    assert not errors, errors
    # ReDoc's side menu has a Redocly logo from cdn.redoc.ly: the CSP stops it before it leaves
    # (Chromium reports the attempt), and nothing else may be blocked or go elsewhere.
    assert [v for v in violations if v["directive"] != "img-src"] == [], violations
    assert {urlsplit(v["blocked"]).netloc for v in violations} <= {"cdn.redoc.ly"}, violations
    assert set(elsewhere) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}, elsewhere
