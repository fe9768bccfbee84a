# One entry point for developers and CI. `make test` is what the README and .ci/run use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
AMQP_HOST ?= 127.0.0.1
AMQP_PORT ?= 5672
PYTEST_ARGS ?=

.PHONY: test lint unit demo bench install broker clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e '.[test]'

# Make sure RabbitMQ answers on $(AMQP_HOST):$(AMQP_PORT); start a local one if we can.
broker:
	@if (exec 3<>/dev/tcp/$(AMQP_HOST)/$(AMQP_PORT)) 2>/dev/null; then \
	  echo "RabbitMQ reachable at $(AMQP_HOST):$(AMQP_PORT)"; \
	elif command -v rabbitmq-server >/dev/null; then \
	  echo "starting rabbitmq-server -detached"; rabbitmq-server -detached || true; \
	  for i in $$(seq 1 90); do \
	    rabbitmq-diagnostics -q check_running >/dev/null 2>&1 && \
	      (exec 3<>/dev/tcp/$(AMQP_HOST)/$(AMQP_PORT)) 2>/dev/null && { echo "RabbitMQ is up"; exit 0; }; \
	    sleep 1; \
	  done; echo "RabbitMQ did not come up within 90 s" >&2; exit 1; \
	else \
	  echo "No RabbitMQ at $(AMQP_HOST):$(AMQP_PORT) and rabbitmq-server is not installed." >&2; \
	  echo "Install it (apt-get install rabbitmq-server) or run one:" >&2; \
	  echo "  docker run -d -p 5672:5672 rabbitmq:3-management" >&2; \
	  exit 1; \
	fi

lint: install
	$(VENV)/bin/ruff check bridge tests
	$(VENV)/bin/ruff format --check bridge tests
	$(VENV)/bin/mypy

test: lint broker
	$(PY) -m pytest $(PYTEST_ARGS)

# Quick run: no chaos, no soak.
unit: install broker
	$(PY) -m pytest -m "not chaos and not soak" $(PYTEST_ARGS)

# The runtime only (no test tools: a few tens of MB instead of a few hundred).
demo: $(PY) broker
	$(PY) -m pip install -q -e .
	$(VENV)/bin/oscc-bridge demo

bench: install broker
	$(PY) tests/bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
