#include "consa/data/token_shards.h"

#include <algorithm>
#include <cstring>

#include "consa/core/atomic_file.h"
#include "consa/core/checked_math.h"
#include "consa/core/error.h"

namespace consa {

namespace {
constexpr char kMagic[8] = {'C', 'O', 'N', 'S', 'A', 'T', 'O', 'K'};
constexpr uint64_t kHeaderBytesV1 = 24;
constexpr uint64_t kHeaderBytesV2 = 32;
constexpr int64_t kMaxUint32 = 0xFFFFFFFFll;

template <typename T>
T read_le(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}

void put_le(std::string& bytes, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::string header(uint32_t width, uint64_t tokens, uint64_t documents) {
  std::string bytes(kMagic, 8);
  put_le(bytes, kTokenShardVersion, 4);
  put_le(bytes, width, 4);
  put_le(bytes, tokens, 8);
  put_le(bytes, documents, 8);
  return bytes;
}
}  // namespace

TokenShard TokenShard::open(const std::string& path) {
  TokenShard shard;
  shard.path_ = path;
  shard.mapping_ = std::make_shared<MappedFile>(path);
  const uint8_t* p = shard.mapping_->data();
  const uint64_t size = shard.mapping_->size();
  CONSA_CHECK(size >= kHeaderBytesV1 && std::memcmp(p, kMagic, 8) == 0, path,
              ": not a consa token shard (expected the CONSATOK header; write one with consa tokenize)");
  shard.version_ = read_le<uint32_t>(p + 8);
  CONSA_CHECK(shard.version_ == 1 || shard.version_ == 2, path, ": token shard version ", shard.version_,
              ", this consa reads versions 1 and 2");
  shard.bytes_per_token_ = static_cast<int>(read_le<uint32_t>(p + 12));
  CONSA_CHECK(shard.bytes_per_token_ == 2 || shard.bytes_per_token_ == 4, path, ": bytes per token is ",
              shard.bytes_per_token_, ", expected 2 or 4");
  const uint64_t count = read_le<uint64_t>(p + 16);
  const uint64_t head = shard.version_ == 1 ? kHeaderBytesV1 : kHeaderBytesV2;
  CONSA_CHECK(size >= head, path, ": truncated header (", size, " bytes, version 2 needs ", head, ")");
  const uint64_t documents = shard.version_ == 1 ? 1 : read_le<uint64_t>(p + 24);
  // Sizes come from the file: every product and sum is checked before it is trusted.
  uint64_t token_bytes = 0, offset_bytes = 0, expected = 0;
  const bool fits = checked_multiply(count, static_cast<uint64_t>(shard.bytes_per_token_), &token_bytes) &&
                    (shard.version_ == 1 || (documents < UINT64_MAX &&
                                             checked_multiply(documents + 1, uint64_t{8}, &offset_bytes))) &&
                    checked_add(head, token_bytes, &expected) &&
                    checked_add(expected, offset_bytes, &expected) && fits_int64(count) && fits_int64(documents);
  if (shard.version_ == 1) {
    CONSA_CHECK(fits && size == expected, path, ": header says ", count, " tokens of ", shard.bytes_per_token_,
                " bytes but the file holds ", size - head, " bytes after the header");
  } else {
    CONSA_CHECK(fits && size == expected, path, ": header says ", count, " tokens of ", shard.bytes_per_token_,
                " bytes and ", documents, " documents (", documents, " + 1 offsets of 8 bytes) but the file holds ",
                size - head, " bytes after the header");
  }
  shard.count_ = static_cast<int64_t>(count);
  shard.documents_ = static_cast<int64_t>(documents);
  shard.tokens_ = p + head;
  if (shard.version_ == 2) {
    shard.offsets_ = shard.tokens_ + token_bytes;
    uint64_t previous = 0;
    for (uint64_t d = 0; d <= documents; ++d) {
      const uint64_t start = read_le<uint64_t>(shard.offsets_ + 8 * d);
      CONSA_CHECK(d > 0 || start == 0, path, ": document 0 starts at token ", start, ", expected 0");
      CONSA_CHECK(start >= previous && start <= count, path, ": document offset ", d, " is ", start,
                  ", expected non-decreasing offsets in [", previous, ", ", count, "]");
      previous = start;
    }
    CONSA_CHECK(previous == count, path, ": the last document offset is ", previous, ", expected the token count ",
                count);
  }
  return shard;
}

int64_t TokenShard::token(int64_t i) const {
  const uint8_t* p = tokens_ + i * bytes_per_token_;
  return bytes_per_token_ == 2 ? read_le<uint16_t>(p) : read_le<uint32_t>(p);
}

void TokenShard::read(int64_t begin, int64_t n, int64_t* out) const {
  CONSA_CHECK(begin >= 0 && n >= 0 && begin + n <= count_, path_, ": read of [", begin, ", ", begin + n, ") beyond ",
              count_, " tokens");
  for (int64_t i = 0; i < n; ++i) out[i] = token(begin + i);
}

int64_t TokenShard::max_token() const {
  int64_t m = -1;
  for (int64_t i = 0; i < count_; ++i) m = std::max(m, token(i));
  return m;
}

int64_t TokenShard::document_start(int64_t d) const {
  CONSA_CHECK(d >= 0 && d <= documents_, path_, ": document ", d, " is beyond its ", documents_, " documents");
  if (!offsets_) return d == 0 ? 0 : count_;
  return static_cast<int64_t>(read_le<uint64_t>(offsets_ + 8 * d));
}

void write_token_shard(const std::string& path, const std::vector<int64_t>& ids,
                       const std::vector<int64_t>& document_starts) {
  const int64_t n = static_cast<int64_t>(ids.size());
  int64_t max_id = 0;
  for (int64_t id : ids) {
    CONSA_CHECK(id >= 0 && id <= kMaxUint32, path, ": token id ", id, " does not fit a uint32 shard");
    max_id = std::max(max_id, id);
  }
  std::vector<int64_t> starts = document_starts.empty() ? std::vector<int64_t>{0} : document_starts;
  CONSA_CHECK(starts.front() == 0, path, ": the first document starts at ", starts.front(), ", expected 0");
  for (size_t d = 1; d < starts.size(); ++d)
    CONSA_CHECK(starts[d] >= starts[d - 1] && starts[d] <= n, path, ": document ", d, " starts at ", starts[d],
                ", expected non-decreasing starts in [", starts[d - 1], ", ", n, "]");
  TokenShardWriter out(path, max_id);
  starts.push_back(n);
  for (size_t d = 0; d + 1 < starts.size(); ++d) out.add_document(ids.data() + starts[d], starts[d + 1] - starts[d]);
  out.commit();
}

TokenShardWriter::TokenShardWriter(const std::string& path, int64_t max_id)
    : path_(path),
      out_(std::make_unique<AtomicFileWriter>(path)),
      max_id_(max_id),
      width_(max_id >= 0 && max_id <= 0xFFFF ? 2 : 4) {
  CONSA_CHECK(max_id <= kMaxUint32, path_, ": max_id ", max_id, " does not fit a uint32 shard");
  // A placeholder header: commit() writes the real counts over it.
  const std::string head = header(width_, 0, 0);
  out_->write(head.data(), head.size());
}

TokenShardWriter::~TokenShardWriter() = default;

void TokenShardWriter::add_document(const int64_t* ids, int64_t n) {
  CONSA_CHECK(!committed_, path_, ": add_document after commit");
  CONSA_CHECK(n >= 0, path_, ": a document of ", n, " tokens");
  // Encoded (and checked) whole before anything is recorded: a refused document leaves no trace.
  buffer_.clear();
  buffer_.reserve(static_cast<size_t>(n) * width_);
  const int64_t limit = width_ == 2 ? 0xFFFF : kMaxUint32;
  for (int64_t i = 0; i < n; ++i) {
    CONSA_CHECK(ids[i] >= 0 && ids[i] <= limit, path_, ": token id ", ids[i], " of document ", starts_.size(),
                " does not fit a ", width_ == 2 ? "uint16" : "uint32", " shard",
                width_ == 2 ? " (max_id " + std::to_string(max_id_) + " chose uint16)" : std::string());
    put_le(buffer_, static_cast<uint64_t>(ids[i]), static_cast<int>(width_));
  }
  out_->write(buffer_.data(), buffer_.size());
  starts_.push_back(static_cast<uint64_t>(tokens_));
  tokens_ += n;
}

void TokenShardWriter::commit() {
  CONSA_CHECK(!committed_, path_, ": commit twice");
  // No document added: one empty document, as write_token_shard writes for no ids.
  if (starts_.empty()) starts_.push_back(0);
  buffer_.clear();
  for (uint64_t s : starts_) put_le(buffer_, s, 8);
  put_le(buffer_, static_cast<uint64_t>(tokens_), 8);
  out_->write(buffer_.data(), buffer_.size());
  out_->stream().seekp(0);
  const std::string head = header(width_, static_cast<uint64_t>(tokens_), starts_.size());
  out_->write(head.data(), head.size());
  out_->commit();
  committed_ = true;
  buffer_ = std::string();
}

}  // namespace consa
