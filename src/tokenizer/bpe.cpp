#include "bpe.h"

#include <array>
#include <queue>

#include "consa/core/error.h"
#include "unicode.h"

namespace consa {

namespace {

struct ByteLevelTable {
  std::array<std::string, 256> chars;
  std::array<int, 324> bytes;  // code point -> byte, -1 where none
  ByteLevelTable() {
    bytes.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const int c = printable ? b : 256 + extra++;
      bytes[c] = b;
      std::string s;
      if (c < 0x80) {
        s.push_back(static_cast<char>(c));
      } else {
        s.push_back(static_cast<char>(0xC0 | (c >> 6)));
        s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      }
      chars[b] = s;
    }
  }
};

const ByteLevelTable& table() {
  static const ByteLevelTable t;
  return t;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

}  // namespace

const std::string& byte_level_char(unsigned char b) { return table().chars[b]; }
int byte_level_byte(char32_t c) { return c < 324 ? table().bytes[c] : -1; }

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, Options options,
                   const std::string& source)
    : vocab_(std::move(vocab)), options_(options) {
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab_) {
    CONSA_CHECK(id >= 0, source, ": model.vocab: token id ", id, " is negative");
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  for (const auto& [token, id] : vocab_) id_to_token_[id] = token;
  for (int b = 0; b < 256; ++b) {
    const auto it = vocab_.find(byte_level_char(static_cast<unsigned char>(b)));
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    const auto a = vocab_.find(left), b = vocab_.find(right), joined = vocab_.find(left + right);
    CONSA_CHECK(a != vocab_.end() && b != vocab_.end(), source, ": model.merges[", rank, "]: '", left, "' '", right,
                "' merges a token that is not in model.vocab");
    CONSA_CHECK(joined != vocab_.end(), source, ": model.merges[", rank, "]: the merge of '", left, "' and '", right,
                "' is not in model.vocab");
    // A pair listed twice keeps its last rank, as tokenizers' map of merges does.
    merges_[pair_key(a->second, b->second)] = Merge{static_cast<int32_t>(rank), joined->second};
  }
}

const std::string& BpeModel::token(int64_t id) const {
  static const std::string none;
  return id >= 0 && id < size() ? id_to_token_[id] : none;
}

std::optional<int32_t> BpeModel::id(const std::string& token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::encode_word(std::string_view bytes, std::vector<int64_t>& out) const {
  if (bytes.empty()) return;
  if (options_.ignore_merges) {
    std::string chars;
    for (unsigned char b : bytes) chars += byte_level_char(b);
    const auto it = vocab_.find(chars);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Initial symbols: one per byte. A byte-level character is one symbol, so a byte without a
  // token is unknown (dropped, or unk).
  std::vector<int32_t> symbols;
  symbols.reserve(bytes.size());
  bool last_unknown = false;
  for (unsigned char b : bytes) {
    const int32_t id = byte_ids_[b];
    if (id >= 0) {
      symbols.push_back(id);
      last_unknown = false;
    } else if (options_.unk_id) {
      if (!(options_.fuse_unk && last_unknown)) symbols.push_back(*options_.unk_id);
      last_unknown = true;
    }
  }
  merge(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
}

void BpeModel::merge(std::vector<int32_t>& symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;
  // A doubly linked list over the symbols, merged in place: tokenizers' Word::merge_all.
  std::vector<int> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto push = [&](int pos, int right) {
    const auto it = merges_.find(pair_key(symbols[pos], symbols[right]));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int right = next[top.pos];
    const auto it = merges_.find(pair_key(symbols[top.pos], symbols[right]));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale entry
    symbols[top.pos] = top.new_id;
    alive[right] = 0;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) push(prev[top.pos], top.pos);
    if (next[top.pos] >= 0) push(top.pos, next[top.pos]);
  }
  int kept = 0;
  for (int i = 0; i >= 0; i = next[i]) symbols[kept++] = symbols[i];
  symbols.resize(kept);
}

}  // namespace consa
