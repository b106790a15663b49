#!/bin/sh
# Compiles connections.bpf.c into connections.bpf.o, the object the agent embeds (committed, so
# that the agent builds where clang is not installed). Needs clang, llvm and libbpf's headers
# (Debian 12: apt install clang llvm libbpf-dev).
#
#   agent/bpf/build.sh           rebuild the object; commit it with the source
#   agent/bpf/build.sh --check   fail if the committed object is not what the source compiles to
#                                (CI runs this)
set -eu
cd "$(dirname "$0")"
for tool in clang llvm-strip; do
  command -v "$tool" >/dev/null || { echo "bpf: $tool not found (apt install clang llvm libbpf-dev)" >&2; exit 1; }
done
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "bpf: libbpf headers not found (apt install libbpf-dev)" >&2; exit 1; }
out=connections.bpf.o
if [ "${1:-}" = --check ]; then
  out=$(mktemp --suffix=.bpf.o)
  trap 'rm -f "$out"' EXIT
fi
# -g makes the BTF that CO-RE relocation needs; llvm-strip -g then drops the DWARF and keeps it.
# The BTF's line info names the source file: -fdebug-prefix-map makes that name relative, so the
# object is the same whichever directory the checkout is in.
clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I"/usr/include/$(uname -m)-linux-gnu" \
  -fdebug-prefix-map="$PWD"=. -Wall -Werror -c connections.bpf.c -o "$out"
llvm-strip -g "$out"
if [ "${1:-}" = --check ]; then
  cmp -s "$out" connections.bpf.o || {
    echo "bpf: connections.bpf.o is not what connections.bpf.c compiles to; run agent/bpf/build.sh and commit it" >&2
    exit 1
  }
  echo "bpf: connections.bpf.o matches its source"
fi
