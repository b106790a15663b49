#!/usr/bin/env bash
# Builds hostwatch's packages: the portable release binaries once (glibc 2.28 and newer: RHEL 8,
# Amazon Linux 2023, Ubuntu 20.04+, Debian 11+), then .deb (cargo-deb) and .rpm
# (cargo-generate-rpm) from those same binaries, into target/packages/. Checks that no binary
# needs a newer glibc than it promises.
#
# Needs cargo-zigbuild and ziglang (from PyPI, into a virtual environment under target/),
# cargo-deb and cargo-generate-rpm (`cargo install --locked`); installs what is missing. With HOSTWATCH_NATIVE=1 the binaries are built for this machine's glibc instead (no
# zig), and the glibc check is skipped.
#
#   packaging/build.sh [--deb-revision N]
set -euo pipefail
cd "$(dirname "$0")/.."

revision=1
while [ $# -gt 0 ]; do
  case "$1" in
    --deb-revision) revision="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

triple=x86_64-unknown-linux-gnu
glibc=2.28
out=target/packages
say() { echo "packaging: $*"; }

# Pinned, so that a package built today and one built next year come from the same tools.
need_cargo() {
  cargo "$1" --version 2>/dev/null | grep -q "$3" || { say "installing $2 $3"; cargo install --locked "$2@$3"; }
}
need_cargo deb cargo-deb 3.8.0
need_cargo generate-rpm cargo-generate-rpm 0.21.1

if [ "${HOSTWATCH_NATIVE:-0}" = 1 ]; then
  say "release binaries for this machine ($triple, native glibc)"
  cargo build --release --locked --target "$triple" -p hostwatch-agent -p hostwatch-server
else
  # zig and cargo-zigbuild from PyPI, in a virtual environment of their own under target/
  # (whatever the machine's Python allows to be installed system-wide).
  if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
    venv=target/packaging-tools
    if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
      say "installing cargo-zigbuild and ziglang from PyPI into $venv"
      python3 -m venv "$venv" || { echo "packaging: python3 -m venv failed (on Debian: apt install python3-venv)" >&2; exit 1; }
      "$venv/bin/pip" install --quiet cargo-zigbuild==0.24.1 ziglang==0.17.1
    fi
    PATH="$(pwd)/$venv/bin:$PATH"
  fi
  say "portable release binaries ($triple, glibc $glibc) with cargo-zigbuild"
  cargo zigbuild --release --locked --target "$triple.$glibc" -p hostwatch-agent -p hostwatch-server
fi
bin="target/$triple/release"

# The newest glibc symbol version each binary needs: it runs on any glibc at least that new.
if [ "${HOSTWATCH_NATIVE:-0}" != 1 ]; then
  for b in hostwatch-agent hostwatch; do
    newest="$(objdump -T "$bin/$b" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)"
    if [ "$(printf '%s\n%s\n' "$newest" "$glibc" | sort -V | tail -n 1)" != "$glibc" ]; then
      echo "packaging: $b needs glibc $newest, newer than the $glibc promised" >&2
      exit 1
    fi
    say "$b needs glibc $newest at most (promised: $glibc)"
  done
fi

# Symbols too (the release profile drops only debug info): the deb and the rpm carry the same
# bytes, stripped once here.
strip "$bin/hostwatch-agent" "$bin/hostwatch"

rm -rf "$out"
mkdir -p "$out"
version="$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "hostwatch-agent"))')"
for crate in agent server; do
  cargo deb --no-build --no-strip --target "$triple" -p "hostwatch-$crate" \
    --deb-revision "$revision" --output "$out/"
  # gzip, not zstd: the payload RHEL 8's rpm reads without question.
  cargo generate-rpm --target "$triple" -p "$crate" --payload-compress gzip --output "$out/"
done
say "version $version:"
for f in "$out"/*; do
  printf '  %-60s %8d KiB\n' "$(basename "$f")" "$(( $(stat -c %s "$f") / 1024 ))"
done
