"""ROOMCAST_SECRET_FILE: the gateways' session secret read from a file (docker compose generates
one into a volume), with an error that names the variable and never shows the secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.runtime import _dev_secret, _gateway_secret
from roomcast.shared.config import ConfigError, load_settings, read_secret

SECRET = "from-a-file-0123456789abcdef"


def test_the_gateway_reads_its_secret_from_the_file_named_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {SECRET}\n")
    monkeypatch.delenv("ROOMCAST_SECRET", raising=False)
    monkeypatch.setenv("ROOMCAST_SECRET_FILE", str(path))
    settings = load_settings()
    assert _gateway_secret(settings) == SECRET.encode()
    # `roomcast dev` takes it too, rather than keeping one of its own
    assert _dev_secret(settings, tmp_path / "data") == SECRET.encode()
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        ("short", "holds 5 characters; at least 16 needed"),
        ("   \n", "holds 0 characters"),
        (b"\xff\xfe" + b"x" * 20, "cannot be read (not UTF-8 text)"),
        ("directory", "cannot be read"),
    ],
    ids=["missing", "short", "blank", "binary", "directory"],
)
def test_a_file_without_a_usable_secret_stops_the_gateway_with_one_clear_line(
    tmp_path: Path, content: str | bytes | None, expected: str
) -> None:
    path = tmp_path / "secret"
    if content == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    settings = load_settings(secret_file=path)
    with pytest.raises(ConfigError) as raised:
        _gateway_secret(settings)
    message = str(raised.value)
    assert message.startswith(f"ROOMCAST_SECRET_FILE: {path} "), message
    assert expected in message, message
    assert "\n" not in message
    if isinstance(content, str) and content.strip() and content != "directory":
        assert content.strip() not in message.removeprefix(f"ROOMCAST_SECRET_FILE: {path}")


def test_both_ways_at_once_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ROOMCAST_SECRET and ROOMCAST_SECRET_FILE are both set"):
        load_settings(secret=SECRET, secret_file=tmp_path / "secret")


def test_neither_names_both_ways() -> None:
    settings = load_settings(secret=None, secret_file=None)
    assert read_secret(settings) is None
    with pytest.raises(ConfigError, match="ROOMCAST_SECRET_FILE"):
        _gateway_secret(settings)


def test_a_plain_secret_still_works() -> None:
    settings = load_settings(secret=SECRET)
    assert _gateway_secret(settings) == SECRET.encode()
    assert read_secret(settings) == settings.secret
