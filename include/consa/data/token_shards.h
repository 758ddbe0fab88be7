#pragma once
// consa token shards: flat files of token ids, read through mmap.
//   bytes 0..7    magic "CONSATOK"
//   bytes 8..11   format version (little-endian uint32): 2 is written, 1 still reads
//   bytes 12..15  bytes per token: 2 (uint16) or 4 (uint32)
//   bytes 16..23  number of tokens N (uint64)
//   version 2 only:
//   bytes 24..31  number of documents D (uint64)
//   then the N tokens, little endian;
//   version 2 only: then D + 1 uint64 document start offsets (the first 0, the last N,
//   non-decreasing): document d is tokens [start[d], start[d + 1]).
// A version 1 shard is one document.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "consa/core/mapped_file.h"

namespace consa {

constexpr uint32_t kTokenShardVersion = 2;  // the version written

class TokenShard {
 public:
  static TokenShard open(const std::string& path);  // validates the header, the size and the offsets
  int64_t size() const { return count_; }
  int64_t token(int64_t i) const;
  // Copies tokens [begin, begin + n) into `out`.
  void read(int64_t begin, int64_t n, int64_t* out) const;
  const std::string& path() const { return path_; }
  int64_t max_token() const;  // scans the shard
  uint32_t version() const { return version_; }
  int bytes_per_token() const { return bytes_per_token_; }

  int64_t documents() const { return documents_; }
  // The first token of document d, for d in [0, documents()]; document_start(documents()) is size().
  int64_t document_start(int64_t d) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  const uint8_t* tokens_ = nullptr;
  const uint8_t* offsets_ = nullptr;  // version 2: D + 1 uint64
  uint32_t version_ = 1;
  int bytes_per_token_ = 2;
  int64_t count_ = 0;
  int64_t documents_ = 1;
};

// Writes ids as a version 2 shard (uint16 when every id fits, else uint32), atomically.
// `document_starts` holds the first token of every document, beginning with 0, non-decreasing and
// at most ids.size(); empty: the whole of `ids` is one document.
void write_token_shard(const std::string& path, const std::vector<int64_t>& ids,
                       const std::vector<int64_t>& document_starts = {});

class AtomicFileWriter;

// Writes a version 2 shard one document at a time, without holding the tokens in memory (only
// one offset per document). Nothing appears at `path` until commit(); a writer destroyed before
// commit() leaves nothing behind. Tokens are uint32, or uint16 when `max_id` (the largest id
// that will be added, e.g. the tokenizer's vocabulary size - 1) is given and below 65536; an id
// that does not fit the chosen width is refused (the shard would need uint32).
class TokenShardWriter {
 public:
  explicit TokenShardWriter(const std::string& path, int64_t max_id = -1);
  ~TokenShardWriter();
  TokenShardWriter(const TokenShardWriter&) = delete;
  TokenShardWriter& operator=(const TokenShardWriter&) = delete;

  void add_document(const int64_t* ids, int64_t n);
  int64_t tokens() const { return tokens_; }
  int64_t documents() const { return static_cast<int64_t>(starts_.size()); }
  int bytes_per_token() const { return static_cast<int>(width_); }
  void commit();  // writes the offsets and the header, then renames the file into place

 private:
  std::string path_;
  std::unique_ptr<AtomicFileWriter> out_;
  int64_t max_id_;
  uint32_t width_;
  int64_t tokens_ = 0;
  std::vector<uint64_t> starts_;
  std::string buffer_;
  bool committed_ = false;
};

}  // namespace consa
