#!/usr/bin/env bash
# Builds hostwatch's packages: the portable release binaries once (glibc 2.28 and newer: RHEL 8,
# Amazon Linux 2023, Ubuntu 20.04+, Debian 11+), then .deb (cargo-deb) and .rpm
# (cargo-generate-rpm) from those same binaries, into target/packages/. Checks that no binary
# needs a newer glibc than it promises.
#
# Needs: cargo-zigbuild and ziglang (`pip install cargo-zigbuild ziglang`), cargo-deb and
# cargo-generate-rpm (`cargo install --locked cargo-deb cargo-generate-rpm`); installs what is
# missing. With HOSTWATCH_NATIVE=1 the binaries are built for this machine's glibc instead (no
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

need_cargo() {
  cargo "$1" --version >/dev/null 2>&1 || { say "installing $2"; cargo install --locked "$2"; }
}
need_cargo deb cargo-deb
need_cargo generate-rpm cargo-generate-rpm

if [ "${HOSTWATCH_NATIVE:-0}" = 1 ]; then
  say "release binaries for this machine ($triple, native glibc)"
  cargo build --release --locked --target "$triple" -p hostwatch-agent -p hostwatch-server
else
  if ! command -v cargo-zigbuild >/dev/null 2>&1 || ! python3 -m ziglang version >/dev/null 2>&1; then
    say "installing cargo-zigbuild and ziglang from PyPI"
    python3 -m pip install --quiet cargo-zigbuild ziglang
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
  cargo generate-rpm --target "$triple" -p "$crate" --output "$out/"
done
say "version $version:"
for f in "$out"/*; do
  printf '  %-60s %8d KiB\n' "$(basename "$f")" "$(( $(stat -c %s "$f") / 1024 ))"
done
