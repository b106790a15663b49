# hostwatch-agent %post ($1: 1 on install, 2 on upgrade). The unit runs only once
# /etc/hostwatch/agent.toml names a collector (`hostwatch-agent check`).
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
  systemctl enable --now hostwatch-agent.service >/dev/null 2>&1 || :
fi
