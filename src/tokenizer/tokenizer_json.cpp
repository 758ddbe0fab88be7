// Hugging Face tokenizer.json of the byte-level BPE kind, encoded as tokenizers does it:
//   added tokens on the raw text -> normalizer -> added tokens on the normalized text ->
//   pre-tokenizers (Split regexes, ByteLevel) -> BPE per pre-token -> post-processor template.
#include <nlohmann/json.hpp>

#include <atomic>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "added_vocabulary.h"
#include "bpe.h"
#include "consa/core/error.h"
#include "consa/tokenizer/tokenizer.h"
#include "unicode.h"

#if defined(CONSA_WITH_TOKENIZER_JSON)
#include <oniguruma.h>
#endif

namespace consa {

#if defined(CONSA_WITH_TOKENIZER_JSON)

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kSupported =
    "supported: normalizers NFC, NFD, NFKC, NFKD and Sequence; pre-tokenizers Split (Isolated or Removed), "
    "ByteLevel and Sequence; model BPE; decoder ByteLevel; post-processors ByteLevel, TemplateProcessing and Sequence";

// GPT-2's pattern, which ByteLevel applies itself when use_regex is true.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A compiled Oniguruma pattern, Ruby syntax and UTF-8 as tokenizers compiles them. Searching is
// thread-safe: each thread keeps its own match region.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    static std::once_flag once;
    std::call_once(once, [] {
      OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
      onig_initialize(encodings, 1);
    });
    OnigErrorInfo info;
    const auto* p = reinterpret_cast<const OnigUChar*>(pattern.data());
    const int r = onig_new(&regex_, p, p + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_RUBY, &info);
    if (r != ONIG_NORMAL) {
      OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(message, r, &info);
      fail(where, ": the regex does not compile (", reinterpret_cast<char*>(message), "): ", pattern);
    }
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { onig_free(regex_); }

  // Non-empty matches, left to right, as [begin, end) byte offsets.
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
    struct Region {
      OnigRegion* region = onig_region_new();
      ~Region() { onig_region_free(region, 1); }
    };
    thread_local Region r;
    const auto* s = reinterpret_cast<const OnigUChar*>(text.data());
    const auto* end = s + text.size();
    size_t at = 0;
    while (at < text.size()) {
      const int found = onig_search(regex_, s, end, s + at, end, r.region, ONIG_OPTION_NONE);
      if (found == ONIG_MISMATCH) return;
      CONSA_CHECK(found >= 0, "regex search failed (Oniguruma error ", found, ")");
      const size_t b = static_cast<size_t>(r.region->beg[0]), e = static_cast<size_t>(r.region->end[0]);
      if (e > b) {
        out.emplace_back(b, e);
        at = e;
      } else {  // an empty match: step over one character
        int n;
        unicode::decode_at(text, b, &n);
        at = b + n;
      }
    }
  }

 private:
  OnigRegex regex_ = nullptr;
};

// A literal Split pattern as a regex.
std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x80 && !std::isalnum(static_cast<unsigned char>(c))) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

struct PreTokenizeStep {
  std::unique_ptr<Regex> regex;
  bool keep_matches = true;  // Isolated: matches and gaps are pieces; Removed: gaps only
};

const json& member(const json& j, const char* key, const std::string& where) {
  CONSA_CHECK(j.is_object() && j.contains(key), where, ": missing key '", key, "'");
  return j.at(key);
}

bool flag(const json& j, const char* key, bool fallback, const std::string& where) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  CONSA_CHECK(j.at(key).is_boolean(), where, ".", key, ": expected true or false");
  return j.at(key).get<bool>();
}

std::string text_of(const json& j, const std::string& where) {
  CONSA_CHECK(j.is_string(), where, ": expected a string");
  return j.get<std::string>();
}

// Calls `step` on every step of one part of the pipeline (normalizer, pre_tokenizer, decoder,
// post_processor) in order, a "Sequence" flattened through its list under `list_key`. A null
// part has no steps.
using StepVisitor = std::function<void(const json& step, const std::string& kind, const std::string& where)>;
void visit_steps(const json& part, const char* list_key, const std::string& where, const StepVisitor& visit,
                 bool top = true) {
  if (top && part.is_null()) return;
  const std::string kind = text_of(member(part, "type", where), where + ".type");
  if (kind != "Sequence") return visit(part, kind, where);
  const json& list = member(part, list_key, where);
  for (size_t i = 0; i < list.size(); ++i)
    visit_steps(list[i], list_key, where + "." + list_key + "[" + std::to_string(i) + "]", visit, false);
}

