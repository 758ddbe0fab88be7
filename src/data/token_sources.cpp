#include "consa/data/token_sources.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <type_traits>

#include "consa/core/checked_math.h"
#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/core/mapped_file.h"
#include "consa/data/token_shards.h"

namespace consa {

namespace fs = std::filesystem;

namespace {

template <typename T>
T read_le(const uint8_t* p) {
  using U = std::make_unsigned_t<T>;
  U v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<U>(static_cast<U>(p[i]) << (8 * i));
  return static_cast<T>(v);
}


bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// The Megatron prefix `path` names (PREFIX.bin, PREFIX.idx or PREFIX, with both files present),
// or "" when it names none.
std::string megatron_prefix(const std::string& path) {
  for (const char* ext : {".bin", ".idx"}) {
    if (!ends_with(path, ext)) continue;
    const std::string stem = path.substr(0, path.size() - 4);
    if (is_file(stem + ".bin") && is_file(stem + ".idx")) return stem;
  }
  if (is_file(path + ".bin") && is_file(path + ".idx")) return path;
  return "";
}

class ConsaSource : public TokenSource {
 public:
  explicit ConsaSource(TokenShard shard)
      : TokenSource(TokenFormat::Consa, shard.path(), shard.path(),
                    "consa v" + std::to_string(shard.version()) + ", " +
                        (shard.bytes_per_token() == 2 ? "uint16" : "uint32")),
        shard_(std::move(shard)) {}
  int64_t size() const override { return shard_.size(); }
  void read(int64_t begin, int64_t n, int64_t* out) const override { shard_.read(begin, n, out); }
  int64_t documents() const override { return shard_.documents(); }
  int64_t document_start(int64_t d) const override { return shard_.document_start(d); }

 private:
  TokenShard shard_;
};

class RawSource : public TokenSource {
 public:
  RawSource(const std::string& path, int width)
      : TokenSource(TokenFormat::Raw, path, path, width == 2 ? "raw, uint16" : "raw, uint32"), width_(width) {
    CONSA_CHECK(width == 2 || width == 4, path, ": format raw needs dtype uint16 or uint32");
    CONSA_CHECK(is_file(path), path, ": not found (a headerless token file, format raw)");
    mapping_ = std::make_shared<MappedFile>(path);
    CONSA_CHECK(mapping_->size() % static_cast<uint64_t>(width) == 0, path, ": ", mapping_->size(),
                " bytes is not a whole number of ", width, "-byte tokens (format raw, dtype ",
                width == 2 ? "uint16" : "uint32", ")");
    count_ = static_cast<int64_t>(mapping_->size() / static_cast<uint64_t>(width));
  }
  int64_t size() const override { return count_; }
  void read(int64_t begin, int64_t n, int64_t* out) const override {
    CONSA_CHECK(begin >= 0 && n >= 0 && begin + n <= count_, path(), ": read of [", begin, ", ", begin + n,
                ") beyond ", count_, " tokens");
    const uint8_t* p = mapping_->data() + begin * width_;
    for (int64_t i = 0; i < n; ++i, p += width_) out[i] = width_ == 2 ? read_le<uint16_t>(p) : read_le<uint32_t>(p);
  }
  int64_t documents() const override { return 1; }
  int64_t document_start(int64_t d) const override {
    CONSA_CHECK(d == 0 || d == 1, path(), ": document ", d, " is beyond its 1 document");
    return d == 0 ? 0 : count_;
  }

