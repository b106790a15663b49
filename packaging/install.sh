#!/bin/sh
# hostwatch agent installer, for EC2 user-data, Azure custom data, or a shell:
#
#   HOSTWATCH_PACKAGE=https://repo.example/hostwatch-agent_0.1.0-1_amd64.deb \
#   HOSTWATCH_PACKAGE_SHA256=<sha256 of that file> \
#   HOSTWATCH_SERVER=https://collector.example.internal:8443 \
#   HOSTWATCH_ENROLL_SECRET=hwe_... \
#   sh install.sh
#
# Installs the package (a local path, or an https URL whose SHA-256 must match), writes
# /etc/hostwatch/agent.toml (0600) from the variables below, then enables and starts the agent.
# Running it again with the same variables changes nothing; with new ones it rewrites the
# configuration and restarts the agent.
#
#   HOSTWATCH_PACKAGE          .deb or .rpm: a path, or an https:// URL       (required)
#   HOSTWATCH_PACKAGE_SHA256   its SHA-256; required for a URL, checked for a path when set
#   HOSTWATCH_SERVER           the collector's URL                              (required)
#   HOSTWATCH_ENROLL_SECRET    the enroll secret, written to /etc/hostwatch/enroll-secret (0600)
#   HOSTWATCH_ENROLL_SECRET_FILE  or a file already holding it              (one of the two)
#   HOSTWATCH_CA_CERT          a PEM file: trust only this CA for the collector
#   HOSTWATCH_CA_CERT_PEM      or the PEM text itself, written to /etc/hostwatch/ca.pem
#   HOSTWATCH_TAGS             k=v,k=v: this host's tags
#
# These are the installer's: it writes what the agent needs into its configuration and none of
# them into the agent's environment. User-data is readable by anyone on the instance who can
# reach the metadata service: give it an enroll secret that expires (`hostwatch secret create
# --expires 2h`); the agent needs the secret only to enroll.
#
# Options:
#   --root DIR   install into DIR instead of / (for tests and image builds from outside): the
#                package is unpacked there without running its scripts, the unit enabled with
#                `systemctl --root`, and nothing is started.
#   --no-start   enable the unit but do not start it.
set -eu

root=""
start=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || { echo "install.sh: --root needs a directory" >&2; exit 2; }; root="$2"; shift 2 ;;
    --root=*) root="${1#--root=}"; shift ;;
    --no-start) start=no; shift ;;
    -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "hostwatch install: $*"; }
die() { echo "hostwatch install: error: $*" >&2; exit 1; }

package="${HOSTWATCH_PACKAGE:-}"
want_sha="${HOSTWATCH_PACKAGE_SHA256:-}"
server="${HOSTWATCH_SERVER:-}"
secret="${HOSTWATCH_ENROLL_SECRET:-}"
secret_file="${HOSTWATCH_ENROLL_SECRET_FILE:-}"
ca_cert="${HOSTWATCH_CA_CERT:-}"
ca_pem="${HOSTWATCH_CA_CERT_PEM:-}"
tags="${HOSTWATCH_TAGS:-}"

[ -n "$package" ] || die "HOSTWATCH_PACKAGE is not set (a .deb or .rpm: a path or an https:// URL)"
[ -n "$server" ] || die "HOSTWATCH_SERVER is not set (the collector's URL, e.g. https://collector.example.internal:8443)"
case "$server" in
  https://*|http://*) ;;
  *) die "HOSTWATCH_SERVER must be an https:// URL (got something else)" ;;
esac
if [ -n "$secret" ] && [ -n "$secret_file" ]; then
  die "set HOSTWATCH_ENROLL_SECRET or HOSTWATCH_ENROLL_SECRET_FILE, not both"
fi
[ -n "$secret" ] || [ -n "$secret_file" ] || die "HOSTWATCH_ENROLL_SECRET (or HOSTWATCH_ENROLL_SECRET_FILE) is not set"
if [ -n "$ca_cert" ] && [ -n "$ca_pem" ]; then
  die "set HOSTWATCH_CA_CERT or HOSTWATCH_CA_CERT_PEM, not both"
fi
if [ -n "$want_sha" ]; then
  printf '%s' "$want_sha" | grep -Eq '^[0-9a-fA-F]{64}$' || die "HOSTWATCH_PACKAGE_SHA256 is not a SHA-256 (64 hex digits)"
fi

# A value written into the TOML file between double quotes: no quote, backslash or control
# character can be written there safely, so such a value is refused rather than escaped.
toml_safe() {
  case "$2" in
    *'"'*|*\\*) die "$1 must not contain a double quote or a backslash" ;;
  esac
  if printf '%s' "$2" | LC_ALL=C grep -q '[[:cntrl:]]'; then
    die "$1 must not contain control characters"
  fi
}
toml_safe HOSTWATCH_SERVER "$server"
[ -z "$secret_file" ] || toml_safe HOSTWATCH_ENROLL_SECRET_FILE "$secret_file"
[ -z "$ca_cert" ] || toml_safe HOSTWATCH_CA_CERT "$ca_cert"
[ -z "$tags" ] || toml_safe HOSTWATCH_TAGS "$tags"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT INT TERM

# The package: fetched over https only, and only kept if its SHA-256 matches.
case "$package" in
  https://*)
    [ -n "$want_sha" ] || die "HOSTWATCH_PACKAGE is a URL: HOSTWATCH_PACKAGE_SHA256 must give its SHA-256"
    command -v curl >/dev/null 2>&1 || die "curl is needed to download $package"
    file="$work/$(basename "${package%%\?*}")"
    say "downloading $package"
    curl --proto '=https' --tlsv1.2 -fsSL --retry 5 --retry-connrefused -o "$file" "$package" \
      || die "cannot download $package"
    ;;
  http://*|ftp://*) die "HOSTWATCH_PACKAGE must be a local path or an https:// URL" ;;
  *) [ -f "$package" ] || die "no package at $package"; file="$package" ;;
