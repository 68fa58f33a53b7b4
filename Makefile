# Parity Server. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SRC     = src tests bench
COMPOSE ?= docker compose

.DEFAULT_GOAL := help
.PHONY: help deps build run test clean fmt imports format lint format-lint check-format \
        install-lint-tools watch install uninstall docker-build docker-up docker-down \
        docker-logs docker-clean docker-ps docker-exec contracts dev-chain demo-llm

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-20s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip

deps: $(BIN)/python ## Create .venv and install the server with its dev tools
	$(BIN)/pip install -q -e ".[dev]"

build: deps ## Build a wheel and sdist into dist/
	$(BIN)/pip install -q build
	$(BIN)/python -m build

run: deps ## Start the server on the embedded default (SQLite under ~/.parity)
	$(BIN)/parity-server server

demo-llm: deps ## A local LLM network, offline: llama.cpp + SmolLM2, server, runner, one prompt (Ctrl-C stops)
	$(BIN)/python scripts/demo_llm.py $(DEMO_LLM_ARGS)

test: ## Everything: venv, install, lint, PostgreSQL, all tests on SQLite, db tests also on PostgreSQL
	bash scripts/test.sh

contracts: ## Compile contracts/*.sol (npm solc, offline) into src/parity/chain/artifacts
	cd contracts && (npm ci --no-audit --no-fund --ignore-scripts || npm install --no-audit --no-fund --ignore-scripts)
	cd contracts && node compile.js

dev-chain: deps ## Local chain: anvil + our contracts, addresses written to .env (Ctrl-C stops)
	@test -d contracts/node_modules || $(MAKE) --no-print-directory contracts
	$(BIN)/parity-server dev-chain

clean: ## Remove build outputs and caches (keeps .venv)
	rm -rf build dist *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -exec rm -rf {} +

fmt: format ## Alias of format

imports: ## Sort imports
	$(BIN)/ruff check --select I --fix $(SRC)

format: ## Format the code
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --select I --fix $(SRC)

lint: ## ruff, mypy --strict on src/, import-linter layering contracts
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy
	$(BIN)/lint-imports

format-lint: format lint ## Format, then lint

check-format: ## Fail if formatting would change anything
	$(BIN)/ruff format --check $(SRC)

install-lint-tools: deps ## Install ruff, mypy and import-linter (part of the dev extra)

watch: deps ## Run the server and restart it when the code changes (on SERVER_HOST:SERVER_PORT)
	@bind="$$($(BIN)/python -c 'from parity.config import print_bind_address; print_bind_address()')" || exit $$?; \
	set -- $$bind; \
	exec $(BIN)/uvicorn --factory parity.asgi:create --reload --reload-dir src --host "$$1" --port "$$2"

# A virtual environment of its own (pip --user is refused by PEP 668 on Debian 12 / Ubuntu
# 23.04+), with the two commands linked into $(PREFIX)/bin, ~/.local/bin by default.
PREFIX ?= $(HOME)/.local
INSTALL_VENV = $(PREFIX)/share/parity-server

install: ## Install parity-server and parity-runner for this user (~/.local/bin, own venv)
	$(PYTHON) -m venv $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/python -m pip install -q -U pip
	$(INSTALL_VENV)/bin/python -m pip install -q .
	mkdir -p $(PREFIX)/bin
	ln -sf $(INSTALL_VENV)/bin/parity-server $(INSTALL_VENV)/bin/parity-runner $(PREFIX)/bin/
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; \
	  *) echo "installed into $(PREFIX)/bin, which is not on PATH: add it to PATH";; esac

uninstall: ## Uninstall the commands
	rm -f $(PREFIX)/bin/parity-server $(PREFIX)/bin/parity-runner
	rm -rf $(INSTALL_VENV)

docker-build: ## Build the image
	$(COMPOSE) build

docker-up: ## Start server and PostgreSQL in the background
	$(COMPOSE) up -d

docker-down: ## Stop them
	$(COMPOSE) down

docker-logs: ## Follow the logs
	$(COMPOSE) logs -f

docker-clean: ## Stop them and remove volumes and images
	$(COMPOSE) down -v --rmi local

docker-ps: ## List the containers
	$(COMPOSE) ps

docker-exec: ## Open a shell in the server container
	$(COMPOSE) exec server /bin/sh
