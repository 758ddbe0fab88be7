#pragma once
// The BPE model of a byte-level tokenizer.json: vocabulary, merges by rank, and the merge loop
// of Hugging Face tokenizers (lowest rank first, leftmost among equals), on the bytes of one
// pre-token.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace consa {

class BpeModel {
 public:
  struct Options {
    bool ignore_merges = false;       // a pre-token that is itself in the vocabulary is one token
    std::optional<int32_t> unk_id;    // for bytes without a token; without one they are dropped
    bool fuse_unk = false;            // consecutive unknowns become one unk
  };

  // vocab: byte-level token strings -> ids; merges: pairs of token strings, highest priority first.
  BpeModel(std::unordered_map<std::string, int32_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, Options options, const std::string& source);

  // Appends the ids of one pre-token, given as raw bytes.
  void encode_word(std::string_view bytes, std::vector<int64_t>& out) const;

  int64_t size() const { return static_cast<int64_t>(id_to_token_.size()); }
  // The byte-level string of an id, empty when the id is not in the vocabulary.
  const std::string& token(int64_t id) const;
  std::optional<int32_t> id(const std::string& token) const;

 private:
  void merge(std::vector<int32_t>& symbols) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  struct Merge {
    int32_t rank, new_id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank and result
  int32_t byte_ids_[256];                       // the token of each single byte, -1 if none
  Options options_;
};

// GPT-2's byte <-> printable character table (bytes_to_unicode) as UTF-8 strings.
const std::string& byte_level_char(unsigned char b);
// The byte of a byte-level character, -1 if `c` is not one.
int byte_level_byte(char32_t c);

}  // namespace consa
