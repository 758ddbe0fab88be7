#!/usr/bin/env bash
# The README's first command: install dependencies, build, run consa's default job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
bash scripts/build.sh
./build/consa demo --out runs/demo/model