// A token named in tokenizer_config.json: a string, or an AddedToken object with "content".
std::optional<std::string> config_token(const json& config, const char* key) {
  if (!config.contains(key) || config.at(key).is_null()) return std::nullopt;
  const json& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content").get<std::string>();
  return std::nullopt;
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  CONSA_CHECK(in.good(), path.string(), ": cannot read");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail(path.string(), ": not valid JSON (", e.what(), ")");
  }
}

class ByteLevelBpeTokenizer : public Tokenizer {
 public:
  ByteLevelBpeTokenizer(const json& spec, const json& config, const std::string& file);

  std::vector<int64_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override { return vocab_size_; }

 private:
  void encode_normalized(std::string_view text, std::vector<int64_t>& out) const;
  void encode_word(std::string_view word, std::vector<int64_t>& out) const;
  std::optional<int64_t> token_id(const std::string& token) const;

  std::unique_ptr<BpeModel> model_;
  std::vector<unicode::Form> normalizers_;
  std::vector<PreTokenizeStep> pre_tokenizers_;
  std::unique_ptr<AddedTokenMatcher> raw_added_, normalized_added_;
  std::unordered_map<int64_t, AddedToken> added_by_id_;
  std::vector<int64_t> template_prefix_, template_suffix_;
  bool byte_level_decoder_ = false;
  int64_t vocab_size_ = 0;
  uint64_t instance_;  // tells this tokenizer's word cache from another's
};

std::atomic<uint64_t> next_instance{1};

