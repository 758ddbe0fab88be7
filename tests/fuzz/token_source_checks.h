#pragma once
// What the token-source targets check of every source that opens: the document table is
// consistent with the token count, and reading any range gives the same ids as reading all.
#include <algorithm>
#include <cstdint>

#include "consa/data/token_sources.h"
#include "fuzz_common.h"

namespace consa_fuzz {

inline void check_token_source(const consa::TokenSource& source, const std::string& path, const uint8_t* data,
                               size_t size) {
  const int64_t n = source.size(), docs = source.documents();
  if (n < 0 || docs < 0 || source.document_start(0) != 0 || source.document_start(docs) != n)
    property_failed(path + ": document table does not span the " + std::to_string(n) + " tokens");
  for (int64_t d = 0, previous = 0; d <= docs; ++d) {
    const int64_t start = source.document_start(d);
    if (start < previous || start > n) property_failed(path + ": document " + std::to_string(d) + " out of order");
    previous = start;
  }
  // Megatron sequences may share bytes of the .bin, so a small input can claim billions of
  // tokens: those sources are checked by their table alone.
  if (n > (int64_t{1} << 20)) return source.describe(), void();
  std::vector<int64_t> all(static_cast<size_t>(n));
  source.read(0, n, all.data());
  // A few sub-ranges chosen by the input: the same ids as the whole read.
  for (size_t i = 0; i + 1 < std::min<size_t>(size, 8) && n > 0; i += 2) {
    const int64_t begin = data[i] % n, count = std::min<int64_t>(data[i + 1], n - begin);
    std::vector<int64_t> part(static_cast<size_t>(count));
    source.read(begin, count, part.data());
    if (!std::equal(part.begin(), part.end(), all.begin() + begin))
      property_failed(path + ": read of [" + std::to_string(begin) + ", +" + std::to_string(count) +
                      ") differs from the whole read");
  }
  // max_token is -1 for no ids, and so at least -1 (signed Megatron dtypes hold negative ids).
  const int64_t max = source.max_token();
  if (max != std::max<int64_t>(-1, n > 0 ? *std::max_element(all.begin(), all.end()) : -1))
    property_failed(path + ": max_token is wrong");
  if (max < INT64_MAX) source.check_vocabulary(max + 1);  // every id below max + 1: must pass
  source.describe();
}

}  // namespace consa_fuzz
