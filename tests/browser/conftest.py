"""The web client in a real browser: Debian's Chromium driven by Playwright's sync API, against
`roomcast dev` run as a process (`python -m roomcast dev --port P --data-dir D`), stopped with
SIGINT like Ctrl-C in a terminal.

The tests are plain (non-async) functions: Playwright's sync API runs its own event loop and
refuses to run inside a running asyncio loop, so nothing here touches pytest-asyncio's.

`bash scripts/install-browser.sh .venv` installs what this needs (Chromium from Debian, Playwright
from PyPI). Playwright's own browser download (`playwright install`) is never used.

When a test fails, a screenshot of every page it opened and the tail of the server's log are
attached to the failure report.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.dev_process import DevProcess
from tests.support.ports import free_port

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Dialog, Locator, Page, ViewportSize

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

EXPECT_TIMEOUT_MS = 10_000  # default for expect(...) assertions
ACTION_TIMEOUT_MS = 15_000  # default for clicks, fills, navigation


def _started(base: Path, **env: str) -> DevProcess:
    server = DevProcess(base / "data", free_port(), base / "dev.log")
    server.env.update(env)
    server.start()
    try:
        server.wait_ready()
    except BaseException:
        server.kill()
        raise
    return server


def _shut(server: DevProcess) -> None:
    try:
        if server.running:
            code = server.stop()
            assert code == 0, f"roomcast dev exited with {code} on SIGINT:\n{server.tail()}"
    finally:
        server.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """One `roomcast dev` shared by a module's tests; each test uses names of its own."""
    dev = _started(tmp_path_factory.mktemp("roomcast-dev"))
    yield dev
    _shut(dev)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[DevProcess]:
    """A `roomcast dev` of this test alone, which it may stop and start again."""
    dev = _started(tmp_path)
    yield dev
    _shut(dev)


JWT_SECRET = "browser-test-jwt-secret-0123456789abcdef"  # HS256: 32+ bytes


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """A `roomcast dev` that signs users in with HS256 tokens (`mint_token`) beside anonymous
    names (ROOMCAST_AUTH=anonymous, the default)."""
    dev = _started(tmp_path_factory.mktemp("roomcast-dev-tokens"), ROOMCAST_JWT_SECRET=JWT_SECRET)
    yield dev
    _shut(dev)


@pytest.fixture(scope="module")
def token_only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    """A `roomcast dev` under ROOMCAST_AUTH=token: every join needs a token."""
    base = tmp_path_factory.mktemp("roomcast-dev-token-only")
    dev = _started(base, ROOMCAST_JWT_SECRET=JWT_SECRET, ROOMCAST_AUTH="token")
    yield dev
    _shut(dev)


def mint_token(sub: str, *, seconds: float = 3600, secret: str = JWT_SECRET, **claims: Any) -> str:
    """An HS256 token for `sub` that expires in `seconds` (negative: already expired), as an
    application's backend signs it (docs/auth.md); `claims` adds `name`, `roles`, ..."""
    import jwt

    payload = {"sub": sub, "exp": int(time.time() + seconds), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


# ---- the browser ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for one test module (closed before any other module runs,
    so Playwright's event loop never overlaps pytest-asyncio's)."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: run `bash scripts/install-browser.sh .venv`")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install-browser.sh .venv`")
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class ChatPage:
    """One user's page of the web client, found through its accessible names only."""

    name: str
    page: Page
    context: BrowserContext
    dialogs: list[str] = field(default_factory=list)  # every alert/confirm/prompt raised
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page

    @property
    def box(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message", exact=True)

    @property
    def messages(self) -> Locator:
        return self.page.get_by_role("list", name="Messages", exact=True)

    @property
    def active_users(self) -> Locator:
        return self.page.get_by_role("list", name="Active users", exact=True)

    def user_button(self, username: str) -> Locator:
        return self.active_users.get_by_role("button", name=username, exact=True)

    def message(self, text: str) -> Locator:
        """The entries of the message list whose text contains `text`."""
        return self.messages.get_by_role("listitem").filter(has_text=text)

    def send(self, body: str) -> None:
        """Types `body` in the message box and presses Enter."""
        self.box.fill(body)
        self.box.press("Enter")

    def login(self, base_url: str, path: str = "/") -> None:
        """Opens the client, gives the name, and waits for the chat (the message box)."""
        from playwright.sync_api import expect

        self.page.goto(base_url + path)
        name_field = self.page.get_by_label("Your name", exact=True)
        name_field.fill(self.name)
        self.page.get_by_role("button", name="Join chat").click()
        expect(self.box).to_be_visible()


def unique(prefix: str) -> str:
    """A name or text of this test alone (the server is shared by a module's tests)."""
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


OpenUser = Callable[..., ChatPage]

_PAGES = pytest.StashKey[list[ChatPage]]()
_SERVERS = pytest.StashKey[list[DevProcess]]()
_ARTIFACTS = pytest.StashKey[Path]()


@pytest.fixture
def open_user(
    request: pytest.FixtureRequest, browser: Browser, tmp_path: Path
) -> Iterator[OpenUser]:
    """`open_user(name, server, viewport=DESKTOP, path="/", login=True, **context_options)`:
    a new browser context (its own storage: a different user) with the client open, logged in
    as `name` unless login=False. Every context is closed at the end of the test, and the test
    fails if any page threw an uncaught exception."""
    opened: list[ChatPage] = []
    request.node.stash[_PAGES] = opened
    request.node.stash[_SERVERS] = []
    request.node.stash[_ARTIFACTS] = tmp_path

    def open_one(
        name: str,
        server: DevProcess,
        *,
        viewport: ViewportSize | None = None,
        path: str = "/",
        login: bool = True,
        **options: Any,
    ) -> ChatPage:
        if server not in request.node.stash[_SERVERS]:
            request.node.stash[_SERVERS].append(server)
        context = browser.new_context(viewport=viewport or DESKTOP, **options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        user = ChatPage(name=name, page=context.new_page(), context=context)
        opened.append(user)

        def on_dialog(dialog: Dialog) -> None:
            user.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        user.page.on("dialog", on_dialog)
        user.page.on("pageerror", lambda error: user.errors.append(str(error)))
        if login:
            user.login(server.http, path)
        else:
            user.page.goto(server.http + path)
        return user

    yield open_one
    errors = {user.name: user.errors for user in opened if user.errors}
    for user in opened:
        with contextlib.suppress(Exception):
            user.context.close()
    assert not errors, f"uncaught exceptions in the page: {errors}"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On a failed test: screenshots of its pages and its servers' log tails in the report."""
    report = yield
    if report.when == "call" and report.failed and _PAGES in item.stash:
        shots = []
        pages: list[ChatPage] = item.stash[_PAGES]
        for index, user in enumerate(pages):
            path = item.stash[_ARTIFACTS] / f"failure-{index}-{user.name}.png"
            with contextlib.suppress(Exception):
                user.page.screenshot(path=str(path), timeout=5000)
                shots.append(str(path))
        if shots:
            report.sections.append(("browser screenshots", "\n".join(shots)))
        for server in item.stash[_SERVERS]:
            report.sections.append((f"roomcast dev log ({server.log})", server.tail()))
    return report