ByteLevelBpeTokenizer::ByteLevelBpeTokenizer(const json& spec, const json& config, const std::string& file)
    : instance_(next_instance++) {
  source_ = file;
  // The model.
  const json& model = member(spec, "model", file);
  const std::string type = model.contains("type") ? text_of(model.at("type"), file + ": model.type") : "BPE";
  CONSA_CHECK(type == "BPE", file, ": model.type '", type, "' is not supported (", kSupported,
              "); for a sentencepiece model give its tokenizer.model");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    CONSA_CHECK(!model.contains(key) || model.at(key).is_null() || model.at(key) == "", file, ": model.", key,
                " is set: only byte-level BPE without subword affixes is supported");
  CONSA_CHECK(!model.contains("dropout") || model.at("dropout").is_null() || model.at("dropout") == 0, file,
              ": model.dropout is set: BPE dropout is a training-time option; save the tokenizer without it");
  CONSA_CHECK(!flag(model, "byte_fallback", false, file + ": model"), file,
              ": model.byte_fallback is true: that is a sentencepiece-style tokenizer.json, which consa does not read; "
              "give the model's tokenizer.model instead");
  const json& vocab_json = member(model, "vocab", file + ": model");
  CONSA_CHECK(vocab_json.is_object(), file, ": model.vocab: expected an object of token -> id");
  std::unordered_map<std::string, int32_t> vocab;
  vocab.reserve(vocab_json.size());
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    CONSA_CHECK(it.value().is_number_integer(), file, ": model.vocab['", it.key(), "']: expected an integer id");
    vocab.emplace(it.key(), it.value().get<int32_t>());
  }
  std::vector<std::pair<std::string, std::string>> merges;
  const json& merges_json = member(model, "merges", file + ": model");
  CONSA_CHECK(merges_json.is_array(), file, ": model.merges: expected a list");
  merges.reserve(merges_json.size());
  for (size_t i = 0; i < merges_json.size(); ++i) {
    const json& m = merges_json[i];
    if (m.is_string()) {  // the format before tokenizers 0.20: "left right"
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      CONSA_CHECK(space != std::string::npos && space > 0 && space + 1 < s.size(), file, ": model.merges[", i,
                  "]: expected 'left right', got '", s, "'");
      merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else {
      CONSA_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), file, ": model.merges[", i,
                  "]: expected a pair of token strings");
      merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
  }
  BpeModel::Options options;
  options.ignore_merges = flag(model, "ignore_merges", false, file + ": model");
  options.fuse_unk = flag(model, "fuse_unk", false, file + ": model");
  if (model.contains("unk_token") && !model.at("unk_token").is_null()) {
    const std::string unk = text_of(model.at("unk_token"), file + ": model.unk_token");
    const auto it = vocab.find(unk);
    CONSA_CHECK(it != vocab.end(), file, ": model.unk_token '", unk, "' is not in model.vocab");
    options.unk_id = it->second;
  }
  model_ = std::make_unique<BpeModel>(std::move(vocab), merges, options, file);
  vocab_size_ = model_->size();

  // Added tokens: the ones matched on the raw text, and the normalized ones.
  std::vector<AddedToken> raw, normalized;
  if (spec.contains("added_tokens") && !spec.at("added_tokens").is_null()) {
    const json& list = spec.at("added_tokens");
    CONSA_CHECK(list.is_array(), file, ": added_tokens: expected a list");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = file + ": added_tokens[" + std::to_string(i) + "]";
      AddedToken t;
      CONSA_CHECK(member(list[i], "id", where).is_number_integer(), where, ".id: expected an integer");
      t.id = list[i].at("id").get<int64_t>();
      CONSA_CHECK(t.id >= 0, where, ".id: expected >= 0, got ", t.id);
      t.content = text_of(member(list[i], "content", where), where + ".content");
      t.single_word = flag(list[i], "single_word", false, where);
      t.lstrip = flag(list[i], "lstrip", false, where);
      t.rstrip = flag(list[i], "rstrip", false, where);
      t.special = flag(list[i], "special", false, where);
      t.normalized = flag(list[i], "normalized", !t.special, where);
      vocab_size_ = std::max(vocab_size_, t.id + 1);
      added_by_id_[t.id] = t;
      (t.normalized ? normalized : raw).push_back(t);
    }
  }

  // The normalizer.
  visit_steps(spec.value("normalizer", json()), "normalizers", file + ": normalizer",
              [&](const json&, const std::string& kind, const std::string& where) {
                if (kind == "NFC") normalizers_.push_back(unicode::Form::NFC);
                else if (kind == "NFD") normalizers_.push_back(unicode::Form::NFD);
                else if (kind == "NFKC") normalizers_.push_back(unicode::Form::NFKC);
                else if (kind == "NFKD") normalizers_.push_back(unicode::Form::NFKD);
                else fail(where, ": normalizer '", kind, "' is not supported (", kSupported, ")");
              });
  // Normalized added tokens are matched in normalized text, so in their normalized spelling.
  for (AddedToken& t : normalized)
    for (unicode::Form f : normalizers_) t.content = unicode::normalize(t.content, f);
  raw_added_ = std::make_unique<AddedTokenMatcher>(std::move(raw));
  normalized_added_ = std::make_unique<AddedTokenMatcher>(std::move(normalized));

  // The pre-tokenizers. A byte-level BPE needs ByteLevel among them: it is what makes every
  // byte a symbol of the model.
  bool byte_level = false;
  visit_steps(spec.value("pre_tokenizer", json()), "pretokenizers", file + ": pre_tokenizer",
              [&](const json& p, const std::string& kind, const std::string& where) {
    if (kind == "Split") {
      const json& pattern = member(p, "pattern", where);
      std::string regex;
      if (pattern.contains("Regex")) regex = text_of(pattern.at("Regex"), where + ".pattern.Regex");
      else if (pattern.contains("String")) regex = escape_literal(text_of(pattern.at("String"), where + ".pattern.String"));
      else fail(where, ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
      CONSA_CHECK(!flag(p, "invert", false, where), where, ".invert: only false is supported");
      const std::string behavior = text_of(member(p, "behavior", where), where + ".behavior");
      CONSA_CHECK(behavior == "Isolated" || behavior == "Removed", where, ".behavior '", behavior,
                  "' is not supported (Isolated, Removed)");
      pre_tokenizers_.push_back({std::make_unique<Regex>(regex, where), behavior == "Isolated"});
    } else if (kind == "ByteLevel") {
      CONSA_CHECK(!flag(p, "add_prefix_space", false, where), where,
                  ".add_prefix_space: only false is supported (the Qwen2 and Llama-3 setting)");
      if (flag(p, "use_regex", true, where)) pre_tokenizers_.push_back({std::make_unique<Regex>(kGpt2Pattern, where), true});
      byte_level = true;
    } else if (kind == "Metaspace") {
      fail(where, ": a Metaspace pre-tokenizer is a sentencepiece-style tokenizer.json, which consa does not read; "
                  "give the model's tokenizer.model instead");
    } else {
      fail(where, ": pre-tokenizer '", kind, "' is not supported (", kSupported, ")");
    }
  });
  CONSA_CHECK(byte_level, file, ": pre_tokenizer has no ByteLevel step: only byte-level BPE tokenizers are supported (",
              kSupported, ")");

  // The decoder.
  visit_steps(spec.value("decoder", json()), "decoders", file + ": decoder",
              [&](const json&, const std::string& kind, const std::string& where) {
                if (kind == "ByteLevel") byte_level_decoder_ = true;
                else fail(where, ": decoder '", kind, "' is not supported (", kSupported, ")");
              });

  // The post-processor: what encode(add_special_tokens) puts around the text.
  visit_steps(spec.value("post_processor", json()), "processors", file + ": post_processor",
              [&](const json& p, const std::string& kind, const std::string& where) {
    if (kind == "ByteLevel") {
      // Offsets only.
    } else if (kind == "TemplateProcessing") {
      const json& single = member(p, "single", where);
      const json& specials = member(p, "special_tokens", where);
      bool after_text = false;
      for (const json& item : single) {
        if (item.contains("Sequence")) {
          after_text = true;
          continue;
        }
        const std::string name = text_of(member(member(item, "SpecialToken", where + ".single"), "id", where), where);
        const json& ids = member(member(specials, name.c_str(), where + ".special_tokens"), "ids", where);
        for (const json& id : ids) (after_text ? template_suffix_ : template_prefix_).push_back(id.get<int64_t>());
      }
    } else {
      fail(where, ": post-processor '", kind, "' is not supported (", kSupported, ")");
    }
  });

  // BOS/EOS: tokenizer_config.json's, else the template's leading token as BOS.
  const std::string config_where = (fs::path(file).parent_path() / "tokenizer_config.json").string();
  const auto resolve = [&](const std::optional<std::string>& token, const char* key) -> std::optional<int64_t> {
    if (!token) return std::nullopt;
    const auto id = token_id(*token);
    CONSA_CHECK(id.has_value(), config_where, ": ", key, " '", *token, "' is not a token of ", file);
    return id;
  };
  bos_id_ = resolve(config_token(config, "bos_token"), "bos_token");
  eos_id_ = resolve(config_token(config, "eos_token"), "eos_token");
  if (!bos_id_ && !template_prefix_.empty()) bos_id_ = template_prefix_.front();
  adds_bos_ = config.contains("add_bos_token") && config.at("add_bos_token").is_boolean()
                  ? config.at("add_bos_token").get<bool>()
                  : (bos_id_ && !template_prefix_.empty() && template_prefix_.front() == *bos_id_);
}

