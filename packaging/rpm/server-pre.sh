# hostwatch-server %pre: the collector's system user, before its files are laid down.
getent group hostwatch >/dev/null || groupadd -r hostwatch
getent passwd hostwatch >/dev/null || useradd -r -g hostwatch -d /var/lib/hostwatch-server \
  -M -s /sbin/nologin -c "hostwatch collector" hostwatch
