# Shortcuts for the scripts README names; each target is one command.
.PHONY: dev test unit integration lint format typecheck bench screenshots

dev:
	bash scripts/dev.sh

test:
	bash scripts/test.sh

unit:
	.venv/bin/python -m pytest -m unit

integration:
	bash scripts/ensure-rabbitmq.sh && .venv/bin/python -m pytest -m integration

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format:
	.venv/bin/ruff format . && .venv/bin/ruff check --fix .

typecheck:
	bash scripts/typecheck.sh

bench:
	.venv/bin/roomcast bench fanout --vs socketio --json bench/results/fanout.json --plot bench/results/fanout.png

screenshots:
	.venv/bin/python scripts/screenshots.py
