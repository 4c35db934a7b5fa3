# Scoreboard tasks. `just run` and `just test` are the README's quick start.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
python := venv / "bin/python"

# Start the server (makes .venv, installs, migrates, serves on 127.0.0.1:8000)
run *ARGS: install migrate
    {{venv}}/bin/scoreboard serve {{ARGS}}

# The whole test suite against the real PostgreSQL, Redis and RabbitMQ
test *ARGS: install
    {{python}} -m pytest {{ARGS}}

# Lint and type-check
check: install
    {{venv}}/bin/ruff check scoreboard tests benchmarks
    {{venv}}/bin/mypy

# Create the database if needed and apply migrations (idempotent)
migrate: install
    {{venv}}/bin/scoreboard migrate

# Benchmarks: print figures, assert nothing
bench *ARGS: install
    {{python}} -m benchmarks {{ARGS}}

# Create .venv and install the project with its dev tools (again only when pyproject.toml changes)
install:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{python}} ]; then python3 -m venv {{venv}}; fi
    stamp={{venv}}/.installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        {{python}} -m pip install --quiet --upgrade pip
        {{python}} -m pip install --quiet -e '.[dev]'
        touch "$stamp"
    fi
