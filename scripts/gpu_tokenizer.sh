#!/usr/bin/env bash
# tokenizer.json against Hugging Face tokenizers on the GPU machine (it has `tokenizers`), in one
# command:   OUT=/some/dir bash scripts/gpu_tokenizer.sh
#   1. builds consa-tokenize (Oniguruma and utf8proc from .debs/ when the machine lacks them:
#      Debian's libonig-dev, libonig5, libutf8proc-dev, libutf8proc2, unpacked into a prefix);
#   2. recomputes tokenizers' ids for the fixture cases (scripts/make_tokenizer_fixtures.py
#      --keep-tokenizers) into $OUT/tokenizer_fixtures.tgz;
#   3. compares ids and speed on the Python standard library (scripts/compare_tokenizers.py)
#      into $OUT/tokenizer_parity.json (COMPARE=0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
source scripts/gpu_deps.sh
PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu-tok -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX;$CONSA_DEPS_PREFIX" \
  -DCONSA_BUILD_TESTS=OFF >/tmp/consa-tok-configure.log 2>&1 || { tail -30 /tmp/consa-tok-configure.log; exit 1; }
grep "consa: tokenizer.json" /tmp/consa-tok-configure.log
cmake --build build-gpu-tok --target consa-tokenize -j"$(nproc)" >/tmp/consa-tok-build.log 2>&1 ||
  { grep -A5 error /tmp/consa-tok-build.log | head -40; exit 1; }
rm -rf /tmp/tokfix && cp -r tests/fixtures/tokenizers /tmp/tokfix
python3 scripts/make_tokenizer_fixtures.py /tmp/tokfix --keep-tokenizers
tar czf "$OUT/tokenizer_fixtures.tgz" -C /tmp/tokfix .
[ "${COMPARE:-1}" = 0 ] && exit 0  # COMPARE=0: the fixtures only
python3 scripts/compare_tokenizers.py --consa build-gpu-tok/consa-tokenize --out "$OUT/tokenizer_parity.json" \
  /tmp/tokfix/qwen2_style /tmp/tokfix/llama3_style
