# hostwatch-agent %postun ($1: 0 on erase, 1 on upgrade). rpm has no purge: an erase removes the
# agent's state (node key, file manifest, spool) too; a modified agent.toml is kept as .rpmsave.
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
  systemctl try-restart hostwatch-agent.service >/dev/null 2>&1 || :
else
  rm -rf /var/lib/hostwatch
fi
