# ruff: noqa: RUF002  (the docstring shows look-alike letters on purpose)
"""Usernames and room names: their normal form, and when two usernames are the same name.

A name crosses the broker as a routing-key word and reaches every other user's screen, so what
is accepted is narrow (PROTOCOL.md 2.2):

- NFKC normal form: what is stored, routed and shown (fullwidth `ｂｏｂ` is `bob`).
- Letters and digits of any script, `_` and `-`; a combining mark only on a letter or digit,
  at most `MAX_MARKS` on one (scripts such as Devanagari need them; "zalgo" text is refused).
- No control, format (Cf), bidirectional-control, invisible or white-space character: they
  make two different names look the same, or reorder what is shown around them.
- At most N characters AND at most M UTF-8 bytes (`Limits`), so every routing key built from
  a name stays far below AMQP's 255-byte limit (roomcast.shared.topics).

`username_key` is the identity behind "the same username": case-folded, then the Unicode TR39
confusables skeleton (Latin `alice` and Cyrillic `аlice` share it), computed by ICU's
SpoofChecker with the official confusables data. A skeleton is only ever compared, never shown.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import icu

if TYPE_CHECKING:
    from roomcast.shared.config import Limits

Kind = Literal["username", "room"]

MAX_MARKS = 4  # combining marks on one letter: enough for any script, not for zalgo
_KEY_CACHE = 16_384  # username keys kept (the cache is keyed by client input: bounded)
_NAME_CACHE = 4_096  # normal forms of non-ASCII names kept (bounded: valid names of <= 4x bytes)

# Bidirectional controls: they reorder what is displayed around them (U+202E makes `evil`
# render as `live`), so a name holding one is never what it looks like.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Default-ignorable code points outside Cf that render as nothing: Hangul fillers (letters!),
# the combining grapheme joiner, Khmer inherent vowels, Mongolian and other variation selectors.
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
    + "".join(chr(c) for c in range(0xE0100, 0xE01F0))
)
_ALLOWED_PUNCTUATION = frozenset("_-")
_PLAIN = re.compile(r"[A-Za-z0-9_-]+")


class InvalidNameError(ValueError):
    """A username or room name the protocol refuses; the message says what is wrong, in words
    a user can act on (it reaches the client as an `invalid` error)."""


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}".rstrip()


def _refused(char: str) -> str | None:
    """Why `char` can never be part of a name, or None when it may (subject to the alphabet)."""
    if char in _BIDI:
        return "a bidirectional control character"
    if char in _INVISIBLE:
        return "an invisible character"
    category = unicodedata.category(char)
    if category == "Cc":
        return "a control character"
    if category == "Cf":
        return "an invisible format character"
    if category in ("Zs", "Zl", "Zp"):
        return "white space"
    if category == "Co":
        return "a private-use character"
    if category == "Cs":
        return "a lone surrogate"
    if category == "Cn":
        return "an unassigned code point"
    return None


def normalise_name(raw: object, kind: Kind, max_chars: int, max_bytes: int) -> str:
    """The normal form of a username or room name, or `InvalidNameError` saying what is wrong."""
    if not isinstance(raw, str):
        raise InvalidNameError(f"{kind} must be a string")
    if not raw:
        raise InvalidNameError(f"{kind} is empty")
    if len(raw) <= max_chars and len(raw) <= max_bytes and _PLAIN.fullmatch(raw):
        return raw  # most names, on every frame: plain ASCII is its own NFKC form and valid
    if len(raw) > 4 * max_bytes:  # no NFKC of megabytes: no valid name is that long
        raise InvalidNameError(f"{kind} is {len(raw)} characters long; at most {max_chars}")
    return _normal_form(raw, kind, max_chars, max_bytes)


@lru_cache(maxsize=_NAME_CACHE)
def _normal_form(raw: str, kind: Kind, max_chars: int, max_bytes: int) -> str:
    """The work of `normalise_name` beyond plain ASCII, remembered for the names in use (a
    refusal is an exception, which is never cached: only valid names fill the cache)."""
    for char in raw:  # before NFKC, so the message names the character the client sent
        why = _refused(char)
        if why is not None:
            raise InvalidNameError(f"{kind} contains {_describe(char)}, {why}")
    name = unicodedata.normalize("NFKC", raw)
    marks = 0
    for index, char in enumerate(name):
        why = _refused(char)
        if why is not None:  # NFKC made it (U+3000 IDEOGRAPHIC SPACE becomes a space)
            raise InvalidNameError(f"{kind} normalises to {_describe(char)}, {why}")
        category = unicodedata.category(char)
        if category[0] == "M":
            marks += 1
            if index == 0 or name[index - 1] in _ALLOWED_PUNCTUATION:
                raise InvalidNameError(
                    f"{kind} has the combining mark {_describe(char)} with no letter before it"
                )
            if marks > MAX_MARKS:
                raise InvalidNameError(
                    f"{kind} stacks more than {MAX_MARKS} combining marks on one letter"
                )
            continue
        marks = 0
        if category[0] not in ("L", "N") and char not in _ALLOWED_PUNCTUATION:
            raise InvalidNameError(
                f"{kind} contains {_describe(char)}; only letters, digits, '_' and '-' are allowed"
            )
    if len(name) > max_chars:
        raise InvalidNameError(f"{kind} is {len(name)} characters long; at most {max_chars}")
    size = len(name.encode())
    if size > max_bytes:
        raise InvalidNameError(
            f"{kind} is {size} bytes long in UTF-8; at most {max_bytes} (letters beyond Latin "
            "take 2 to 4 bytes each)"
        )
    return name


def normalise_username(raw: object, limits: Limits) -> str:
    return normalise_name(raw, "username", limits.max_username_chars, limits.max_username_bytes)


def normalise_room(raw: object, limits: Limits) -> str:
    return normalise_name(raw, "room", limits.max_room_chars, limits.max_room_bytes)


_SPOOF = icu.SpoofChecker()


@lru_cache(maxsize=_KEY_CACHE)
def username_key(name: str) -> str:
    """What "the same username" compares: case-folded, then the TR39 skeleton, repeated until
    it no longer changes (a skeleton may hold capitals that fold further: `Ω` to `ω`).

    Case is folded first, so `ALICE` and `alice` agree; the price is that a capital `I`
    standing in for `l` (`alIce` for `allce`) is not caught, which TR39 alone would catch but
    only by making `ALICE` and `alice` differ.
    """
    key = unicodedata.normalize("NFKC", name)
    for _ in range(4):
        folded = str(_SPOOF.getSkeleton(0, key.casefold()))
        if folded == key:
            break
        key = folded
    return key
