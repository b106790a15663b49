# hostwatch-server %postun ($1: 0 on erase, 1 on upgrade). The store in /var/lib/hostwatch-server
# (every host's history, findings, credentials) is kept even on erase: delete it by hand.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
  systemctl try-restart hostwatch.service >/dev/null 2>&1 || :
fi
