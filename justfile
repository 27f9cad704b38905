# pandora-users: the front door. `just run` starts everything, `just test` runs every test.

set shell := ["bash", "-euo", "pipefail", "-c"]
set dotenv-load := false

venv := ".venv"
py := venv / "bin/python"

# List the recipes.
default:
    @just --list

# Create or update the virtualenv from the pinned lock (uv pip compile output).
sync:
    @test -x {{py}} || uv venv -q --python 3.11 {{venv}}
    uv pip sync -q --python {{py}} requirements.lock
    uv pip install -q --python {{py}} --no-deps -e .

# Re-pin every dependency after editing pyproject.toml.
lock:
    uv pip compile -q pyproject.toml --extra dev -o requirements.lock

# Start the whole service (embedded PostgreSQL and Valkey when nothing is configured).
# GLIBC_TUNABLES as in the container image: huge pages for each Argon2 hash's 64 MiB (see the Containerfile).
run *ARGS: sync
    GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}" {{venv}}/bin/pandora-users serve {{ARGS}}

# Create or upgrade the database schema.
migrate *ARGS: sync
    {{venv}}/bin/pandora-users migrate {{ARGS}}

# Run all tests (real PostgreSQL/Redis from DATABASE_URL/REDIS_URL, else embedded servers).
test *ARGS: sync
    {{venv}}/bin/pytest -q -p no:cacheprovider {{ARGS}}

# Lint: ruff (style and bugs) and mypy (strict on pandora_users).
lint: sync
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .
    {{venv}}/bin/mypy

# Format the code.
fmt: sync
    {{venv}}/bin/ruff format .
    {{venv}}/bin/ruff check --fix .

# Regenerate the JSON Schemas of the integration events (schema/events/); a test fails on drift.
schemas: sync
    {{py}} -m projections.schemas

# Regenerate the gRPC code in rpc/gen from schema/proto/pandora/user/v1/user.proto; a test fails on drift.
proto: sync
    {{py}} -m rpc.protogen

# Container and Kubernetes checks: hadolint, every overlay rendered and validated offline, dashboard and alerts.
ops-check: sync
    {{venv}}/bin/pytest -q -p no:cacheprovider tests/unit/test_container_and_k8s.py

# Print the Kubernetes manifests of an overlay (dev, sandbox, audit, prod) without kubectl.
ops-render ENV: sync
    {{py}} -m tests.unit.k8s_render ops/k8s/overlays/{{ENV}}

# Read-side benchmark: projection lag under a steady write load, rebuild rate, forwarder throughput.
bench-read-side *ARGS: sync
    {{py}} bench/projections_bench.py {{ARGS}}

# Load benchmark of the whole service beside its references, one table (issue #8); --quick, --only a,b, --out FILE.
# GLIBC_TUNABLES as in the container image (huge pages for Argon2's 64 MiB), for the service and the references alike.
bench *ARGS: sync
    @command -v wrk >/dev/null && command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk nghttp2-client)
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 {{py}} bench/run.py {{ARGS}}
