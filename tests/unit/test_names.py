# ruff: noqa: RUF001, RUF003  (look-alike letters are what these tests are about)
"""Names (PROTOCOL.md 2.2): the normal form, what is refused and why, look-alikes, and routing
keys that fit AMQP's 255 bytes whatever name a client picks."""

from __future__ import annotations

from typing import Any, get_args

import annotated_types
import pytest

from roomcast.gateway.protocol import ServerEvent
from roomcast.shared import topics
from roomcast.shared.config import Limits
from roomcast.shared.models import is_valid_name
from roomcast.shared.names import (
    InvalidNameError,
    normalise_name,
    normalise_room,
    normalise_username,
    username_key,
)

pytestmark = pytest.mark.unit

LIMITS = Limits()
CJK_EXT_B = "\U00020000"  # 𠀀: a letter, 4 bytes in UTF-8


def refused(raw: object, *, room: bool = False) -> str:
    with pytest.raises(InvalidNameError) as caught:
        (normalise_room if room else normalise_username)(raw, LIMITS)
    return str(caught.value)


# --- the normal form -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("alice", "alice"),
        ("ｂｏｂ", "bob"),  # fullwidth
        ("ﬁona", "fiona"),  # ligature
        ("jose\u0301", "josé"),  # decomposed accent composes
        ("𝐚𝐥𝐢𝐜𝐞", "alice"),  # mathematical bold
        ("हिन्दी", "हिन्दी"),  # Devanagari: letters with their vowel signs (combining marks)
        ("தமிழ்", "தமிழ்"),
        ("日本語", "日本語"),
        ("Ελληνικά", "Ελληνικά"),
        ("under_score-dash9", "under_score-dash9"),
        ("①②", "12"),
    ],
)
def test_names_are_nfkc_normalised(raw: str, normal: str) -> None:
    assert normalise_username(raw, LIMITS) == normal
    assert normalise_username(normal, LIMITS) == normal  # the normal form is a fixed point


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("al\u200dice", "U+200D ZERO WIDTH JOINER, an invisible format character"),
        ("al\u200cice", "U+200C ZERO WIDTH NON-JOINER, an invisible format character"),
        ("al\u200bice", "U+200B ZERO WIDTH SPACE, an invisible format character"),
        ("\ufeffalice", "U+FEFF ZERO WIDTH NO-BREAK SPACE, an invisible format character"),
        ("al\u00adice", "U+00AD SOFT HYPHEN, an invisible format character"),
        ("admin\u202egnp", "U+202E RIGHT-TO-LEFT OVERRIDE, a bidirectional control character"),
        ("alice\u200f", "U+200F RIGHT-TO-LEFT MARK, a bidirectional control character"),
        ("a\u2066b", "U+2066 LEFT-TO-RIGHT ISOLATE, a bidirectional control character"),
        ("al\x07ice", "U+0007, a control character"),
        ("alice\n", "U+000A, a control character"),
        ("al ice", "U+0020 SPACE, white space"),
        ("al\u00a0ice", "U+00A0 NO-BREAK SPACE, white space"),
        ("al\u3000ice", "U+3000 IDEOGRAPHIC SPACE, white space"),
        ("\u3164", "U+3164 HANGUL FILLER, an invisible character"),
        ("al\u034fice", "U+034F COMBINING GRAPHEME JOINER, an invisible character"),
        ("a\ufe0f", "U+FE0F VARIATION SELECTOR-16, an invisible character"),
        ("a\ue000", "U+E000, a private-use character"),
        ("\u0301alice", "combining mark U+0301 COMBINING ACUTE ACCENT with no letter before it"),
        ("a_\u0301", "with no letter before it"),
        ("z" + "\u0336" * 5, "more than 4 combining marks on one letter"),
        ("alice😀", "U+1F600 GRINNING FACE; only letters, digits, '_' and '-' are allowed"),
        ("a.b", "U+002E FULL STOP; only letters"),
        ("a*", "U+002A ASTERISK; only letters"),
        ("a#", "U+0023 NUMBER SIGN; only letters"),
        ("", "username is empty"),
    ],
)
def test_refusals_say_exactly_what_is_wrong(raw: str, says: str) -> None:
    message = refused(raw)
    assert says in message
    assert message.startswith("username ")
    assert "\u202e" not in message and "\u200d" not in message  # named, never echoed


def test_a_name_that_is_not_a_string() -> None:
    assert refused(42) == "username must be a string"
    assert refused(None, room=True) == "room must be a string"


def test_a_character_that_nfkc_turns_into_a_refused_one() -> None:
    # U+2024 ONE DOT LEADER is a punctuation mark that NFKC makes a full stop
    assert "U+002E FULL STOP" in refused("a\u2024b")


