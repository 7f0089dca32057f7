"""Sign-in by token in the web client (PROTOCOL.md 2.4, docs/auth.md "Web client"): the
application sends its user to `/#token=<JWT>`; the page takes the token out of the address bar,
keeps it for this tab only, joins with it under the token's name, takes a newer token from the
application by postMessage, and says so plainly when a token is refused or expires (without
reconnecting in a loop). Under ROOMCAST_AUTH=token an anonymous visitor is told to sign in."""

from __future__ import annotations

import time

import jwt
import pytest
from playwright.sync_api import Page, expect

from tests.support.dev_process import DevProcess

from .conftest import OpenUser, mint_token, unique

pytestmark = pytest.mark.browser

EXPIRED = "Your sign-in has expired. Open the chat again from the application"


def _me(page: Page) -> object:
    return page.locator(".me-name")


def _wait_past(page: Page, epoch_seconds: int) -> None:
    """Waits until the clock (the server's: same machine) is past `epoch_seconds`. Not
    wait_for_function: its polling evaluates strings, which the page's CSP forbids."""
    while time.time() < epoch_seconds + 0.5:
        page.wait_for_timeout(250)


def test_a_token_link_signs_in_under_the_tokens_name_and_leaves_the_address_bar(
    token_server: DevProcess, open_user: OpenUser
) -> None:
    name = unique("tina")
    token = mint_token(unique("user-id"), name=name)
    tina = open_user(name, token_server, login=False, path=f"/#token={token}")
    expect(tina.box).to_be_visible()
    expect(_me(tina.page)).to_have_text(f"Signed in as {name}")
    assert "token" not in tina.page.url and token not in tina.page.url
    # kept for this tab only: never in localStorage, where every tab (and the disk) has it
    storage = tina.page.evaluate("[sessionStorage.getItem('roomcast.token'), {...localStorage}]")
    assert storage[0] == token
    assert token not in str(storage[1]) and "roomcast.identity" not in storage[1]
    expect(tina.page.get_by_role("button", name="Sign out")).to_be_visible()
    # the entry was replaced, not followed by one without the token: Back leaves the page
    tina.page.go_back()
    assert tina.page.url == "about:blank"
    tina.page.go_forward()  # the tab kept its token: signed in again, same name
    expect(_me(tina.page)).to_have_text(f"Signed in as {name}")

    ann = open_user(unique("ann"), token_server)  # anonymous users share the room
    expect(ann.user_button(name)).to_be_visible()
    hello, back = unique("hello from tina"), unique("hi tina")
    tina.send(hello)
    expect(ann.message(hello)).to_have_count(1)
    expect(ann.message(hello)).to_contain_text(name)
    ann.send(back)
    expect(tina.message(back)).to_have_count(1)


def test_the_ack_names_the_user_when_the_token_has_no_name(
    token_server: DevProcess, open_user: OpenUser
) -> None:
    sub = unique("sub")
    user = open_user(sub, token_server, login=False, path=f"/#token={mint_token(sub)}")
    expect(_me(user.page)).to_have_text(f"Signed in as {sub}")
    expect(user.user_button(sub)).to_be_visible()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: mint_token(unique("late"), seconds=-120), "expired"),
        (lambda: mint_token(unique("forged"), secret="not-the-secret-" + "x" * 32), "signature"),
        (lambda: "not.a.token", "malformed"),
    ],
    ids=["expired", "bad-signature", "malformed"],
)
def test_a_refused_token_is_said_plainly_and_the_page_offers_a_name(
    token_server: DevProcess, open_user: OpenUser, token: object, reason: str
) -> None:
    assert callable(token)
    user = open_user(unique("who"), token_server, login=False, path=f"/#token={token()}")
    error = user.page.get_by_text("Your sign-in link has expired or is not valid")
    expect(error).to_be_visible()
    assert "token" not in user.page.url
    assert user.page.evaluate("sessionStorage.getItem('roomcast.token')") is None
    expect(user.box).to_be_hidden()
    user.login(token_server.http)  # anonymous chat still works in this mode
    expect(user.user_button(user.name)).to_be_visible()


