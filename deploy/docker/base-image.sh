#!/usr/bin/env bash
# Builds a Python 3.11 base image from Debian's packages, for machines that cannot pull
# python:3.11-slim-bookworm from a registry (`make base-images`; the Dockerfile takes it as
# PYTHON_IMAGE). Debian 12's python3 is 3.11; its pip refuses system installs (PEP 668), so the
# image puts a venv first on PATH: `python` and `pip` there behave as in the official image.
#
#   deploy/docker/base-image.sh [NAME:TAG]      (default starrating-python:3.11-bookworm)
#
# Needs root, debootstrap and a Docker engine. The Debian mirror is the one apt uses here
# (DEBIAN_MIRROR overrides it). Rebuilds only when the image is missing (FORCE=1 rebuilds).
set -euo pipefail

image="${1:-starrating-python:3.11-bookworm}"
suite=bookworm
docker="${DOCKER:-docker}"

if [ "${FORCE:-0}" != 1 ] && "$docker" image inspect "$image" >/dev/null 2>&1; then
  echo "base-image: $image exists (FORCE=1 rebuilds it)"
  exit 0
fi

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
fi
if [ -z "$mirror" ]; then
  echo "base-image: apt has no Debian source configured here (/etc/apt/sources.list.d/debian.sources);" >&2
  echo "  set DEBIAN_MIRROR to the Debian mirror to build from, e.g. DEBIAN_MIRROR=http://MIRROR/debian" >&2
  exit 2
fi
security="${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"

rootfs="$(mktemp -d /tmp/starrating-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT

echo "base-image: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { cat "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"

cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
SOURCES
# The venv that `python`/`pip` resolve to; pip installs go there.
chroot "$rootfs" python3 -m venv /opt/python
# What a container never needs: package caches, indexes, docs, man pages, translations.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
# Docs and man pages go too, except each package's copyright file; the directories stay, as in
# Debian's slim images (openjdk's postinst links into /usr/share/man/man1).
find "$rootfs"/usr/share/doc "$rootfs"/usr/share/man -type f ! -name copyright -delete

tar -C "$rootfs" --numeric-owner -c . | "$docker" import \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python"]' \
  - "$image" >/dev/null
echo "base-image: $image ($("$docker" image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
