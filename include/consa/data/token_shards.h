#pragma once
// Token shards: flat files of token ids, read through mmap.
//   bytes 0..7    magic "CONSATOK"
//   bytes 8..11   format version (little-endian uint32, currently 1)
//   bytes 12..15  bytes per token: 2 (uint16) or 4 (uint32)
//   bytes 16..23  number of tokens (uint64)
//   then the tokens, little endian.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "consa/core/mapped_file.h"

namespace consa {

constexpr uint32_t kTokenShardVersion = 1;

class TokenShard {
 public:
  static TokenShard open(const std::string& path);  // validates the header and the size
  int64_t size() const { return count_; }
  int64_t token(int64_t i) const;
  // Copies tokens [begin, begin + n) into `out`.
  void read(int64_t begin, int64_t n, int64_t* out) const;
  const std::string& path() const { return path_; }
  int64_t max_token() const;  // scans the shard

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  const uint8_t* tokens_ = nullptr;
  int bytes_per_token_ = 2;
  int64_t count_ = 0;
};

// Writes ids as a shard (uint16 when every id fits, else uint32), atomically.
void write_token_shard(const std::string& path, const std::vector<int64_t>& ids);

}  // namespace consa
