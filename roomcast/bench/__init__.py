"""`roomcast bench`: fan-out, latency, joins and memory, measured side by side with a
python-socketio peer (docs/performance.md).

Modules: `stats` (histograms, summaries, ratios: pure), `scenarios` (presets and the client
plan: pure), `wsclient` (a minimal WebSocket client for the load generator), `worker` (a load
generator process), `deploy` (starting, monitoring and removing the systems under test),
`report` (table, JSON, plots) and `runner` (one run, from the command line's options).
"""
