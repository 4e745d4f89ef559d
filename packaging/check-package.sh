#!/usr/bin/env bash
# Installs the Debian package on this machine, checks it as an operator
# would use it, then removes and purges it and checks what is left; `.ci/run`
# runs it. Needs root and a machine without wsgate installed or an
# /etc/wsgate (it refuses otherwise). Leaves the machine as it found it
# (the package, /etc/wsgate, and the wsgate user when the package made it).
#
#   bash packaging/check-package.sh [PACKAGE.deb]   # default: build one (packaging/build-deb.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "check-package: $*"; }
fail() { echo "check-package: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i, runuser)"
dpkg-query -W -f='${Status}' wsgate 2>/dev/null | grep -q 'installed' && fail "wsgate is installed already"
[ -e /etc/wsgate ] && fail "/etc/wsgate exists already"
for tool in systemd-analyze systemd-sysusers runuser; do
  command -v "$tool" >/dev/null || fail "$tool is missing (package systemd / util-linux)"
done
deb=${1:-$(bash packaging/build-deb.sh | tail -n 1)}
[ -f "$deb" ] || fail "no package at $deb"

user_existed=no
getent passwd wsgate >/dev/null && user_existed=yes
log=$(mktemp)
cleanup() {
  dpkg --purge wsgate >/dev/null 2>&1 || true
  rm -rf /etc/wsgate
  if [ "$user_existed" = no ] && getent passwd wsgate >/dev/null; then
    userdel wsgate
    getent group wsgate >/dev/null && groupdel wsgate
  fi
  rm -f "$log"
}
trap cleanup EXIT

say "dpkg -i $deb"
dpkg -i "$deb" 2>&1 | tee "$log"
grep -q 'still has placeholders (CHANGE-ME): the service is enabled but not started' "$log" ||
  fail "postinst did not say that the unfilled service is left stopped"

say "what the package installed"
for path in /usr/bin/wsgate /usr/lib/systemd/system/wsgate.service /usr/lib/systemd/system/wsgate.socket \
  /usr/lib/systemd/system/wsgate-plain.socket /usr/lib/sysusers.d/wsgate.conf \
  /usr/share/man/man1/wsgate.1.gz /usr/share/man/man1/wsgate-check.1.gz \
  /usr/share/bash-completion/completions/wsgate /usr/share/zsh/vendor-completions/_wsgate \
  /usr/share/fish/vendor_completions.d/wsgate.fish; do
  [ -e "$path" ] || fail "$path is missing"
done
dpkg-query -W -f='${Conffiles}\n' wsgate | grep -q '^ /etc/wsgate/wsgate.toml ' || fail "wsgate.toml is not a conffile"
[ "$(getent passwd wsgate | cut -d: -f7)" = /usr/sbin/nologin ] || fail "no wsgate system user with nologin"
[ "$(stat -c '%U:%G %a' /etc/wsgate/certs)" = "root:wsgate 750" ] || fail "/etc/wsgate/certs: $(stat -c '%U:%G %a' /etc/wsgate/certs)"
[ "$(stat -c '%U:%G %a' /etc/wsgate/wsgate.toml)" = "root:wsgate 640" ] || fail "wsgate.toml: $(stat -c '%U:%G %a' /etc/wsgate/wsgate.toml)"
[ -L /etc/systemd/system/multi-user.target.wants/wsgate.service ] || fail "wsgate.service is not enabled"
[ -e /etc/systemd/system/sockets.target.wants/wsgate.socket ] && fail "wsgate.socket was enabled"
[ "$(wsgate --version)" = "wsgate $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ] || fail "wsgate --version: $(wsgate --version)"

say "systemd-analyze verify (installed units)"
systemd-analyze verify /usr/lib/systemd/system/wsgate.service /usr/lib/systemd/system/wsgate.socket \
  /usr/lib/systemd/system/wsgate-plain.socket

say "the unfilled template is refused, naming its placeholders"
if runuser -u wsgate -- wsgate check --config /etc/wsgate/wsgate.toml 2>"$log"; then
  fail "wsgate check passed on the unfilled template"
fi
grep -q 'route\[0\].allowed_origins\[0\]: CHANGE-ME is a placeholder' "$log" || { cat "$log"; fail "placeholder not named"; }

say "certificate (wsgate cert) and the filled-in configuration"
wsgate cert --out-dir /etc/wsgate/certs --base wsgate --name localhost
sed -i -e 's#https://CHANGE-ME.example.com#https://localhost#' -e 's#CHANGE-ME.internal:8080#127.0.0.1:9001#' \
  /etc/wsgate/wsgate.toml
# The key as `wsgate cert` left it (0600, root): root's check would pass, the
# service user's must not.
wsgate check --config /etc/wsgate/wsgate.toml >/dev/null
if runuser -u wsgate -- wsgate check --config /etc/wsgate/wsgate.toml 2>"$log"; then
  fail "the service user read a key only root may read"
fi
grep -q 'wsgate-key.pem' "$log" || { cat "$log"; fail "the unreadable key is not named"; }
chgrp wsgate /etc/wsgate/certs/*.pem
chmod 0640 /etc/wsgate/certs/*.pem
runuser -u wsgate -- wsgate check --config /etc/wsgate/wsgate.toml

say "dpkg -r: the program goes, the configuration stays"
dpkg -r wsgate
for path in /usr/bin/wsgate /usr/lib/systemd/system/wsgate.service /usr/share/man/man1/wsgate.1.gz; do
  [ -e "$path" ] && fail "$path is left after dpkg -r"
done
grep -q '127.0.0.1:9001' /etc/wsgate/wsgate.toml || fail "the edited configuration did not survive dpkg -r"

say "dpkg -P: the configuration goes"
dpkg -P wsgate
[ -e /etc/wsgate/wsgate.toml ] && fail "wsgate.toml is left after dpkg -P"
dpkg-query -W wsgate >/dev/null 2>&1 && fail "dpkg still knows wsgate after dpkg -P"
for path in /usr/lib/systemd/system/wsgate.service /usr/lib/sysusers.d/wsgate.conf \
  /etc/systemd/system/multi-user.target.wants/wsgate.service; do
  [ -e "$path" ] || [ -L "$path" ] && fail "$path is left after dpkg -P"
done
left=$(find /etc/wsgate -type f 2>/dev/null | sort | tr '\n' ' ')
[ "$left" = "/etc/wsgate/certs/dev-ca.pem /etc/wsgate/certs/wsgate-key.pem /etc/wsgate/certs/wsgate.pem " ] ||
  fail "unexpected files left: $left"
say "left after purge: $left(the certificate made above: dpkg never owned it), and the wsgate user and group (kept, as Debian keeps system users: files may still be theirs)"
say "ok"
