# Scoreboard tasks. `just run` and `just test` are the README's quick start.
set shell := ["bash", "-euo", "pipefail", "-c"]

# Absolute, so that `just --justfile <checkout>/justfile --working-directory <dir> run` serves
# from another directory (embedded mode keeps its data in ./var of the working directory).
root := justfile_directory()
venv := root / ".venv"
python := venv / "bin/python"

# Serve on 127.0.0.1:8000 (installs, migrates); embedded in ./var unless the 3 backend URLs are set
run *ARGS: install migrate
    {{venv}}/bin/scoreboard serve {{ARGS}}

# The whole test suite: the contract suites against the real services and the embedded backends.
# Most tests wait on servers rather than compute, so they run in parallel processes
# (SCOREBOARD_TEST_WORKERS, default 4; each has its own databases, prefixes and vhost); the timed
# fault drills (marker `alone`) run after them with the machine to themselves.
test *ARGS: install
    #!/usr/bin/env bash
    set -euo pipefail
    selected() { "$@" || [ $? -eq 5 ]; }  # 5: ARGS selected none of that part's tests
    selected {{python}} -m pytest -n "${SCOREBOARD_TEST_WORKERS:-4}" --dist loadfile -m "not alone" {{ARGS}}
    selected {{python}} -m pytest -m alone {{ARGS}}

# The fast tier: the application on the embedded backends through Quart's test client, no services
test-fast *ARGS: install
    {{python}} -m pytest tests/fast {{ARGS}}

# Lint, format check and type-check
check: install
    {{venv}}/bin/ruff check scoreboard tests benchmarks
    {{venv}}/bin/ruff format --check scoreboard tests benchmarks
    {{venv}}/bin/mypy

# Create the database if needed and apply migrations (idempotent; SQLite in embedded mode)
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
    if [ ! -f "$stamp" ] || [ {{root}}/pyproject.toml -nt "$stamp" ]; then
        {{python}} -m pip install --quiet --upgrade pip
        {{python}} -m pip install --quiet -e '{{root}}[dev]'
        touch "$stamp"
    fi