esac
if [ -n "$want_sha" ]; then
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  [ "$got" = "$(printf '%s' "$want_sha" | tr 'A-F' 'a-f')" ] \
    || die "$package has SHA-256 $got, not the expected $want_sha: not installed"
fi

case "$file" in
  *.deb) kind=deb ;;
  *.rpm) kind=rpm ;;
  *) die "$package is neither a .deb nor an .rpm" ;;
esac

if [ -n "$root" ]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
  say "unpacking $(basename "$file") into $root (no package scripts run)"
  if [ "$kind" = deb ]; then
    dpkg-deb -x "$file" "$root"
  else
    command -v rpm2cpio >/dev/null 2>&1 || die "rpm2cpio is needed to unpack an .rpm with --root"
    (cd "$root" && rpm2cpio "$file" | cpio -idm --quiet)
  fi
elif [ "$kind" = deb ]; then
  version="$(dpkg-deb -f "$file" Version)"
  # shellcheck disable=SC2016 # dpkg-query's format, not the shell's
  if [ "$(dpkg-query -W -f='${Status} ${Version}' hostwatch-agent 2>/dev/null || true)" = "install ok installed $version" ]; then
    say "hostwatch-agent $version is already installed"
  else
    say "installing $(basename "$file")"
    # Configuration the installer or an admin wrote is kept, whatever the package ships.
    dpkg --force-confdef --force-confold -i "$file"
  fi
else
  version="$(rpm -qp --qf '%{VERSION}-%{RELEASE}' "$file")"
  if [ "$(rpm -q --qf '%{VERSION}-%{RELEASE}' hostwatch-agent 2>/dev/null || true)" = "$version" ]; then
    say "hostwatch-agent $version is already installed"
  else
    say "installing $(basename "$file")"
    rpm -Uvh --replacepkgs "$file"
  fi
fi

etc="$root/etc/hostwatch"
install -d -m 0755 "$etc"

# Written to a temporary file in the same directory and renamed, so that a reader never sees
# half a file; mode 0600 from the start.
write_private() {
  tmp="$(mktemp "$1.XXXXXX")"
  chmod 0600 "$tmp"
  cat > "$tmp"
  mv -f "$tmp" "$1"
}

if [ -n "$secret" ]; then
  printf '%s\n' "$secret" | write_private "$etc/enroll-secret"
  secret_file=/etc/hostwatch/enroll-secret
fi
if [ -n "$ca_pem" ]; then
  printf '%s\n' "$ca_pem" | grep -q -- '-----BEGIN CERTIFICATE-----' \
    || die "HOSTWATCH_CA_CERT_PEM holds no PEM certificate"
  # awk ends the last line with one newline, whether the variable had one or not.
  printf '%s' "$ca_pem" | awk 1 | write_private "$etc/ca.pem"
  chmod 0644 "$etc/ca.pem"
  ca_cert=/etc/hostwatch/ca.pem
fi

{
  echo "# /etc/hostwatch/agent.toml: written by hostwatch's install.sh; it rewrites this file"
  echo "# whenever it runs. Every key: docs/configuration.md."
  echo "server = \"$server\""
  echo "enroll_secret_file = \"$secret_file\""
  [ -z "$ca_cert" ] || echo "ca_cert = \"$ca_cert\""
  if [ -n "$tags" ]; then
    echo
    echo "[tags]"
    old_ifs="$IFS"; IFS=','
    for pair in $tags; do
      case "$pair" in
        *=*) ;;
        *) die "HOSTWATCH_TAGS: \"$pair\" is not key=value" ;;
      esac
      key="${pair%%=*}"
      [ -n "$key" ] || die "HOSTWATCH_TAGS: \"$pair\" has an empty key"
      echo "\"$key\" = \"${pair#*=}\""
    done
    IFS="$old_ifs"
  fi
} > "$work/agent.toml"

if [ -f "$etc/agent.toml" ] && cmp -s "$work/agent.toml" "$etc/agent.toml"; then
  changed=no
else
  write_private "$etc/agent.toml" < "$work/agent.toml"
  changed=yes
  say "wrote $etc/agent.toml"
fi

# The agent checks what was written as it would at start (a missing CA or secret file, a bad
# URL): a configuration it refuses fails the install here, not silently at boot.
agent="$root/usr/bin/hostwatch-agent"
# Its environment is emptied: the installer's HOSTWATCH_* variables would override the file.
if [ -z "$root" ]; then
  env -i PATH="$PATH" "$agent" --config "$etc/agent.toml" check >/dev/null || die "the agent refuses the configuration written to $etc/agent.toml"
fi

unit=hostwatch-agent.service
if [ -n "$root" ]; then
  systemctl --root="$root" enable "$unit" >/dev/null 2>&1 || die "cannot enable $unit under $root"
  say "enabled $unit under $root (not started: --root)"
elif [ -d /run/systemd/system ]; then
  systemctl enable "$unit" >/dev/null 2>&1 || die "cannot enable $unit"
  if [ "$start" = no ]; then
    say "enabled $unit (not started: --no-start)"
  elif [ "$changed" = yes ] || ! systemctl is-active --quiet "$unit"; then
    systemctl restart "$unit" || die "$unit did not start: journalctl -u $unit"
    say "started $unit"
  else
    say "$unit is running with this configuration"
  fi
else
  say "systemd is not running here: $unit is installed and configured but not started"
fi
