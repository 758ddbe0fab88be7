#pragma once
// UTF-8 and Unicode helpers for the tokenizers: validity, normalization forms, whitespace.
#include <cstdint>
#include <string>
#include <string_view>

namespace consa::unicode {

// Length of the valid UTF-8 sequence at text[i], or 0 when it is not one.
int valid_sequence_length(std::string_view text, size_t i);

// `text` with every invalid UTF-8 sequence replaced by U+FFFD, one per maximal subpart, as
// Rust's String::from_utf8_lossy (and so Hugging Face's decoders) does. `replaced` counts them.
std::string to_valid_utf8(std::string_view text, int64_t* replaced = nullptr);
bool is_valid_utf8(std::string_view text);

// The code point at text[i] (valid UTF-8 assumed) and its length in bytes.
char32_t decode_at(std::string_view text, size_t i, int* length);

// Rust's char::is_whitespace (the White_Space property).
bool is_whitespace(char32_t c);
// Letters, numbers and '_' (what a single_word added token must not touch).
bool is_word_character(char32_t c);

enum class Form { NFC, NFD, NFKC, NFKD };
// `text` (valid UTF-8) in normalization form `form`.
std::string normalize(std::string_view text, Form form);

}  // namespace consa::unicode
