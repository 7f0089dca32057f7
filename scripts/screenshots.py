"""Screenshots of the web client's main views for the README, taken in Debian's Chromium.

    bash scripts/install-browser.sh .venv
    .venv/bin/python scripts/screenshots.py            # writes docs/img/web-*.png
    .venv/bin/python scripts/screenshots.py --out DIR

It starts its own `roomcast dev` (a free port on 127.0.0.1, a temporary data dir, so the pictures
show only this script's conversation), stages a short chat between two browser contexts, saves:

    web-main.png     #main on a desktop: two people chatting, one of them typing
    web-invite.png   the invitation to a private chat, as its receiver sees it
    web-private.png  the private room of the two
    web-phone.png    #main on a phone-sized screen
    web-changes.png  messages that change: an edit, a tombstone, reactions, an unread badge

and stops the server with SIGINT. The reactions need an emoji font (Debian:
`apt-get install fonts-noto-color-emoji`), or they show as empty boxes. Run it by hand when the client's look changes; the tests never
rewrite docs/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, ViewportSize, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 760}
PHONE: ViewportSize = {"width": 390, "height": 844}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def roomcast_dev(data_dir: Path) -> Iterator[str]:
    """`roomcast dev` on a free port until the block ends; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir.parent / "dev.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    args = [sys.executable, "-m", "roomcast", "dev", "--port", str(port)]
    args += ["--data-dir", str(data_dir)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"roomcast dev exited:\n{log.read_text()[-3000:]}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"roomcast dev not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(25)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def open_user(
    browser: Browser, url: str, name: str, viewport: ViewportSize = DESKTOP, **options: Any
) -> Page:
    context = browser.new_context(
        viewport=viewport,
        color_scheme="light",
        reduced_motion="reduce",
        locale="en-US",
        timezone_id="UTC",
        **options,
    )
    page = context.new_page()
    page.goto(url)
    page.get_by_label("Your name", exact=True).fill(name)
    page.get_by_role("button", name="Join chat").click()
    expect(message_box(page)).to_be_visible()
    return page


def message_box(page: Page) -> Locator:
    return page.get_by_role("textbox", name="Message", exact=True)


def say(page: Page, body: str, *readers: Page) -> None:
    box = message_box(page)
    box.fill(body)
    box.press("Enter")
    for reader in (page, *readers):
        item = reader.get_by_role("list", name="Messages", exact=True).get_by_role("listitem")
        expect(item.filter(has_text=body)).not_to_contain_text("Sending")


def message(page: Page, body: str) -> Locator:
    items = page.get_by_role("list", name="Messages", exact=True).get_by_role("listitem")
    return items.filter(has_text=body)


def use_tool(page: Page, body: str, name: str) -> None:
    """Clicks one of a message's tools ("Edit message", "Delete message", "Add reaction")."""
    item = message(page, body)
    item.click(position={"x": 8, "y": 8})  # focuses it: its tools show, also on a touch screen
    item.get_by_role("button", name=name, exact=True).click()


def react(page: Page, body: str, emoji: str) -> None:
    use_tool(page, body, "Add reaction")
    page.get_by_role("button", name=f"React with {emoji}", exact=True).click()
    mine = message(page, body).get_by_role("button", name=re.compile(f"^{emoji} "))
    expect(mine).to_have_attribute("aria-pressed", "true")  # acknowledged: the next may go


def changes(alice: Page, bob: Page, carol: Page, dave: Page) -> None:
    """In #main, as Alice sees it: her first message edited, one of Bob's deleted, reactions on
    another, while Bob writes in their private room (an unread badge)."""
    rooms = alice.get_by_role("navigation", name="Rooms")
    rooms.get_by_role("link", name="main", exact=True).click()
    use_tool(alice, "Is the deploy still on", "Edit message")
    box = message_box(alice)
    box.fill("Morning all! Is the deploy still on for 11:30?")
    box.press("Enter")
    expect(message(alice, "for 11:30?")).to_contain_text("edited")
    bob_rooms = bob.get_by_role("navigation", name="Rooms")
    bob_rooms.get_by_role("link", name="main", exact=True).click()
    use_tool(bob, "post here when it starts", "Delete message")
    bob.get_by_role("dialog").get_by_role("button", name="Delete", exact=True).click()
    expect(message(alice, "message deleted")).to_have_count(1)
    bob_rooms.get_by_role("link", name=re.compile("alice")).click()
    for page, emoji in ((carol, "👍"), (dave, "👍"), (alice, "👍"), (carol, "🎉")):
        react(page, "green overnight", emoji)
    expect(message(alice, "green overnight")).to_contain_text("👍 3")
    expect(message(alice, "green overnight")).to_contain_text("🎉 1")
    say(bob, "PR looks good, two small comments.")
    say(bob, "Approved!")
    expect(rooms.get_by_role("link", name=re.compile("2 unread"))).to_be_visible()
    message(
        alice, "keep an eye"
    ).hover()  # its tools show: react, and for its author edit and delete


def settle(*pages: Page) -> None:
    """Dismisses the toasts and waits until nothing is pending, for a clean picture."""
    for page in pages:
        for button in page.get_by_role("button", name="Dismiss").all():
            with contextlib.suppress(Exception):
                button.click(timeout=2000)
        expect(page.get_by_role("button", name="Dismiss")).to_have_count(0)
        expect(page.get_by_text("Connected", exact=True)).to_be_visible()
        page.evaluate("document.activeElement && document.activeElement.blur()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    out: Path = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=15_000)

    with (
        tempfile.TemporaryDirectory(prefix="roomcast-shots-") as tmp,
        roomcast_dev(Path(tmp) / "data") as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        alice = open_user(browser, url, "alice")
        bob = open_user(browser, url, "bob")
        carol = open_user(browser, url, "carol")

        say(alice, "Morning all! Is the deploy still on for 11?", bob, carol)
        say(bob, "Yes, the staging run was green overnight.", alice, carol)
        say(carol, "I'll keep an eye on the dashboards: https://example.com/status", alice, bob)
        say(bob, "Thanks carol! I'll post here when it starts.", alice, carol)
        message_box(bob).press_sequentially("On it")
        expect(alice.get_by_text("bob is typing")).to_be_visible()
        settle(alice)
        alice.screenshot(path=str(out / "web-main.png"))
        message_box(bob).fill("")

        phone = open_user(browser, url, "dave", viewport=PHONE, is_mobile=True, has_touch=True)
        say(phone, "Joining from my phone, hello everyone!", alice, bob)
        settle(phone)
        phone.screenshot(path=str(out / "web-phone.png"))

        # Alice starts a private chat with Bob; Bob sees the invitation in #main.
        alice.get_by_role("list", name="Active users").get_by_role(
            "button", name="bob", exact=True
        ).click()
        link = bob.get_by_role("list", name="Messages", exact=True).get_by_role("link", name="join")
        expect(link).to_be_visible()
        settle(bob)
        bob.screenshot(path=str(out / "web-invite.png"))

        link.click()
        expect(bob.get_by_role("heading", name="alice", exact=True)).to_be_visible()
        say(alice, "Quick one before the deploy: can you review my PR?", bob)
        say(bob, "Sure, sending comments in a minute.", alice)
        settle(alice, bob)
        bob.screenshot(path=str(out / "web-private.png"))

        changes(alice, bob, carol, phone)
        settle(alice)
        alice.screenshot(path=str(out / "web-changes.png"))
        browser.close()

    for name in ("web-main", "web-invite", "web-private", "web-phone", "web-changes"):
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