def test_expiry_closes_the_chat_with_a_message_and_no_reconnect_loop(
    token_server: DevProcess, open_user: OpenUser
) -> None:
    name = unique("brief")
    user = open_user(name, token_server, login=False, path="/healthz")
    sockets: list[str] = []
    user.page.on("websocket", lambda ws: sockets.append(ws.url))
    # minted once the browser is up: the join must come before `exp`, even on a slow machine
    token = mint_token(unique("brief-id"), name=name, seconds=6)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    user.page.goto(f"{token_server.http}/#token={token}")
    expect(user.box).to_be_visible()
    expect(user.page.get_by_text(EXPIRED).first).to_be_visible(timeout=20_000)
    expect(user.page.get_by_role("button", name="Retry now")).to_be_hidden()
    _wait_past(user.page, exp + 5)  # longer than the first reconnect backoffs
    assert len(sockets) == 1, sockets  # the expired token was not tried again
    expect(user.page.get_by_text(EXPIRED).first).to_be_visible()


def test_the_application_hands_over_a_newer_token_before_expiry(
    token_server: DevProcess, open_user: OpenUser
) -> None:
    """The page opened by the application asks it (postMessage to its opener) for a new token a
    minute before `exp`; the answer is sent as `refresh`, so the socket outlives the first token."""
    name, sub = unique("kept"), unique("kept-id")
    fresh = mint_token(sub, name=name, seconds=3600)
    ann = open_user(unique("ann"), token_server)

    app = open_user("app", token_server, login=False, path="/static/favicon.svg").page
    app.evaluate(
        """fresh => {
            window.asked = [];
            addEventListener("message", (e) => {
                if (e.data?.type !== "roomcast:token-expiring") return;
                window.asked.push(e.data.exp);
                e.source.postMessage({ type: "roomcast:token", token: fresh }, "*");
            });
        }""",
        fresh,
    )
    sockets: list[str] = []
    app.context.on("page", lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)))
    # minted last, and with room for a slow machine to open the page and join before `exp`
    first = mint_token(sub, name=name, seconds=10)
    exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    with app.context.expect_page() as opened:
        app.evaluate("url => { window.open(url); }", f"{token_server.http}/#token={first}")
    chat = opened.value
    expect(chat.get_by_role("textbox", name="Message", exact=True)).to_be_visible()
    app.wait_for_function("window.asked.length > 0")
    assert app.evaluate("window.asked") == [exp]
    _wait_past(chat, exp + 2)
    late = unique("after the first token expired")
    box = chat.get_by_role("textbox", name="Message", exact=True)
    box.fill(late)
    box.press("Enter")
    expect(ann.message(late)).to_have_count(1)
    expect(chat.get_by_text(EXPIRED)).to_have_count(0)
    assert len(sockets) == 1, sockets  # the same socket all along
    assert chat.evaluate("sessionStorage.getItem('roomcast.token')") == fresh


def test_token_mode_tells_an_anonymous_visitor_to_sign_in(
    token_only_server: DevProcess, open_user: OpenUser
) -> None:
    visitor = open_user(unique("anon"), token_only_server, login=False)
    visitor.page.get_by_label("Your name", exact=True).fill(visitor.name)
    visitor.page.get_by_role("button", name="Join chat").click()
    expect(visitor.page.get_by_text("This chat is for signed-in users only")).to_be_visible()
    expect(visitor.box).to_be_hidden()

    name = unique("member")
    member = open_user(name, token_only_server, login=False, path=f"/#token={mint_token(name)}")
    expect(_me(member.page)).to_have_text(f"Signed in as {name}")
    said = unique("signed-in only")
    member.send(said)
    expect(member.message(said)).to_have_count(1)
