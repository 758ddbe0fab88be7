#include "consa/data/token_shards.h"

#include <algorithm>
#include <cstring>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"

namespace consa {

namespace {
constexpr char kMagic[8] = {'C', 'O', 'N', 'S', 'A', 'T', 'O', 'K'};
constexpr uint64_t kHeaderBytes = 24;

template <typename T>
T read_le(const uint8_t* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}
}  // namespace

TokenShard TokenShard::open(const std::string& path) {
  TokenShard shard;
  shard.path_ = path;
  shard.mapping_ = std::make_shared<MappedFile>(path);
  const uint8_t* p = shard.mapping_->data();
  const uint64_t size = shard.mapping_->size();
  CONSA_CHECK(size >= kHeaderBytes && std::memcmp(p, kMagic, 8) == 0, path,
              ": not a consa token shard (expected the CONSATOK header; write one with consa tokenize)");
  const uint32_t version = read_le<uint32_t>(p + 8);
  CONSA_CHECK(version == kTokenShardVersion, path, ": token shard version ", version, ", this consa reads version ",
              kTokenShardVersion);
  shard.bytes_per_token_ = static_cast<int>(read_le<uint32_t>(p + 12));
  CONSA_CHECK(shard.bytes_per_token_ == 2 || shard.bytes_per_token_ == 4, path, ": bytes per token is ",
              shard.bytes_per_token_, ", expected 2 or 4");
  const uint64_t count = read_le<uint64_t>(p + 16);
  CONSA_CHECK(size - kHeaderBytes == count * shard.bytes_per_token_, path, ": header says ", count, " tokens of ",
              shard.bytes_per_token_, " bytes but the file holds ", size - kHeaderBytes, " bytes after the header");
  shard.count_ = static_cast<int64_t>(count);
  shard.tokens_ = p + kHeaderBytes;
  return shard;
}

int64_t TokenShard::token(int64_t i) const {
  const uint8_t* p = tokens_ + i * bytes_per_token_;
  return bytes_per_token_ == 2 ? read_le<uint16_t>(p) : read_le<uint32_t>(p);
}

void TokenShard::read(int64_t begin, int64_t n, int64_t* out) const {
  CONSA_CHECK(begin >= 0 && begin + n <= count_, path_, ": read of [", begin, ", ", begin + n, ") beyond ", count_,
              " tokens");
  for (int64_t i = 0; i < n; ++i) out[i] = token(begin + i);
}

int64_t TokenShard::max_token() const {
  int64_t m = -1;
  for (int64_t i = 0; i < count_; ++i) m = std::max(m, token(i));
  return m;
}

void write_token_shard(const std::string& path, const std::vector<int64_t>& ids) {
  int64_t max_id = 0;
  for (int64_t id : ids) {
    CONSA_CHECK(id >= 0 && id <= 0xFFFFFFFFll, path, ": token id ", id, " does not fit a uint32 shard");
    max_id = std::max(max_id, id);
  }
  const uint32_t width = max_id <= 0xFFFF ? 2 : 4;
  std::string bytes(kMagic, 8);
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(kTokenShardVersion, 4);
  put(width, 4);
  put(ids.size(), 8);
  for (int64_t id : ids) put(static_cast<uint64_t>(id), static_cast<int>(width));
  AtomicFileWriter out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace consa
