#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer, in build-asan:
#   bash scripts/sanitize.sh                # every ctest test
#   bash scripts/sanitize.sh -R 'data|cli'  # extra arguments go to ctest
# consa, consa-tokenize and the tests are instrumented (the `consa` processes the tests start
# too); LibTorch, yaml-cpp and the other system libraries are not, and ASan still checks every
# heap access our code makes into their memory. Any report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
# vptr is left out: it needs the RTTI of every polymorphic class, and LibTorch's come from an
# uninstrumented library. -O1 keeps stack traces readable at a bearable speed.
FLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=undefined"
if [ ! -f build-asan/build.ninja ]; then
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="$FLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
fi
cmake --build build-asan -j"$(nproc)"
# halt_on_error / abort: a report is a failed test, never a line lost in a passing one.
# detect_leaks=0: LeakSanitizer reports LibTorch's process-lifetime operator registries and
# thread pools, which are never freed by design; use-after-free, overflows and double frees
# are still fatal.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=0:strict_string_checks=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
cd build-asan && ctest --output-on-failure --timeout 3000 "$@"
