"""`roomcast bench`: fan-out, latency, joins and memory, measured side by side with a
python-socketio peer (docs/performance.md).

Modules: `stats` (histograms, summaries, ratios: pure), `scenarios` (presets and the client
plan: pure), `wsclient` (a minimal WebSocket client for the load generator), `worker` (a load
generator process), `deploy` (starting, monitoring and removing the systems under test),
`report` (table, JSON, plots) and `runner` (one run, from the command line's options).

Only `roomcast bench` loads any of it: the services never import this package, and its
third-party dependencies are the `bench` extra. This module imports nothing but the standard
library, so `missing_dependencies()` can say what to install before anything fails to import.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "pip install 'roomcast[bench]'"

# import name -> distribution, for every package the `bench` extra installs
_EXTRA = {
    "psutil": "psutil",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "socketio": "python-socketio",
    "uvicorn": "uvicorn",
    "secantus": "secantusdb",
}


def missing_dependencies() -> list[str]:
    """The distributions of the `bench` extra that this interpreter cannot import."""
    return [dist for module, dist in _EXTRA.items() if importlib.util.find_spec(module) is None]
