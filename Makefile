# The two commands (README): `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.DEFAULT_GOAL := help
SERVICES := scripts/services.sh
ENV := eval "$$($(SERVICES) env)"
DEMO_ROWS ?= 10000
DEMO_KEY ?= dev:dev-key-change-me-0001

.PHONY: help run test services stop clean lint bench

help:
	@echo "make run    # local MariaDB + Redis, migrate, seed $(DEMO_ROWS) demo rows, serve on :8080"
	@echo "make test   # local MariaDB + Redis, then the whole test suite (Rust, then the Node and Python clients)"

services:
	@$(SERVICES) start

run: services
	cargo build --release
	@$(ENV); ./target/release/middleway migrate
	@$(ENV); rows=$$(mariadb -N -h127.0.0.1 -P13306 -umiddleway -pmiddleway middleway -e 'SELECT COUNT(*) FROM transcriptions'); \
	  if [ "$$rows" -lt "$(DEMO_ROWS)" ]; then ./target/release/middleway seed --rows $(DEMO_ROWS); fi
	@echo
	@echo "Try it (in another terminal):"
	@echo "  curl -s -H 'Authorization: Bearer $(lastword $(subst :, ,$(DEMO_KEY)))' http://127.0.0.1:8080/transcriptions/42"
	@echo "  curl -s -H 'Authorization: Bearer $(lastword $(subst :, ,$(DEMO_KEY)))' -H 'Content-Type: application/json' \\"
	@echo "       -d '{\"op\":\"acquire\",\"name\":\"device-42\",\"wait_ms\":5000}' http://127.0.0.1:8080/locks"
	@echo "  curl -s http://127.0.0.1:9090/metrics | head"
	@echo
	@$(ENV); API_KEYS=$(DEMO_KEY) LOG_FORMAT=pretty BIND_ADDR=127.0.0.1:8080 ADMIN_BIND_ADDR=127.0.0.1:9090 \
	  exec ./target/release/middleway serve

test: services
	@command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
	@# moto's STS server: the AWS IAM tests verify tokens against it.
	@command -v moto_server >/dev/null 2>&1 && python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q 'moto[server]>=5'
	@$(ENV); ulimit -n 65536 2>/dev/null || true; cargo nextest run --workspace --all-targets --no-fail-fast
	@clients/test.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo fmt --manifest-path bench/lockcheck/Cargo.toml -- --check
	cargo clippy --release --all-targets --manifest-path bench/lockcheck/Cargo.toml --target-dir target -- -D warnings
	cargo test --release --manifest-path bench/lockcheck/Cargo.toml --target-dir target -q

stop:
	@$(SERVICES) stop

clean:
	@$(SERVICES) clean
