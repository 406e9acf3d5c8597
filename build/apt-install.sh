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

# another apt-get (a second build, unattended upgrades) holds dpkg's lock: wait for it rather than fail
apt_get() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
install() { apt_get install -y -qq --no-install-recommends "$@" > /dev/null; }
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt-install.sh: installing ${missing[*]} (Debian)" >&2
  apt_get update -qq >&2
  install "$@"
elif ! install "$@" 2> /dev/null; then
  apt_get update -qq >&2
  install "$@"
fi
