#pragma once
// Checked 64-bit arithmetic for sizes read from files: a header's shape or count that overflows
// must be refused as such, never wrap into a plausible size.
#include <cstdint>
#include <limits>

namespace consa {

// a * b, or false when it does not fit 64 bits (then `out` is unspecified).
inline bool checked_multiply(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

// Whether `v` (an unsigned count from a file) is also a valid int64 (tensor sizes are int64).
inline bool fits_int64(uint64_t v) { return v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()); }

}  // namespace consa
