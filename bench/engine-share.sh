#!/usr/bin/env bash
# How a lock pair's service CPU splits between the lock engine (with its Redis
# calls) and everything around it (HTTP, middleware, authentication, JSON,
# validation, metrics, the response): the current tree against the same tree
# with bench/patches/no-engine.patch, whose POST /locks answers acquire and
# release with a constant grant without calling the engine. Both under the
# same load (bench/lock-cpu.sh: 30,000 pairs on 1,000 names), builds
# alternating, ROUNDS rounds (2 by default) at 10, 64 and 250 callers.
# The patched build is a measuring stick: it is built in a worktree under
# .local/ and never leaves it.
#   bench/engine-share.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "engine-share: $*" >&2; }
mkdir -p .local
log "building (release): the current tree, then the same tree without the engine"
# Both trees build in the same target dir (see bench/run.sh locks: the package
# is cleaned before each build, or cargo may keep the other tree's binary).
cargo clean --release -q -p middleway
cargo build --release -q --bin middleway
cargo build --release -q --manifest-path bench/Cargo.toml --target-dir target
cp target/release/middleway .local/middleway-with-engine
rm -rf .local/no-engine && git worktree prune
git worktree add --detach .local/no-engine HEAD >/dev/null
git diff HEAD -- src | git -C .local/no-engine apply --allow-empty
git -C .local/no-engine apply "$root/bench/patches/no-engine.patch"
cargo clean --release -q -p middleway
(cd .local/no-engine && cargo build --release -q --bin middleway --target-dir "$root/target")
cp target/release/middleway .local/middleway-no-engine
git worktree remove --force .local/no-engine
# target/release/middleway is the current tree's again.
cp .local/middleway-with-engine target/release/middleway
for round in $(seq 1 "${ROUNDS:-2}"); do
  for callers in 10 64 250; do
    for build in with-engine no-engine; do
      printf '%-12s ' "$build"
      bench/lock-cpu.sh ".local/middleway-$build" "$callers" 2>&1 | sed -n 's/^middleway //p'
    done
  done
done
