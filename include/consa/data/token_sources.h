#pragma once
// Pre-tokenized corpora that `data.shards` reads, behind one interface:
//   consa     consa token shards (token_shards.h), versions 1 and 2
//   megatron  Megatron-LM / NeMo indexed datasets, PREFIX.bin + PREFIX.idx (MMIDIDX version 1;
//             integer token dtypes), read through mmap; a Megatron document is one document
//   raw       headerless little-endian uint16 or uint32 ids (nanoGPT's train.bin, OLMo's memmap
//             token files); one document
// Every file is validated when opened: each failure is a consa::Error naming the file and what
// was expected.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace consa {

enum class TokenFormat {
  Auto,      // PATH.bin with PATH.idx beside it, or a PREFIX with PREFIX.bin and PREFIX.idx: megatron; else consa
  Consa,
  Megatron,
  Raw,
};

const char* token_format_name(TokenFormat format);
TokenFormat parse_token_format(const std::string& name);  // auto | consa | megatron | raw

// One entry of data.shards. A plain string converts to {path, auto}.
struct TokenSourceSpec {
  std::string path;
  TokenFormat format = TokenFormat::Auto;
  int bytes_per_token = 0;  // raw only: 2 (uint16) or 4 (uint32)

  TokenSourceSpec() = default;
  TokenSourceSpec(std::string p) : path(std::move(p)) {}  // NOLINT: a path is an auto-detected source
  TokenSourceSpec(const char* p) : path(p) {}              // NOLINT
  TokenSourceSpec(std::string p, TokenFormat f, int width = 0) : path(std::move(p)), format(f), bytes_per_token(width) {}

  bool operator==(const TokenSourceSpec& o) const {
    return path == o.path && format == o.format && bytes_per_token == o.bytes_per_token;
  }
  bool operator!=(const TokenSourceSpec& o) const { return !(*this == o); }
};

class TokenSource {
 public:
  virtual ~TokenSource() = default;

  TokenFormat format() const { return format_; }
  // The file that holds the tokens (a Megatron dataset's .bin): errors about ids name it.
  const std::string& path() const { return path_; }
  virtual int64_t size() const = 0;
  // Copies tokens [begin, begin + n) into `out`.
  virtual void read(int64_t begin, int64_t n, int64_t* out) const = 0;
  virtual int64_t documents() const = 0;
  // The first token of document d, for d in [0, documents()]; document_start(documents()) is size().
  virtual int64_t document_start(int64_t d) const = 0;

  // Scans every token.
  int64_t max_token() const;
  // Throws, naming the file, the id, its position and `vocab_size`, unless every id is in
  // [0, vocab_size).
  void check_vocabulary(int64_t vocab_size) const;
  // "data/prefix (megatron, int32): 1200 tokens, 3 documents"
  std::string describe() const;

 protected:
  TokenSource(TokenFormat format, std::string path, std::string name, std::string kind)
      : format_(format), path_(std::move(path)), name_(std::move(name)), kind_(std::move(kind)) {}
  void set_kind(std::string kind) { kind_ = std::move(kind); }

 private:
  TokenFormat format_;
  std::string path_;
  std::string name_;  // what describe() names: the path, or a Megatron prefix
  std::string kind_;  // "consa v2, uint16", "megatron, int32", "raw, uint16"
};

// Opens (and validates) one source; format Auto is resolved on the file system.
std::shared_ptr<const TokenSource> open_token_source(const TokenSourceSpec& spec);

// What an auto spec resolves to (Consa or Megatron); other formats come back as they are.
TokenFormat resolve_token_format(const TokenSourceSpec& spec);

}  // namespace consa
