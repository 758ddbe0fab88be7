#!/usr/bin/env bash
# Installs consa's build dependencies from Debian 12's packages (libgloo-dev: headers that
# LibTorch's own headers and CMake files refer to; python3-torch: the tests load TorchScript
# exports in Python too; libonig-dev, libutf8proc-dev: tokenizer.json; zlib1g-dev, libzstd-dev:
# compressed corpora, zstd: the tests compress one). Idempotent: returns at once when
# everything is already installed.
set -euo pipefail
PACKAGES=(build-essential cmake ninja-build pkg-config libtorch-dev libyaml-cpp-dev
          libcxxopts-dev nlohmann-json3-dev catch2 libsentencepiece-dev libgloo-dev python3-torch
          libonig-dev libutf8proc-dev zlib1g-dev libzstd-dev zstd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
