#!/usr/bin/env bash
# bash build/apt-install.sh PACKAGE...: installs Debian packages, as root or through sudo. The one install line of
# every build/*.sh script.
#
# The install command runs whenever it can run without a password prompt (as root, or with passwordless sudo), also
# when every package is already installed: then apt-get only confirms it, offline, in about a second. So a broken
# install line fails on every such machine, not only on a fresh one. The package lists are fetched (apt-get update)
# only when something is missing, or when the install fails on stale lists.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: bash build/apt-install.sh PACKAGE..." >&2; exit 2; }

missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo > /dev/null; then
  as_root=(sudo)
  if [ ${#missing[@]} -eq 0 ] && ! sudo -n true 2> /dev/null; then exit 0; fi   # nothing to do; don't ask for a password
else
  if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
  echo "apt-install.sh: ${missing[*]} must be installed, which needs root or sudo (neither is available):" >&2
  echo "  as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

# Two of this project's scripts at once (the quickstart and the tests, say) take turns through one lock file, and an
# apt-get of someone else's (unattended upgrades) is waited for: dpkg's lock for up to 5 minutes, the package lists'
# lock (which apt-get update does not wait for) by a few retries.
{ exec 9> /tmp/moce-apt.lock; } 2> /dev/null || exec 9< /tmp/moce-apt.lock   # a file of another user: read-only will do
flock -w 900 9 || { echo "apt-install.sh: another install held /tmp/moce-apt.lock for 15 minutes" >&2; exit 1; }
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
update() {
  local i
  for i in 1 2 3 4 5; do apt_get update -qq >&2 && return 0; sleep 10; done
  apt_get update -qq >&2
}
install() { apt_get install -y -qq --no-install-recommends "$@" > /dev/null; }
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt-install.sh: installing ${missing[*]} (Debian)" >&2
  update
  install "$@"
elif ! install "$@" 2> /dev/null; then
  update
  install "$@"
fi
