#!/usr/bin/env bash
# CI's package check, run by .ci/run after the tests, as root, on a throwaway machine: the one
# place where hostwatch's own packages are installed on the machine itself (and purged after).
#
#  1. shellcheck on every script, cloud-init schema on the user-data examples, packer validate
#     (syntax) on the AMI template and its IMDSv2 requirement; packaging/build.sh builds the portable binaries once and the
#     .deb and .rpm packages from them (checking the newest glibc they need);
#  2. the .rpm packages inspected: files, config files, scripts, requirements;
#  3. both .deb packages installed: versions, the collector's user, modes, the agent skipped
#     until configured, the collector's configuration checked; systemd-analyze verify (any
#     warning fails) and security exposure within the targets on the installed units;
#  4. the collector started as its unit starts it (its user, its configuration, over TLS), then
#     install.sh with four variables from a purged agent, the agent's unit emulated (systemd is
#     not PID 1 here: its ExecCondition, then its ExecStart with its environment), and the host
#     online at the collector: the time it took is printed;
#  5. an upgrade of both keeps their configuration and the agent's identity;
#  6. remove keeps the collector's store, purge leaves nothing behind.
#
# Prints the figures the roll-out issue asks for: package sizes, the binaries' newest glibc,
# each unit's exposure, and the time from install.sh to the host online.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

say() { echo "package check: $*"; }
fail() { echo "package check: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it installs the packages)"

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  dpkg -P hostwatch-agent hostwatch-server >/dev/null 2>&1 || true
  rm -rf /etc/hostwatch/tls "$work"
}
trap cleanup EXIT

