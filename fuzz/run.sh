#!/bin/sh
# Runs every fuzz target for SECONDS each (default 60), from seeds of real inputs: a snapshot of
# this machine, the shipped baselines, the example agent configuration. Needs the nightly
# toolchain; installs cargo-fuzz if it is missing. A crash leaves its input in
# fuzz/artifacts/TARGET/; the run goes on with the other targets and exits 1 at the end, naming
# the targets that crashed.
set -eu
cd "$(dirname "$0")"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
mkdir -p corpus/report corpus/enroll corpus/baseline corpus/agent_config corpus/probe_answers
if [ -x ../target/release/hostwatch-agent ]; then
  HOSTWATCH_CLOUD_PROVIDER=none ../target/release/hostwatch-agent snapshot > corpus/report/snapshot.json || true
fi
cp ../packaging/baselines/*.toml corpus/baseline/
cp ../packaging/config/agent.toml corpus/agent_config/
printf '{"enroll_secret":"hwe_x","host":{"hostname":"h","machine_id":"m","os":"","kernel":"","arch":""},"agent":{"version":"0.1.0","interval_secs":10,"started_at":"2026-01-01T00:00:00Z","coverage":{"state":"full"}}}' > corpus/enroll/seed.json
crashed=""
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
printf '+PONG\r\n$20\r\nredis_version:7.0.15\r\n' > corpus/probe_answers/redis
printf 'STAT pid 1\r\nSTAT version 1.6.18\r\nEND\r\n' > corpus/probe_answers/memcached
for target in report enroll baseline agent_config probe_answers; do
  echo "== $target, ${seconds}s"
  if cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=262144 >"$log" 2>&1; then
    tail -n 1 "$log"
  else
    grep -E 'panicked at|ERROR: libFuzzer|Test unit written' "$log" || tail -n 20 "$log"
    crashed="$crashed $target"
  fi
done
if [ -n "$crashed" ]; then
  echo "crashed:$crashed (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "no crash in any target"