 private:
  std::shared_ptr<MappedFile> mapping_;
  int width_;
  int64_t count_ = 0;
};

// Megatron-LM's IndexedDataset (megatron/core/datasets/indexed_dataset.py): PREFIX.idx is
//   "MMIDIDX\0\0", version (u64, 1), dtype code (u8), sequence count S (u64), document index
//   count C (u64), int32 lengths[S], int64 byte pointers into PREFIX.bin[S], int64 document
//   indices[C] (sequence indices: 0, then the end of each document; C is documents + 1), and in
//   multimodal datasets int8 modes[S], which consa ignores.
class MegatronSource : public TokenSource {
 public:
  explicit MegatronSource(const std::string& prefix)
      : TokenSource(TokenFormat::Megatron, prefix + ".bin", prefix, "megatron"), idx_path_(prefix + ".idx") {
    const std::string& bin_path = path();
    CONSA_CHECK(is_file(idx_path_) && is_file(bin_path), prefix, ": not a Megatron dataset (expected ", prefix,
                ".bin and ", prefix, ".idx; missing ", is_file(idx_path_) ? bin_path : idx_path_, ")");
    idx_ = std::make_shared<MappedFile>(idx_path_);
    bin_ = std::make_shared<MappedFile>(bin_path);
    const uint8_t* p = idx_->data();
    const uint64_t size = idx_->size();
    CONSA_CHECK(size >= kHeaderBytes, idx_path_, ": truncated Megatron index: ", size, " bytes, the header alone is ",
                kHeaderBytes);
    CONSA_CHECK(std::memcmp(p, "MMIDIDX\0\0", 9) == 0, idx_path_,
                ": not a Megatron index (expected the MMIDIDX header of an IndexedDataset .idx)");
    const uint64_t version = read_le<uint64_t>(p + 9);
    CONSA_CHECK(version == 1, idx_path_, ": Megatron index version ", version, ", expected 1");
    code_ = p[17];
    CONSA_CHECK(code_ != 6 && code_ != 7, idx_path_, ": token dtype ", code_ == 6 ? "float64" : "float32",
                " (code ", code_, ") is not an integer type; token ids must be uint8, int8, int16, int32, int64 or uint16");
    itemsize_ = item_size(code_);
    CONSA_CHECK(itemsize_ > 0, idx_path_, ": unknown dtype code ", code_,
                ", expected 1 (uint8), 2 (int8), 3 (int16), 4 (int32), 5 (int64) or 8 (uint16)");
    const uint64_t sequences = read_le<uint64_t>(p + 18), entries = read_le<uint64_t>(p + 26);
    // The counts come from the file: every size derived from them is checked arithmetic.
    uint64_t table = 0, doc_bytes = 0, expected = 0, with_modes = 0;  // with_modes: multimodal indexes' int8 per sequence
    const bool fits = fits_int64(sequences) && fits_int64(entries) &&
                      checked_multiply(sequences, uint64_t{12}, &table) &&
                      checked_multiply(entries, uint64_t{8}, &doc_bytes) &&
                      checked_add(table, doc_bytes, &expected) &&
                      checked_add(expected, kHeaderBytes, &expected) && checked_add(expected, sequences, &with_modes);
    CONSA_CHECK(fits && (size == expected || size == with_modes), idx_path_, ": header says ", sequences,
                " sequences and ", entries, " document indices, ",
                fits ? "which take " + std::to_string(expected) + " bytes" : std::string("more than a file holds"),
                ", but the file holds ", size, " bytes");
    sequences_ = static_cast<int64_t>(sequences);
    lengths_ = p + kHeaderBytes;
    pointers_ = lengths_ + 4 * sequences;
    doc_index_ = pointers_ + 8 * sequences;
    entries_ = static_cast<int64_t>(entries);

    CONSA_CHECK(entries_ >= 1 && doc_index(0) == 0, idx_path_, ": document indices must start with 0, got ",
                entries_ == 0 ? std::string("none") : std::to_string(doc_index(0)));
    for (int64_t d = 1; d < entries_; ++d)
      CONSA_CHECK(doc_index(d) >= doc_index(d - 1) && doc_index(d) <= sequences_, idx_path_, ": document index ", d,
                  " is ", doc_index(d), ", expected non-decreasing sequence indices in [", doc_index(d - 1), ", ",
                  sequences_, "]");
    CONSA_CHECK(doc_index(entries_ - 1) == sequences_, idx_path_, ": the last document index is ",
                doc_index(entries_ - 1), ", expected the sequence count ", sequences_);

    const uint64_t bin_size = bin_->size();
    uint64_t total = 0, next = 0;
    contiguous_ = true;
    for (int64_t s = 0; s < sequences_; ++s) {
      const int32_t length = read_le<int32_t>(lengths_ + 4 * s);
      const int64_t pointer = read_le<int64_t>(pointers_ + 8 * s);
      CONSA_CHECK(length >= 0 && pointer >= 0, idx_path_, ": sequence ", s, " has length ", length, " and pointer ",
                  pointer, ", expected both >= 0");
      const uint64_t bytes = static_cast<uint64_t>(length) * static_cast<uint64_t>(itemsize_);  // < 2^34
      uint64_t end = 0;
      CONSA_CHECK(checked_add(static_cast<uint64_t>(pointer), bytes, &end) && end <= bin_size, idx_path_,
                  ": sequence ", s, " spans bytes [", pointer, ", ", static_cast<uint64_t>(pointer) + bytes, ") of ",
                  bin_path, ", which holds ", bin_size, " bytes");
      if (s == 0) base_ = static_cast<uint64_t>(pointer);
      else if (static_cast<uint64_t>(pointer) != next) contiguous_ = false;
      next = end;
      total += static_cast<uint64_t>(length);  // at most S * 2^31 bytes of .idx: no overflow
    }
    tokens_ = static_cast<int64_t>(total);
    // Sequences stored out of order or with gaps: map tokens to sequences through their starts.
    if (!contiguous_) {
      starts_.resize(sequences_ + 1);
      for (int64_t s = 0; s < sequences_; ++s) starts_[s + 1] = starts_[s] + read_le<int32_t>(lengths_ + 4 * s);
    }
    set_kind(std::string("megatron, ") + dtype_name(code_));
  }