std::optional<int64_t> ByteLevelBpeTokenizer::token_id(const std::string& token) const {
  for (const auto& [id, t] : added_by_id_)
    if (t.content == token) return id;
  if (const auto id = model_->id(token)) return *id;
  // The configs name tokens by their text; the vocabulary spells them in byte-level characters.
  std::string chars;
  for (unsigned char b : token) chars += byte_level_char(b);
  if (const auto id = model_->id(chars)) return *id;
  return std::nullopt;
}

void ByteLevelBpeTokenizer::encode_word(std::string_view word, std::vector<int64_t>& out) const {
  // Words repeat: a cache per thread, as tokenizers keeps one per model.
  constexpr size_t kMaxCachedBytes = 64, kMaxEntries = 1 << 17;
  struct Cache {
    uint64_t owner = 0;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  thread_local Cache cache;
  if (word.size() > kMaxCachedBytes) return model_->encode_word(word, out);
  if (cache.owner != instance_ || cache.words.size() > kMaxEntries) {
    cache.words.clear();
    cache.owner = instance_;
  }
  const std::string key(word);
  const auto it = cache.words.find(key);
  if (it != cache.words.end()) {
    out.insert(out.end(), it->second.begin(), it->second.end());
    return;
  }
  const size_t before = out.size();
  model_->encode_word(word, out);
  cache.words.emplace(key, std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(before), out.end()));
}

