#!/usr/bin/env bash
# Builds the Kafka-protocol broker the tests use: tansu (crates.io) with two fixes to its
# consumer-group coordinator, into $1 (its bin/tansu). Called by scripts/install-test-deps.sh.
#
# tansu 0.6.0's group coordinator does not recover from a member that dies (seen with `roost
# score` instances killed by SIGKILL): a member evicted by another's heartbeat leaves the group
# "formed", so the survivors keep their old assignment and the dead member's partitions are never
# handed out again; a leader evicted that way stays recorded as leader, so the group waits for it
# for ever; and a member that joins while the dead leader is still listed gets an empty
# assignment once it is evicted. 0.6.0-group-leader.patch makes the group re-form after an
# eviction, drops an evicted leader, and sends a follower back to rejoin when there is no leader,
# as Kafka's coordinator does. Everything else is tansu as published.
#   build.sh --name   prints the cache directory's name (changes with this script and the patch)
set -euo pipefail
VERSION=0.6.0
FEATURES=dynostore,libsql
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = --name ]; then
  echo "tansu-$VERSION-$(cat "$0" "$HERE/$VERSION-group-leader.patch" | sha256sum | cut -c1-12)"
  exit 0
fi
DEST=$1
WORK="$DEST.build"
rm -rf "$WORK"
mkdir -p "$WORK"
# The published crates, checked against crates.io's index checksums.
fetch() { # name sha256
  curl -fsSL --retry 3 -o "$WORK/$1.crate" "https://static.crates.io/crates/$1/$1-$VERSION.crate"
  echo "$2  $WORK/$1.crate" | sha256sum --check --quiet
  tar xzf "$WORK/$1.crate" -C "$WORK"
  mv "$WORK/$1-$VERSION" "$WORK/$1"
}
fetch tansu 4fdd85473ec265140488cf8d55e82b844f5c051c8916fabdd4a71156ac053f6d
fetch tansu-broker 93c1e91b40c2a706dfdbe9a795c08c70918c874ad23f6e0e87564cc0a180e720
patch --quiet -p1 -d "$WORK/tansu-broker" < "$HERE/$VERSION-group-leader.patch"
printf '\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker" }\n' >> "$WORK/tansu/Cargo.toml"
# the published Cargo.lock pins every other dependency; the target dir outlives a failed try
CARGO_TARGET_DIR="$DEST.target" cargo build --quiet --release --manifest-path "$WORK/tansu/Cargo.toml" \
  --features "$FEATURES" --bin tansu
mkdir -p "$DEST/bin"
cp "$DEST.target/release/tansu" "$DEST/bin/tansu.new"
mv "$DEST/bin/tansu.new" "$DEST/bin/tansu"
rm -rf "$WORK" "$DEST.target"
