"""ROOMCAST_JWT_SECRET_FILE and ROOMCAST_API_KEY_FILE: the sign-in secret and the backend's keys
read from files (a mounted Kubernetes Secret), judged as the variables are, with errors that name
the variable and never show what the file holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.shared.config import ConfigError, load_settings

JWT_SECRET = "jwt-secret-from-a-file-0123456789abcdef"
KEYS = ("backend-key-one-0123456789", "backend-key-two-0123456789")


def test_the_files_stand_for_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jwt").write_text(f"  {JWT_SECRET}\n")
    (tmp_path / "keys").write_text(f"{KEYS[0]}, {KEYS[1]}\n")
    monkeypatch.setenv("ROOMCAST_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    monkeypatch.setenv("ROOMCAST_API_KEY_FILE", str(tmp_path / "keys"))
    monkeypatch.setenv("ROOMCAST_AUTH", "token")  # satisfied by the file's secret
    settings = load_settings()
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == JWT_SECRET
    assert tuple(key.get_secret_value() for key in settings.api_key) == KEYS


@pytest.mark.parametrize(
    ("field", "content", "expected"),
    [
        ("jwt_secret", None, "ROOMCAST_JWT_SECRET_FILE: {path} does not exist"),
        ("jwt_secret", "  \n", "ROOMCAST_JWT_SECRET_FILE: {path} holds 0 characters"),
        ("jwt_secret", "too-short-secret", "ROOMCAST_JWT_SECRET: must be at least 32 bytes"),
        ("api_key", b"\xff\xfe" + b"k" * 20, "ROOMCAST_API_KEY_FILE: {path} cannot be read"),
        ("api_key", "shortkey", "ROOMCAST_API_KEY: key 1 has 8 characters"),
    ],
    ids=["missing", "blank", "weak-secret", "binary", "short-key"],
)
def test_a_bad_file_stops_the_process_with_one_line(
    tmp_path: Path, field: str, content: str | bytes | None, expected: str
) -> None:
    path = tmp_path / field
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as raised:
        load_settings(**{f"{field}_file": path})
    message = str(raised.value)
    assert message.startswith(expected.format(path=path)), message
    assert "\n" not in message
    if isinstance(content, str) and content.strip():
        assert content.strip() not in message


@pytest.mark.parametrize("field", ["jwt_secret", "api_key"])
def test_both_ways_at_once_are_refused(tmp_path: Path, field: str) -> None:
    variable = f"ROOMCAST_{field.upper()}"
    with pytest.raises(ConfigError, match=f"{variable} and {variable}_FILE are both set"):
        load_settings(**{field: "x" * 40, f"{field}_file": tmp_path / "file"})


def test_an_empty_file_variable_is_unset() -> None:
    settings = load_settings(jwt_secret_file="", api_key_file="", jwt_secret=None, api_key=())
    assert settings.jwt_secret is None and settings.jwt_secret_file is None
    assert settings.api_key_file is None
    assert settings.api_key == ()
