"""scripts/check-licenses.py: the policy on made-up metadata, and the check itself on this
project's own .venv, which holds the dev extra (SecantusDB, GPL-2.0) and so must be refused."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-licenses.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_licenses", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


check = load()


@pytest.mark.parametrize(
    ("expression", "classifiers", "licence", "expected"),
    [
        ("MIT", [], "", "ok"),
        ("MIT OR Apache-2.0", [], "", "ok"),
        ("MIT OR GPL-2.0-only", [], "", "ok"),  # the user may pick MIT
        ("GPL-2.0-only AND CC-BY-4.0", [], "", "copyleft"),  # SecantusDB's
        ("MPL-2.0 AND (Apache-2.0 OR MIT)", [], "", "weak copyleft"),  # orjson's: AND binds
        ("(MIT OR LGPL-3.0-or-later) AND AGPL-3.0-only", [], "", "copyleft"),
        ("LGPL-2.1-or-later WITH Classpath-exception-2.0", [], "", "copyleft"),
        ("SSPL-1.0", [], "", "copyleft"),
        ("EUPL-1.2", [], "", "copyleft"),
        ("CC-BY-SA-4.0", [], "", "copyleft"),
        ("(MIT", [], "", "unknown"),
        ("", ["OSI Approved", "GNU Lesser General Public License v3 (LGPLv3)"], "", "copyleft"),
        ("", ["BSD License", "GNU General Public License v2 (GPLv2)"], "", "ok"),  # either
        ("", ["Mozilla Public License 2.0 (MPL 2.0)"], "", "weak copyleft"),
        ("", [], "GPLv3+", "copyleft"),
        ("", [], "BSD", "ok"),
        ("", [], "", "unknown"),
        ("", [], "UNKNOWN", "unknown"),
        ("", [], "Permission is hereby granted... " * 10, "unknown"),  # a whole text: unread
    ],
)
def test_policy(expression: str, classifiers: list[str], licence: str, expected: str) -> None:
    assert check.judge(expression, classifiers, licence)[1] == expected


def dist(name: str, expression: str) -> dict[str, object]:
    return {"name": name, "version": "1", "expression": expression, "classifiers": []}


def test_report_refuses_copyleft_and_unknown_and_lets_weak_copyleft_pass(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fine = [dist("a", "MIT"), dist("orjson", "MPL-2.0 AND (Apache-2.0 OR MIT)")]
    assert check.report(check.classify(fine)) == 0
    assert check.report(check.classify([*fine, dist("db", "GPL-2.0-only")])) == 1
    assert check.report(check.classify([*fine, dist("mystery", "")])) == 1
    err = capsys.readouterr().err
    assert "db (GPL-2.0-only)" in err and "mystery (?)" in err


def test_the_check_refuses_a_venv_with_the_dev_extra() -> None:
    """This project's .venv has `roomcast[dev]`: SecantusDB must be found and refused."""
    venv = Path(sys.prefix)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--venv", str(venv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "secantusdb" in result.stderr.lower()
    assert "GPL-2.0-only" in result.stderr
