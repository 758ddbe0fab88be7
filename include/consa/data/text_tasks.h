#pragma once
// The synthetic retrieval tasks as natural-language text in a model's own tokens, in the style of
// the passkey prompts of LongLoRA and DuoAttention: an instruction, haystack filler (from a text
// file, or built-in sentences), the needle sentences, the question, and the answer.
//
// passkey             "... The pass key is 71432. Remember it. 71432 is the pass key. ..."
//                     "What is the pass key? The pass key is" -> " 71432"
// multi_key_needle    m needles "The special magic number for <word> is: 4821." and the question
//                     for one of them
// associative_recall  the context is pairs "The value of <word> is 37." and the question for one
//
// Segments (instruction, filler sentences, needles, question, answer) are tokenized one by one and
// joined, so that the answer's tokens are exactly those of " <value>" and can be scored alone.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "consa/data/synthetic.h"

namespace consa {

class Tokenizer;

class TextTasks {
 public:
  // `filler_path`: a text file whose lines are haystack sentences; empty: built-in sentences.
  TextTasks(std::shared_ptr<const Tokenizer> tokenizer, const std::string& filler_path);

  SyntheticSample sample(SyntheticTask task, const SyntheticOptions& options, int64_t index) const;
  const Tokenizer& tokenizer() const { return *tokenizer_; }

 private:
  std::vector<int64_t> encode(const std::string& text) const;

  std::shared_ptr<const Tokenizer> tokenizer_;
  std::vector<std::vector<int64_t>> filler_;  // haystack sentences, tokenized
};

// data.tokenizer / --tokenizer for text tasks: a tokenizer.json (or a directory with one), and
// the filler file (may be empty). Refuses sentencepiece models, naming `option`.
std::shared_ptr<const TextTasks> load_text_tasks(const std::string& tokenizer_path, const std::string& filler_path,
                                                 const std::string& option);

}  // namespace consa
