#!/usr/bin/env bash
# Sourced by the GPU scripts: the GPU machine (Ubuntu 24.04) lacks Oniguruma's and utf8proc's
# headers, so Debian's packages carried in .debs/ (libonig-dev, libonig5, libutf8proc-dev,
# libutf8proc2) are unpacked into a prefix that CMake then searches. Sets CONSA_DEPS_PREFIX.
CONSA_DEPS_PREFIX=/tmp/consa-deps/usr
if { [ ! -f /usr/include/oniguruma.h ] || [ ! -f /usr/include/utf8proc.h ]; } && ls .debs/*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/consa-deps
  for f in .debs/*.deb; do dpkg -x "$f" /tmp/consa-deps; done
fi
