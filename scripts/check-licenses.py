#!/usr/bin/env python3
"""Licence check of what `pip install roomcast` installs: no copyleft in the runtime set.

    python3 scripts/check-licenses.py                # a fresh venv, `pip install .`, check it
    python3 scripts/check-licenses.py --venv DIR     # check an existing venv instead

It builds a virtualenv in a temporary directory, runs a plain `pip install .` (no extras) into
it, reads every installed distribution's licence from its metadata (importlib.metadata: the SPDX
`License-Expression`, else the `License ::` classifiers, else a short `License` field), prints
them all, and exits 1 if one is copyleft.

Policy (roomcast is MIT, and an operator must be able to ship the runtime set under it):
- Refused: GPL, AGPL, LGPL, SSPL, EUPL, OSL, CC-BY-SA, and any licence whose metadata says
  nothing we can read ("unknown" is refused too: it has to be looked at by a person).
- Allowed, reported as weak copyleft: MPL-2.0. Its copyleft is per file: it obliges whoever
  changes an MPL file to publish that file, and pip installs them unchanged; MPL-2.0 says itself
  that a larger work may be under other terms (section 3.3).
- An expression with OR passes if one alternative does ("MIT OR GPL-2.0" is fine); with AND,
  every part must pass ("GPL-2.0-only AND CC-BY-4.0" is refused).

The `dev`, `test` and `bench` extras are not checked: they may hold copyleft (SecantusDB is
GPL-2.0-only), and README says so.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

COPYLEFT = re.compile(
    r"\b(A?GPL|LGPL|SSPL|EUPL|OSL)(v?\d|-|\+|\b)|\bCC-BY-SA\b"
    r"|GNU (Affero |Lesser |Library )?General Public"
    r"|Server Side Public|European Union Public|Open Software License|ShareAlike",
    re.IGNORECASE,
)
WEAK = re.compile(r"\bMPL\b|Mozilla Public", re.IGNORECASE)

# Run inside the venv that is checked: every distribution, with what its metadata says.
_LIST = """
import json
from importlib import metadata
out = []
for dist in metadata.distributions():
    meta = dist.metadata
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or []
                   if c.startswith("License ::")]
    out.append({
        "name": meta["Name"], "version": meta["Version"],
        "expression": meta.get("License-Expression") or "",
        "classifiers": classifiers,
        "license": (meta.get("License") or "").strip(),
    })
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Licence:
    name: str
    version: str
    licence: str  # what the verdict is about, as read from the metadata
    verdict: str  # "ok", "weak copyleft", "copyleft", "unknown"

    @property
    def refused(self) -> bool:
        return self.verdict in {"copyleft", "unknown"}


def judge(expression: str, classifiers: list[str], licence: str) -> tuple[str, str]:
    """(what the metadata says, verdict), from its most precise statement: the SPDX expression,
    else the `License ::` classifiers (several: the user may pick), else a short `License`."""
    if expression:
        return expression, verdict(expression)
    named = [c for c in classifiers if c not in {"OSI Approved", "Other/Proprietary License"}]
    if named:
        verdicts = [_name_verdict(c) for c in named]
        return " | ".join(named), min(verdicts, key=_RANK.__getitem__)
    first_line = licence.splitlines()[0].strip() if licence else ""
    if first_line and len(first_line) <= 100 and first_line.upper() not in {"UNKNOWN", "NONE"}:
        spdx = verdict(first_line)
        return first_line, spdx if spdx != "unknown" else _name_verdict(first_line)
    return "?", "unknown"


def _name_verdict(name: str) -> str:
    """One licence named in words (a classifier, an SPDX identifier)."""
    if COPYLEFT.search(name):
        return "copyleft"
    if WEAK.search(name):
        return "weak copyleft"
    return "ok"


_RANK = {"ok": 0, "weak copyleft": 1, "unknown": 2, "copyleft": 3}
_OPERATORS = {"AND", "OR", "WITH"}


def verdict(text: str) -> str:
    """Classify one licence statement (see the module docstring for the policy): an SPDX
    expression where AND binds tighter than OR; OR takes the best alternative, AND the worst."""
    if not text.strip() or text.strip().upper() in {"UNKNOWN", "NONE"}:
        return "unknown"
    tokens = _tokens(text)
    try:
        result, rest = _or(tokens)
    except IndexError:
        return "unknown"
    return result if not rest else "unknown"