def test_lengths_in_characters_and_in_bytes() -> None:
    assert normalise_username("x" * 32, LIMITS) == "x" * 32
    assert refused("x" * 33) == "username is 33 characters long; at most 32"
    assert normalise_username(CJK_EXT_B * 16, LIMITS) == CJK_EXT_B * 16  # 64 bytes
    assert "68 bytes long in UTF-8; at most 64" in refused(CJK_EXT_B * 17)
    assert normalise_room("r" * 64, LIMITS) == "r" * 64
    assert refused("r" * 65, room=True) == "room is 65 characters long; at most 64"
    assert normalise_room(CJK_EXT_B * 32, LIMITS) == CJK_EXT_B * 32  # 128 bytes
    # issue 10: 62 four-byte characters, inside the 64-character limit, made a key too long
    assert "room is 248 bytes long in UTF-8; at most 128" in refused(CJK_EXT_B * 62, room=True)


def test_huge_input_is_refused_before_it_is_normalised() -> None:
    assert "characters long; at most 32" in refused("x" * 100_000)


def test_limits_are_configurable() -> None:
    assert normalise_name("abcd", "room", 4, 4) == "abcd"
    with pytest.raises(InvalidNameError, match="5 bytes long"):
        normalise_name("abcé", "room", 4, 4)


# --- the same username -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "lookalike",
    [
        "alice",
        "Alice",
        "ALICE",
        "\u0430lice",  # Cyrillic а
        "\u0410LICE",  # Cyrillic А
        "\u0251lice",  # Latin alpha
        "al\u0456ce",  # Cyrillic і
        "𝐚𝐥𝐢𝐜𝐞",
    ],
)
def test_lookalikes_share_a_key(lookalike: str) -> None:
    assert username_key(normalise_username(lookalike, LIMITS)) == username_key("alice")


def test_mixed_script_paypal_and_greek_bob() -> None:
    assert username_key("\u0440\u0430\u0443\u0440\u0430l") == username_key("paypal")  # раурал
    assert username_key("b\u03bfb") == username_key("bob")  # Greek omicron
    assert username_key("rnoderator") == username_key("moderator")  # TR39: rn looks like m


@pytest.mark.parametrize(("a", "b"), [("alice", "alicia"), ("anna", "anne"), ("bob", "rob")])
def test_different_names_keep_different_keys(a: str, b: str) -> None:
    assert username_key(a) != username_key(b)


def test_the_key_is_a_fixed_point() -> None:
    for name in ("ALICE", "\u0430lice", "Ωmega", "straße", "İstanbul", "हिन्दी"):
        key = username_key(name)
        assert username_key(key) == key


def test_remembered_normal_forms_change_no_answer() -> None:
    """Normal forms are cached; refusals are not, and the plain-ASCII shortcut keeps limits."""
    for _ in range(3):
        assert normalise_username("ｂｏｂ", LIMITS) == "bob"
        assert "U+200B" in refused("bo\u200bb")
        assert "33 characters" in refused("x" * 33)
    tight = Limits(max_username_chars=32, max_username_bytes=4)
    with pytest.raises(InvalidNameError, match="5 bytes"):
        normalise_username("alice", tight)


# --- is_valid_name: already in normal form and valid (what backend_api.py checks) -----------


def test_is_valid_name_accepts_only_normal_valid_names() -> None:
    assert is_valid_name("alice", 32)
    assert is_valid_name("हिन्दी", 32)
    assert not is_valid_name("ｂｏｂ", 32)  # valid once normalised, but not its normal form
    assert not is_valid_name("a\u200db", 32)
    assert not is_valid_name("x" * 33, 32)
    assert not is_valid_name(CJK_EXT_B * 17, 32)  # 68 bytes: over two bytes a character
    assert is_valid_name(CJK_EXT_B * 17, 32, max_bytes=100)


# --- routing keys ------------------------------------------------------------------------------


def _upper_bound(field: str) -> int:
    for meta in Limits.model_fields[field].metadata:
        if isinstance(meta, annotated_types.Le):
            return int(meta.le)  # type: ignore[call-overload]
    raise AssertionError(f"Limits.{field} has no upper bound")


def test_event_and_op_names_fit_their_budget() -> None:
    events: set[Any] = set(get_args(ServerEvent)) | {"userTyping", "readMarker"}
    ops = {"join", "leave", "disconnect", "invite", "users", "heartbeat", "gone"}
    for name in events | ops:
        assert len(name.encode()) <= topics.MAX_EVENT_BYTES, name


def test_every_key_built_from_a_longest_name_fits_amqp() -> None:
    """With the largest byte limits a deployment may configure, names of 4-byte letters."""
    room = CJK_EXT_B * (_upper_bound("max_room_bytes") // 4)
    user = CJK_EXT_B * (_upper_bound("max_username_bytes") // 4)
    event = "e" * topics.MAX_EVENT_BYTES
    keys = [
        topics.room_event(room, event),
        topics.room_pattern(room),
        topics.user_event(user, event),
        topics.user_pattern(user),
        topics.history_request(room),
        topics.moderation_change(room),
        topics.disconnect_user(user),
    ]
    for key in keys:
        assert len(key.encode()) <= topics.MAX_KEY_BYTES
    # and the default limits leave room to spare
    default_room = CJK_EXT_B * (LIMITS.max_room_bytes // 4)
    assert len(topics.room_event(default_room, event).encode()) < 200
