#pragma once
// The tokenizers consa-tokenize reads: tokenizer.json (consa::Tokenizer) and sentencepiece's
// tokenizer.model, behind the same interface.
#include <memory>
#include <string>

#include "consa/tokenizer/tokenizer.h"

namespace consa::tokenize {

// `path`: a model directory, a tokenizer.json or a tokenizer.model (resolve_tokenizer_file).
std::unique_ptr<Tokenizer> load_any_tokenizer(const std::string& path);

}  // namespace consa::tokenize