def _tokens(text: str) -> list[str]:
    """Parentheses, operators, and the words between them joined into one licence name."""
    tokens: list[str] = []
    for word in re.findall(r"\(|\)|[^\s()]+", text):
        if word in {"(", ")"} or word.upper() in _OPERATORS:
            tokens.append(word.upper() if word.upper() in _OPERATORS else word)
        elif tokens and tokens[-1] not in {"(", ")"} and tokens[-1] not in _OPERATORS:
            tokens[-1] += " " + word
        else:
            tokens.append(word)
    return tokens


def _or(tokens: list[str]) -> tuple[str, list[str]]:
    best, tokens = _and(tokens)
    while tokens and tokens[0] == "OR":
        other, tokens = _and(tokens[1:])
        best = min(best, other, key=_RANK.__getitem__)
    return best, tokens


def _and(tokens: list[str]) -> tuple[str, list[str]]:
    worst, tokens = _atom(tokens)
    while tokens and tokens[0] == "AND":
        other, tokens = _atom(tokens[1:])
        worst = max(worst, other, key=_RANK.__getitem__)
    return worst, tokens


def _atom(tokens: list[str]) -> tuple[str, list[str]]:
    if tokens[0] == "(":
        result, rest = _or(tokens[1:])
        if not rest or rest[0] != ")":
            raise IndexError("unbalanced parentheses")
        return result, rest[1:]
    name, rest = tokens[0], tokens[1:]
    if rest and rest[0] == "WITH":  # an exception narrows a licence; judge the licence itself
        rest = rest[2:]
    return _name_verdict(name), rest


def classify(raw: list[dict[str, Any]]) -> list[Licence]:
    """Every distribution listed by `_LIST`, judged, sorted by name."""
    licences = []
    for item in raw:
        text, result = judge(
            str(item.get("expression") or ""),
            [str(c) for c in item.get("classifiers") or []],
            str(item.get("license") or ""),
        )
        licences.append(Licence(str(item["name"]), str(item["version"]), text, result))
    return sorted(licences, key=lambda lic: lic.name.lower())


def installed(python: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(python), "-I", "-c", _LIST], capture_output=True, text=True, check=True
    )
    data: list[dict[str, Any]] = json.loads(result.stdout)
    return data


def source_copy(source: Path, where: Path) -> Path:
    """What `pip install .` reads (pyproject.toml, the readme, the package folders), copied to
    `where`: setuptools builds in the source tree, and the work tree is not ours to write in."""
    project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    package_dirs = project["tool"]["setuptools"].get("package-dir", {}).values()
    where.mkdir(parents=True)
    for name in sorted({d.split("/")[0] for d in package_dirs}):
        shutil.copytree(
            source / name, where / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for name in ("pyproject.toml", str(project["project"].get("readme", "README.md"))):
        shutil.copy2(source / name, where / name)
    return where


def runtime_venv(where: Path, source: Path = ROOT) -> Path:
    """A fresh venv in `where` with a plain `pip install` of `source` (no extras); its python."""
    tree = source_copy(source, where / "src")
    venv.EnvBuilder(with_pip=True, clear=True).create(where / "venv")
    python = where / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-qq", "--disable-pip-version-check", str(tree)],
        check=True,
    )
    return python


def report(licences: list[Licence]) -> int:
    width = max(len(f"{lic.name} {lic.version}") for lic in licences)
    for lic in licences:
        mark = {"ok": " ", "weak copyleft": "~", "copyleft": "!", "unknown": "?"}[lic.verdict]
        print(f"{mark} {f'{lic.name} {lic.version}':<{width}}  {lic.licence}  [{lic.verdict}]")
    refused = [lic for lic in licences if lic.refused]
    if refused:
        names = ", ".join(f"{lic.name} ({lic.licence})" for lic in refused)
        print(f"check-licenses: refused in the runtime set: {names}", file=sys.stderr)
        return 1
    print(f"check-licenses: {len(licences)} distributions, no copyleft in the runtime set")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, help="check this venv instead of building one")
    parser.add_argument("--source", type=Path, default=ROOT, help="what to `pip install`")
    args = parser.parse_args(argv)
    if args.venv is not None:
        return report(classify(installed(args.venv / "bin" / "python")))
    with tempfile.TemporaryDirectory(prefix="roomcast-licences-") as tmp:
        print(f"check-licenses: pip install {args.source} into a fresh venv (no extras)")
        python = runtime_venv(Path(tmp), args.source)
        return report(classify(installed(python)))


if __name__ == "__main__":
    sys.exit(main())