  int64_t size() const override { return tokens_; }
  void read(int64_t begin, int64_t n, int64_t* out) const override {
    CONSA_CHECK(begin >= 0 && n >= 0 && begin + n <= tokens_, path(), ": read of [", begin, ", ", begin + n,
                ") beyond ", tokens_, " tokens");
    if (contiguous_) return decode(base_ + static_cast<uint64_t>(begin) * itemsize_, n, out);
    int64_t s = std::upper_bound(starts_.begin(), starts_.end(), begin) - starts_.begin() - 1;
    while (n > 0) {
      const int64_t within = begin - starts_[s], take = std::min(n, starts_[s + 1] - begin);
      decode(static_cast<uint64_t>(read_le<int64_t>(pointers_ + 8 * s)) + static_cast<uint64_t>(within) * itemsize_,
             take, out);
      out += take, begin += take, n -= take, ++s;
    }
  }
  int64_t documents() const override { return entries_ - 1; }
  int64_t document_start(int64_t d) const override {
    CONSA_CHECK(d >= 0 && d < entries_, path(), ": document ", d, " is beyond its ", entries_ - 1, " documents");
    const int64_t s = doc_index(d);
    if (!contiguous_) return starts_[s];
    if (s == sequences_) return tokens_;
    return static_cast<int64_t>((static_cast<uint64_t>(read_le<int64_t>(pointers_ + 8 * s)) - base_) / itemsize_);
  }
 private:
  static constexpr uint64_t kHeaderBytes = 34;  // magic 9, version 8, dtype 1, counts 8 + 8

  static int item_size(int code) {
    switch (code) {
      case 1: case 2: return 1;
      case 3: case 8: return 2;
      case 4: return 4;
      case 5: return 8;
      default: return 0;
    }
  }
  static const char* dtype_name(int code) {
    switch (code) {
      case 1: return "uint8";
      case 2: return "int8";
      case 3: return "int16";
      case 4: return "int32";
      case 5: return "int64";
      default: return "uint16";
    }
  }
  int64_t doc_index(int64_t d) const { return read_le<int64_t>(doc_index_ + 8 * d); }
  void decode(uint64_t byte, int64_t n, int64_t* out) const {
    const uint8_t* p = bin_->data() + byte;
    switch (code_) {
      case 1: for (int64_t i = 0; i < n; ++i) out[i] = p[i]; break;
      case 2: for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int8_t>(p[i]); break;
      case 3: for (int64_t i = 0; i < n; ++i) out[i] = read_le<int16_t>(p + 2 * i); break;
      case 4: for (int64_t i = 0; i < n; ++i) out[i] = read_le<int32_t>(p + 4 * i); break;
      case 5: for (int64_t i = 0; i < n; ++i) out[i] = read_le<int64_t>(p + 8 * i); break;
      default: for (int64_t i = 0; i < n; ++i) out[i] = read_le<uint16_t>(p + 2 * i); break;
    }
  }

