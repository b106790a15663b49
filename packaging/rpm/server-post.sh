# hostwatch-server %post ($1: 1 on install, 2 on upgrade).
install -d -m 0700 -o hostwatch -g hostwatch /var/lib/hostwatch-server
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
  systemctl enable --now hostwatch.service >/dev/null 2>&1 || :
fi