# 1. Lint and build.
say "shellcheck"
shellcheck packaging/install.sh packaging/build.sh packaging/check.sh packaging/debian/*/*
shellcheck -s sh packaging/rpm/*.sh
say "cloud-init schema"
for f in packaging/cloud-init/*.yaml; do
  cloud-init schema --config-file "$f" >/dev/null || fail "cloud-init schema refuses $f"
done
say "packer validate -syntax-only"
# Debian's Packer 1.6 knows neither required_plugins nor a full validate of the newer plugin
# blocks: the template is checked alone, syntax only; plugins.pkr.hcl is for Packer >= 1.7.
packer validate -syntax-only packaging/packer/hostwatch-ami.pkr.hcl >/dev/null \
  || fail "packer refuses packaging/packer/hostwatch-ami.pkr.hcl"
grep -Eq '^\s*http_tokens\s*=\s*"required"' packaging/packer/hostwatch-ami.pkr.hcl \
  || fail "the Packer template does not require IMDSv2 (http_tokens = \"required\")"
for step in "hostwatch-agent reset-identity" "truncate -s 0 /etc/machine-id" "hostwatch-agent bake"; do
  grep -q "$step" packaging/packer/hostwatch-ami.pkr.hcl || fail "the Packer template does not run: $step"
done
packaging/build.sh
pkgs="$repo/target/packages"
version="$(dpkg-deb -f "$pkgs"/hostwatch-agent_*.deb Version)"
agent_deb="$(ls "$pkgs"/hostwatch-agent_*.deb)"
server_deb="$(ls "$pkgs"/hostwatch-server_*.deb)"

# 2. rpm: what each holds and does.
for name in hostwatch-agent hostwatch-server; do
  rpm_file="$(ls "$pkgs/$name"-*.rpm)"
  files="$(rpm -qpl "$rpm_file")"
  flags="$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm_file")"
  scripts="$(rpm -qp --scripts "$rpm_file")"
  requires="$(rpm -qpR "$rpm_file")"
  case "$name" in
    hostwatch-agent) bin=/usr/bin/hostwatch-agent; conf=/etc/hostwatch/agent.toml; unit=hostwatch-agent.service ;;
    *) bin=/usr/bin/hostwatch; conf=/etc/hostwatch/server.toml; unit=hostwatch.service ;;
  esac
  grep -qx "$bin" <<<"$files" || fail "$rpm_file lacks $bin"
  grep -qx "/usr/lib/systemd/system/$unit" <<<"$files" || fail "$rpm_file lacks its unit"
  grep -qx "cn $conf" <<<"$flags" || fail "$rpm_file: $conf is not %config(noreplace): $flags"
  grep -q "systemctl enable --now $unit" <<<"$scripts" || fail "$rpm_file does not enable $unit"
  grep -q "GLIBC_2.28" <<<"$requires" || fail "$rpm_file does not require glibc 2.28"
  if grep -Eq 'GLIBC_2\.(29|[3-9][0-9])' <<<"$requires"; then
    fail "$rpm_file requires a glibc newer than 2.28: $requires"
  fi
  say "$(basename "$rpm_file"): $(wc -l <<<"$files") files, $conf noreplace, scripts enable $unit"
done
rpm -qp --scripts "$pkgs"/hostwatch-server-*.rpm | grep -q "useradd -r" || fail "the server rpm creates no system user"

# 3. Install both debs.
dpkg -P hostwatch-agent hostwatch-server >/dev/null 2>&1 || true
say "dpkg -i $(basename "$agent_deb") $(basename "$server_deb")"
dpkg -i "$agent_deb" "$server_deb"
hostwatch-agent --version | grep -q "${version%-*}" || fail "hostwatch-agent --version: $(hostwatch-agent --version)"
hostwatch --version | grep -q "${version%-*}" || fail "hostwatch --version: $(hostwatch --version)"
getent passwd hostwatch >/dev/null || fail "no hostwatch system user"
[ "$(stat -c '%U:%G %a' /etc/hostwatch/server.toml)" = "root:hostwatch 640" ] \
  || fail "server.toml is $(stat -c '%U:%G %a' /etc/hostwatch/server.toml), not root:hostwatch 640"
[ "$(stat -c '%a' /etc/hostwatch/agent.toml)" = 600 ] || fail "agent.toml is not 0600"
[ "$(stat -c '%U %a' /var/lib/hostwatch-server)" = "hostwatch 700" ] || fail "/var/lib/hostwatch-server is not hostwatch's, 0700"
set +e; hostwatch-agent check >/dev/null; rc=$?; set -e
[ "$rc" = 1 ] || fail "an unconfigured agent's check exits $rc, not 1 (skip)"
hostwatch serve --check --config /etc/hostwatch/server.toml

units=(/usr/lib/systemd/system/hostwatch-agent.service /usr/lib/systemd/system/hostwatch.service)
verify="$(systemd-analyze verify "${units[@]}" 2>&1)" || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify warns: $verify"
say "systemd-analyze verify: clean"
for u in "${units[@]}"; do
  exposure="$(systemd-analyze security --offline=true "$u" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
  case "$(basename "$u")" in
    hostwatch.service) limit=1.5 ;;
    *) limit=3.5 ;;
  esac
  [ -n "$exposure" ] || fail "no exposure level for $u"
  python3 -c "import sys; sys.exit(0 if $exposure <= $limit else 1)" || fail "$(basename "$u") exposure $exposure > $limit"
  say "$(basename "$u"): exposure $exposure (target <= $limit)"
done

# 4. The collector as its unit runs it, over TLS; then install.sh brings an agent online.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
tls=/etc/hostwatch/tls
install -d -m 0750 -g hostwatch "$tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=check CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$tls/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/ext" -out "$tls/server.pem" 2>/dev/null
chgrp hostwatch "$tls/server.key" "$tls/server.pem"
chmod 0640 "$tls/server.key" "$tls/server.pem"
cat >> /etc/hostwatch/server.toml <<EOF

# Added by the package check.
listen = "127.0.0.1:$port"

[tls]
cert = "$tls/server.pem"
key = "$tls/server.key"
EOF
hostwatch serve --check --config /etc/hostwatch/server.toml >/dev/null
server_conf_sum="$(sha256sum /etc/hostwatch/server.toml)"

# A unit's command lines, as systemd would run them (its Environment= lines included).
unit_line() { sed -n "s/^$2=//p" "$1" | head -n 1; }
unit_env() { sed -n 's/^Environment=//p' "$1"; }

server_unit=/usr/lib/systemd/system/hostwatch.service
user="$(unit_line "$server_unit" User)"
read -r -a server_cmd <<<"$(unit_line "$server_unit" ExecStart)"
mapfile -t server_env < <(unit_env "$server_unit")
(cd / && exec env -i "${server_env[@]}" setpriv --reuid="$user" --regid="$user" --clear-groups \
  "${server_cmd[@]}") > "$work/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS --cacert "$work/ca.pem" "https://localhost:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS --cacert "$work/ca.pem" "https://localhost:$port/healthz" >/dev/null || fail "the collector did not come up: $(cat "$work/collector.log")"
[ -f /var/lib/hostwatch-server/hostwatch.db ] || fail "the collector's store is not in /var/lib/hostwatch-server"
[ "$(stat -c %U /var/lib/hostwatch-server/hostwatch.db)" = "$user" ] || fail "the store is not owned by $user"

agent_unit=/usr/lib/systemd/system/hostwatch-agent.service
cli=(hostwatch --server "https://localhost:$port" --ca-cert "$work/ca.pem" --token-file /var/lib/hostwatch-server/admin-token)
# The ids of the hosts online now, one per line.
online_ids() {
  "${cli[@]}" hosts -o json 2>/dev/null \
    | python3 -c 'import json,sys; [print(h["id"]) for h in json.load(sys.stdin) if h["status"] == "online"]' 2>/dev/null || true
}
# HOSTWATCH_CHECK_ROUNDS=5 measures the install five times (each from a purged agent, each a new
# host); the last round's agent goes on to the checks below.
rounds="${HOSTWATCH_CHECK_ROUNDS:-1}"
for round in $(seq "$rounds"); do
  if [ -n "${agent_pid:-}" ]; then kill -TERM "$agent_pid"; wait "$agent_pid" || true; fi
  dpkg -P hostwatch-agent >/dev/null
  known="$(online_ids)"
  say "install.sh with four variables (package, server, enroll secret, CA), round $round of $rounds"
  started="$(date +%s.%N)"
  HOSTWATCH_PACKAGE="$agent_deb" \
  HOSTWATCH_SERVER="https://localhost:$port" \
  HOSTWATCH_ENROLL_SECRET="$(cat /var/lib/hostwatch-server/enroll-secret)" \
  HOSTWATCH_CA_CERT_PEM="$(cat "$work/ca.pem")" \
    sh packaging/install.sh >"$work/install.log" 2>&1 || fail "install.sh: $(cat "$work/install.log")"
  read -r -a condition <<<"$(unit_line "$agent_unit" ExecCondition)"
  read -r -a agent_cmd <<<"$(unit_line "$agent_unit" ExecStart)"
  mapfile -t agent_env < <(unit_env "$agent_unit")
  env_file="$(unit_line "$agent_unit" EnvironmentFile)"
  env_file="${env_file#-}"
  if [ -f "$env_file" ]; then mapfile -t -O "${#agent_env[@]}" agent_env < <(grep -v '^#' "$env_file"); fi
  (cd / && env -i "${agent_env[@]}" "${condition[@]}" >/dev/null) || fail "the agent's ExecCondition refuses what install.sh wrote"
  (cd / && exec env -i "${agent_env[@]}" "${agent_cmd[@]}") > "$work/agent.log" 2>&1 &
  agent_pid=$!
  pids+=("$agent_pid")
  online=""
  for _ in $(seq 600); do
    if online_ids | grep -qvxF -- "${known:-none}"; then
      online="$(date +%s.%N)"
      break
    fi
    sleep 0.1
  done
  [ -n "$online" ] || fail "the host never came online: $(tail -n 20 "$work/agent.log")"
  say "install.sh to the host online over TLS: $(python3 -c "print(f'{$online - $started:.2f}')") s"
done
doctor="$(env -i PATH="$PATH" hostwatch-agent doctor)" || fail "doctor finds the installed agent unable to work: $doctor"
say "hostwatch-agent doctor: $(tail -n 1 <<<"$doctor")"
kill -TERM "$agent_pid"; wait "$agent_pid" || true
[ -f /var/lib/hostwatch/node-key ] || fail "the agent kept no node key"
agent_conf_sum="$(sha256sum /etc/hostwatch/agent.toml)"
key_sum="$(sha256sum /var/lib/hostwatch/node-key)"

# 5. Upgrade: a new revision of both; configuration and identity kept, no questions asked.
upgrade="$work/upgrade"
mkdir -p "$upgrade"
for crate in agent server; do
  cargo deb --no-build --no-strip --target x86_64-unknown-linux-gnu -p "hostwatch-$crate" \
    --deb-revision 2 --output "$upgrade/" >/dev/null
done
dpkg -i "$upgrade"/hostwatch-agent_*.deb "$upgrade"/hostwatch-server_*.deb </dev/null
[ "$(dpkg-query -W -f='${Version}' hostwatch-agent)" = "${version%-*}-2" ] || fail "the agent was not upgraded"
[ "$(sha256sum /etc/hostwatch/agent.toml)" = "$agent_conf_sum" ] || fail "the upgrade changed agent.toml"
[ "$(sha256sum /etc/hostwatch/server.toml)" = "$server_conf_sum" ] || fail "the upgrade changed server.toml"
[ "$(sha256sum /var/lib/hostwatch/node-key)" = "$key_sum" ] || fail "the upgrade changed the agent's identity"
[ "$(stat -c '%U:%G %a' /etc/hostwatch/server.toml)" = "root:hostwatch 640" ] || fail "the upgrade changed server.toml's owner or mode"
say "upgrade to ${version%-*}-2: configuration and identity kept"

# 6. Remove keeps the collector's store; purge leaves nothing.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
dpkg -r hostwatch-server
[ -f /var/lib/hostwatch-server/hostwatch.db ] || fail "removing the collector deleted its store"
rm -rf "$tls"
dpkg -P hostwatch-agent hostwatch-server
for gone in /usr/bin/hostwatch /usr/bin/hostwatch-agent /etc/hostwatch /var/lib/hostwatch \
  /var/lib/hostwatch-server "${units[@]}" /usr/lib/sysusers.d/hostwatch-server.conf \
  /etc/systemd/system/multi-user.target.wants/hostwatch-agent.service; do
  if [ -e "$gone" ] || [ -L "$gone" ]; then fail "$gone is left after purge"; fi
done
say "purge: nothing left (the system user hostwatch stays, as Debian leaves system users)"
say "passed"
