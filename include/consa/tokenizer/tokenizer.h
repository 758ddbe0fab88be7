#pragma once
// Text <-> token ids with a model's own tokenizer, in C++ (no Python, no LibTorch).
//
// Hugging Face tokenizer.json files of the byte-level BPE kind (Qwen2/Qwen3, Llama-3, GPT-2
// style) are read here and encode exactly as the `tokenizers` library does: added and special
// tokens matched first, the normalizer (NFC and friends), the Split / ByteLevel pre-tokenizers with
// their regexes (Oniguruma, the engine tokenizers itself uses), BPE merges by rank with
// ignore_merges, the TemplateProcessing post-processor, and the ByteLevel decoder.
// sentencepiece tokenizer.model files are read by the consa-tokenize program instead (its
// protobuf copy cannot share a process with LibTorch's).
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace consa {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Ids of `text`. Special and added tokens written in the text are matched as such.
  // add_special_tokens: also what the post-processor adds (Llama-3's BOS), as HF's encode does.
  virtual std::vector<int64_t> encode(std::string_view text, bool add_special_tokens = false) const = 0;
  // Text of `ids`; skip_special_tokens drops special tokens, as HF's decode does.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const = 0;

  virtual int64_t vocab_size() const = 0;  // one past the largest id, added tokens included
  std::optional<int64_t> bos_id() const { return bos_id_; }
  std::optional<int64_t> eos_id() const { return eos_id_; }
  // Whether a document starts with BOS: tokenizer_config.json's add_bos_token when it is set,
  // else whether the post-processor puts a token before the text.
  bool adds_bos() const { return adds_bos_; }

  // A training document: [BOS when the model adds one] ids [EOS when there is one].
  std::vector<int64_t> encode_document(std::string_view text) const { return document_ids(encode(text), eos_id_); }
  // [BOS when the model adds one] `body` [`eos` when given]: a document's ids around its text's.
  std::vector<int64_t> document_ids(const std::vector<int64_t>& body, std::optional<int64_t> eos) const;

  // encode(text) of every one of `texts`, in order, on `threads` threads (0: every core).
  std::vector<std::vector<int64_t>> encode_all(const std::vector<std::string_view>& texts, int threads = 0) const;

  const std::string& source() const { return source_; }  // the file it was read from

 protected:
  std::optional<int64_t> bos_id_, eos_id_;
  bool adds_bos_ = false;
  std::string source_;
};

// Whether this build reads tokenizer.json files (it needs Oniguruma and utf8proc).
bool tokenizer_json_supported();

// Reads `path`: a tokenizer.json, or a model directory holding one (with tokenizer_config.json
// beside it for BOS/EOS). Unsupported normalizers, pre-tokenizers, models, decoders and
// post-processors are refused with a message that lists the supported ones.
std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path);

// "1 2 3" or "1,2,3": token ids as --encode prints them and --prompt-ids takes them; `option`
// names the flag in errors. At least one id.
std::vector<int64_t> parse_token_ids(const std::string& text, const std::string& option);

// Which file a --tokenizer / data.tokenizer path means: `path` itself when it is a file, else
// the directory's tokenizer.json, else its tokenizer.model. Fails naming what was looked for.
std::string resolve_tokenizer_file(const std::string& path);

}  // namespace consa
