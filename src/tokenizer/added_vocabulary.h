#pragma once
// Added and special tokens of a tokenizer.json, found in text before anything else runs, as
// tokenizers' AddedVocabulary does: leftmost-longest matches, with single_word, lstrip and rstrip.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace consa {

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// A piece of text: an added token's id, or text for the rest of the pipeline (id < 0).
struct TextPiece {
  int64_t id;
  std::string_view text;
};

// Matches one set of added tokens (those matched on the raw text, or on the normalized text).
class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }
  // Splits `text` into added tokens and the text between them (empty pieces left out).
  void split(std::string_view text, std::vector<TextPiece>& out) const;

 private:
  // The longest token starting at text[pos], or -1.
  int longest_at(std::string_view text, size_t pos) const;

  std::vector<AddedToken> tokens_;
  struct Node {
    std::unordered_map<unsigned char, int> children;
    int token = -1;  // index into tokens_ of the token ending here
  };
  std::vector<Node> trie_;
  bool first_byte_[256] = {};
};

}  // namespace consa
