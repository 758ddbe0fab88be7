#include "sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "consa/core/error.h"
#include "consa/core/strings.h"

namespace consa::tokenize {

namespace {

class SentencepieceTokenizer : public Tokenizer {
 public:
  explicit SentencepieceTokenizer(const std::string& file) {
    source_ = file;
    const auto status = sp_.Load(file);
    // The library's status names its own source lines, not the file: say what was expected.
    CONSA_CHECK(status.ok(), file, ": not a sentencepiece model (it does not parse as one); expected a "
                "sentencepiece tokenizer.model or a tokenizer.json");
    if (sp_.bos_id() >= 0) bos_id_ = sp_.bos_id();
    if (sp_.eos_id() >= 0) eos_id_ = sp_.eos_id();
    // Sentencepiece models (Llama 2, Mistral) start documents with BOS unless the
    // tokenizer_config.json beside them says otherwise.
    adds_bos_ = bos_id_.has_value();
    const auto config = std::filesystem::path(file).parent_path() / "tokenizer_config.json";
    if (std::filesystem::is_regular_file(config)) {
      std::ifstream in(config);
      const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      CONSA_CHECK(!j.is_discarded(), config.string(), ": not valid JSON");
      if (j.contains("add_bos_token") && j.at("add_bos_token").is_boolean()) adds_bos_ = j.at("add_bos_token").get<bool>();
    }
  }

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(std::string(text), &ids);
    CONSA_CHECK(status.ok(), source_, ": encoding failed (", status.ToString(), ")");
    std::vector<int64_t> out;
    if (add_special_tokens && adds_bos_ && bos_id_) out.push_back(*bos_id_);
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override {
    std::vector<int> pieces;
    for (int64_t id : ids) {
      if (id < 0 || id >= sp_.GetPieceSize()) continue;
      if (skip_special_tokens && sp_.IsControl(static_cast<int>(id))) continue;
      pieces.push_back(static_cast<int>(id));
    }
    std::string text;
    const auto status = sp_.Decode(pieces, &text);
    CONSA_CHECK(status.ok(), source_, ": decoding failed (", status.ToString(), ")");
    return text;
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_any_tokenizer(const std::string& path) {
  const std::string file = resolve_tokenizer_file(path);
  if (ends_with(file, ".json")) return load_tokenizer_json(file);
  return std::make_unique<SentencepieceTokenizer>(file);
}

}  // namespace consa::tokenize
