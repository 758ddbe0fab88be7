#pragma once
// Shared by the libFuzzer targets: each writes its input to a file and calls the real reader, so
// the fuzzer exercises the path consa takes (mmap, file errors) rather than a copy of it.
//
// The contract under test: bad input raises consa::Error with a message that names the file
// (or the override) it is about. Any other exception escapes LLVMFuzzerTestOneInput, which
// libFuzzer reports as a crash ("deadly signal" after std::terminate); so does a consa::Error
// that names nothing, an ASan/UBSan finding, or a failed round-trip property (abort()).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "consa/core/error.h"

namespace consa_fuzz {

// A directory of this process's own on a tmpfs (/dev/shm, else $TMPDIR or /tmp), made on first
// use and removed at exit: inputs are rewritten there on every run.
const std::string& scratch_dir();

// Writes bytes as scratch_dir()/name (replacing the previous input) and returns the path.
std::string write_input(const std::string& name, const uint8_t* data, size_t size);
std::string write_input(const std::string& name, const std::string& bytes);

// Prints what went wrong and aborts: a property the target checks does not hold.
[[noreturn]] void property_failed(const std::string& what);

// CONSA_FUZZ_VERBOSE=1 prints each refusal (to replay an input and see what it was refused for).
bool verbose();

// Runs `body`; a consa::Error is the expected refusal of bad input, provided its message names
// one of `names` (a file path, or the start of an override). Anything else escapes.
template <typename Body>
int refuse_with_error(const std::vector<std::string>& names, Body&& body) {
  try {
    body();
  } catch (const consa::Error& e) {
    const std::string message = e.what();
    if (verbose()) std::fprintf(stderr, "refused: %s\n", message.c_str());
    for (const auto& n : names)
      if (message.find(n) != std::string::npos) return 0;
    property_failed("consa::Error names none of the inputs: " + message);
  }
  return 0;
}

// Splits `bytes` at the first occurrence of `separator` (not kept): {before, after}; after is
// empty when the separator is absent.
std::pair<std::string, std::string> split_once(const std::string& bytes, const std::string& separator);

}  // namespace consa_fuzz
