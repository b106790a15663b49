# hostwatch-agent %preun ($1: 0 on erase, 1 on upgrade).
if [ "$1" -eq 0 ]; then
  systemctl disable --now hostwatch-agent.service >/dev/null 2>&1 || :
fi