  std::string idx_path_;
  std::shared_ptr<MappedFile> idx_, bin_;
  int code_ = 0, itemsize_ = 0;
  int64_t sequences_ = 0, entries_ = 0, tokens_ = 0;
  const uint8_t *lengths_ = nullptr, *pointers_ = nullptr, *doc_index_ = nullptr;
  bool contiguous_ = true;
  uint64_t base_ = 0;            // contiguous: the byte of token 0 in the .bin
  std::vector<int64_t> starts_;  // otherwise: the first token of each sequence, S + 1 entries
};

constexpr int64_t kScanChunk = 1 << 16;

}  // namespace

const char* token_format_name(TokenFormat format) {
  switch (format) {
    case TokenFormat::Auto: return "auto";
    case TokenFormat::Consa: return "consa";
    case TokenFormat::Megatron: return "megatron";
    case TokenFormat::Raw: return "raw";
  }
  return "auto";
}

TokenFormat parse_token_format(const std::string& name) {
  for (TokenFormat f : {TokenFormat::Auto, TokenFormat::Consa, TokenFormat::Megatron, TokenFormat::Raw})
    if (name == token_format_name(f)) return f;
  fail("token format '", name, "' is not allowed; allowed: auto, consa, megatron, raw");
}

int64_t TokenSource::max_token() const {
  std::vector<int64_t> chunk(static_cast<size_t>(std::min<int64_t>(kScanChunk, std::max<int64_t>(size(), 1))));
  int64_t m = -1;
  for (int64_t begin = 0; begin < size(); begin += kScanChunk) {
    const int64_t n = std::min(kScanChunk, size() - begin);
    read(begin, n, chunk.data());
    for (int64_t i = 0; i < n; ++i) m = std::max(m, chunk[i]);
  }
  return m;
}

void TokenSource::check_vocabulary(int64_t vocab_size) const {
  std::vector<int64_t> chunk(static_cast<size_t>(std::min<int64_t>(kScanChunk, std::max<int64_t>(size(), 1))));
  for (int64_t begin = 0; begin < size(); begin += kScanChunk) {
    const int64_t n = std::min(kScanChunk, size() - begin);
    read(begin, n, chunk.data());
    for (int64_t i = 0; i < n; ++i)
      CONSA_CHECK(chunk[i] >= 0 && chunk[i] < vocab_size, path(), ": token id ", chunk[i], " (token ", begin + i,
                  ") is outside the model's vocabulary of ", vocab_size);
  }
}

std::string TokenSource::describe() const {
  return name_ + " (" + kind_ + "): " + std::to_string(size()) + " tokens, " + std::to_string(documents()) +
         (documents() == 1 ? " document" : " documents");
}

TokenFormat resolve_token_format(const TokenSourceSpec& spec) {
  if (spec.format != TokenFormat::Auto) return spec.format;
  return megatron_prefix(spec.path).empty() ? TokenFormat::Consa : TokenFormat::Megatron;
}

std::shared_ptr<const TokenSource> open_token_source(const TokenSourceSpec& spec) {
  const TokenFormat format = resolve_token_format(spec);
  CONSA_CHECK(spec.bytes_per_token == 0 || format == TokenFormat::Raw, spec.path, ": a token width is only for format raw");
  switch (format) {
    case TokenFormat::Raw:
      return std::make_shared<RawSource>(spec.path, spec.bytes_per_token);
    case TokenFormat::Megatron: {
      std::string prefix = megatron_prefix(spec.path);
      if (prefix.empty()) {
        prefix = spec.path;
        if (ends_with(prefix, ".bin") || ends_with(prefix, ".idx")) prefix.resize(prefix.size() - 4);
      }
      return std::make_shared<MegatronSource>(prefix);
    }
    default:
      break;
  }
  CONSA_CHECK(is_file(spec.path), spec.path, ": not found (a consa token shard",
              spec.format == TokenFormat::Auto ? ", or a Megatron dataset PREFIX with PREFIX.bin and PREFIX.idx" : "",
              ")");
  if (spec.format == TokenFormat::Auto) {
    // A file without the consa header that is no Megatron dataset is most likely headerless tokens.
    MappedFile file(spec.path);
    CONSA_CHECK(file.size() >= 8 && std::memcmp(file.data(), "CONSATOK", 8) == 0, spec.path,
                ": not a consa token shard (no CONSATOK header) and no Megatron .idx beside it; for headerless tokens "
                "write {path: ", spec.path, ", format: raw, dtype: uint16 or uint32}");
  }
  return std::make_shared<ConsaSource>(TokenShard::open(spec.path));
}

}  // namespace consa
