#include "added_vocabulary.h"

#include "unicode.h"

namespace consa {

namespace {

// Where the code point that ends text[0, end) starts (valid UTF-8, end > 0).
size_t last_char_start(std::string_view text, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
  return i;
}

// The code point that ends text[0, end).
char32_t last_char(std::string_view text, size_t end) {
  int n;
  return unicode::decode_at(text, last_char_start(text, end), &n);
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  trie_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& s = tokens_[t].content;
    if (s.empty()) continue;
    first_byte_[static_cast<unsigned char>(s[0])] = true;
    int node = 0;
    for (unsigned char c : s) {
      auto it = trie_[node].children.find(c);
      if (it == trie_[node].children.end()) {
        trie_.emplace_back();
        it = trie_[node].children.emplace(c, static_cast<int>(trie_.size() - 1)).first;
      }
      node = it->second;
    }
    if (trie_[node].token < 0) trie_[node].token = static_cast<int>(t);
  }
}

int AddedTokenMatcher::longest_at(std::string_view text, size_t pos) const {
  int node = 0, found = -1;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto it = trie_[node].children.find(static_cast<unsigned char>(text[i]));
    if (it == trie_[node].children.end()) break;
    node = it->second;
    if (trie_[node].token >= 0) found = trie_[node].token;
  }
  return found;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<TextPiece>& out) const {
  size_t done = 0;  // text before this is in `out`
  const auto emit_text = [&](size_t begin, size_t end) {
    if (end > begin) out.push_back({-1, text.substr(begin, end - begin)});
  };
  for (size_t pos = 0; pos < text.size();) {
    const int t = first_byte_[static_cast<unsigned char>(text[pos])] ? longest_at(text, pos) : -1;
    if (t < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[t];
    size_t start = pos, stop = pos + token.content.size();
    if (token.single_word) {
      int n;
      const bool word_before = start > 0 && unicode::is_word_character(last_char(text, start));
      const bool word_after = stop < text.size() && unicode::is_word_character(unicode::decode_at(text, stop, &n));
      if (word_before || word_after) {
        pos = stop;  // not a word of its own; the search goes on after it, as aho-corasick's does
        continue;
      }
    }
    if (token.lstrip) {
      while (start > done && unicode::is_whitespace(last_char(text, start))) start = last_char_start(text, start);
    }
    if (token.rstrip) {
      int n;
      while (stop < text.size() && unicode::is_whitespace(unicode::decode_at(text, stop, &n))) stop += n;
    }
    emit_text(done, start);
    out.push_back({token.id, text.substr(start, stop - start)});
    done = pos = stop;
  }
  emit_text(done, text.size());
}

}  // namespace consa