void ByteLevelBpeTokenizer::encode_normalized(std::string_view text, std::vector<int64_t>& out) const {
  std::string normalized;
  if (!normalizers_.empty()) {
    normalized = std::string(text);
    for (unicode::Form f : normalizers_) normalized = unicode::normalize(normalized, f);
    text = normalized;
  }
  std::vector<TextPiece> pieces;
  normalized_added_->split(text, pieces);
  std::vector<std::string_view> spans, next;
  std::vector<std::pair<size_t, size_t>> matches;
  for (const TextPiece& piece : pieces) {
    if (piece.id >= 0) {
      out.push_back(piece.id);
      continue;
    }
    spans.assign(1, piece.text);
    for (const PreTokenizeStep& step : pre_tokenizers_) {
      next.clear();
      for (std::string_view span : spans) {
        matches.clear();
        step.regex->find_all(span, matches);
        size_t done = 0;
        for (const auto& [b, e] : matches) {
          if (b > done) next.push_back(span.substr(done, b - done));
          if (step.keep_matches) next.push_back(span.substr(b, e - b));
          done = e;
        }
        if (done < span.size()) next.push_back(span.substr(done));
      }
      spans.swap(next);
    }
    for (std::string_view word : spans) encode_word(word, out);
  }
}

std::vector<int64_t> ByteLevelBpeTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string valid;
  if (!unicode::is_valid_utf8(text)) {  // tokenizers only ever sees valid UTF-8 (a Rust str)
    valid = unicode::to_valid_utf8(text);
    text = valid;
  }
  std::vector<int64_t> out;
  if (add_special_tokens) out = template_prefix_;
  std::vector<TextPiece> pieces;
  raw_added_->split(text, pieces);
  for (const TextPiece& piece : pieces) {
    if (piece.id >= 0) out.push_back(piece.id);
    else encode_normalized(piece.text, out);
  }
  if (add_special_tokens) out.insert(out.end(), template_suffix_.begin(), template_suffix_.end());
  return out;
}

std::string ByteLevelBpeTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string_view> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    const auto added = added_by_id_.find(id);
    if (added != added_by_id_.end()) {
      if (!(skip_special_tokens && added->second.special)) tokens.push_back(added->second.content);
      continue;
    }
    const std::string& token = model_->token(id);
    if (!token.empty()) tokens.push_back(token);  // ids outside the vocabulary are skipped, as in tokenizers
  }
  std::string bytes;
  if (!byte_level_decoder_) {  // no decoder: tokenizers joins the tokens with spaces
    for (size_t i = 0; i < tokens.size(); ++i) (bytes += i ? " " : "") += tokens[i];
    return bytes;
  }
  std::string token_bytes;
  for (std::string_view token : tokens) {
    // A token whose characters are all byte-level ones is those bytes; any other is its text.
    token_bytes.clear();
    bool all = true;
    for (size_t i = 0; i < token.size() && all;) {
      int n;
      const int b = byte_level_byte(unicode::decode_at(token, i, &n));
      all = b >= 0;
      token_bytes.push_back(static_cast<char>(b));
      i += n;
    }
    bytes += all ? std::string_view(token_bytes) : token;
  }
  return unicode::to_valid_utf8(bytes);
}

}  // namespace

bool tokenizer_json_supported() { return true; }

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  fs::path file = path;
  if (fs::is_directory(file)) file /= "tokenizer.json";
  CONSA_CHECK(fs::is_regular_file(file), file.string(), ": no such file (expected a tokenizer.json)");
  const json spec = read_json(file);
  CONSA_CHECK(spec.is_object(), file.string(), ": expected a JSON object (a Hugging Face tokenizer.json)");
  const fs::path config_path = file.parent_path() / "tokenizer_config.json";
  const json config = fs::is_regular_file(config_path) ? read_json(config_path) : json::object();
  return std::make_unique<ByteLevelBpeTokenizer>(spec, config, file.string());
}

#else  // built without Oniguruma / utf8proc

bool tokenizer_json_supported() { return false; }

std::unique_ptr<Tokenizer> load_tokenizer_json(const std::string& path) {
  fail(path, ": this consa was built without tokenizer.json support (it needs Oniguruma and utf8proc: "
             "apt-get install libonig-dev libutf8proc-dev, then rebuild)");
}

#endif

}  // namespace consa
