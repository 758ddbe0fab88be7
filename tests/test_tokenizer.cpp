// tokenizer.json in C++ against Hugging Face tokenizers: the fixtures in
// tests/fixtures/tokenizers/ hold two byte-level BPE tokenizers (Qwen2's and Llama-3's
// pre-tokenizer configurations), hard cases, and the ids and texts tokenizers itself gave
// (scripts/make_tokenizer_fixtures.py). Every case must match exactly.
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>

#include "consa/core/error.h"
#include "consa/tokenizer/tokenizer.h"
#include "helpers.h"

using consa_test::contains;
using consa_test::fixture;
using consa_test::scratch_dir;
using consa_test::write_text;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// A copy of a fixture tokenizer.json with `edit` applied, in a scratch directory.
std::string edited_tokenizer(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json spec = read_json(fixture("tokenizers/" + name + "/tokenizer.json"));
  edit(spec);
  const std::string dir = scratch_dir("tokenizer-edit");
  write_text(dir + "/tokenizer.json", spec.dump());
  return dir;
}

}  // namespace

TEST_CASE("tokenizer.json encodes and decodes every hard case as Hugging Face tokenizers does", "[tokenizer]") {
  REQUIRE(consa::tokenizer_json_supported());  // the test build needs libonig-dev and libutf8proc-dev
  const nlohmann::json cases = read_json(fixture("tokenizers/cases.json"));
  for (const std::string name : {"qwen2_style", "llama3_style"}) {
    INFO(name);
    const auto tokenizer = consa::load_tokenizer_json(fixture("tokenizers/" + name));
    const nlohmann::json expected = read_json(fixture("tokenizers/" + name + "/expected.json"))["cases"];
    REQUIRE(expected.size() == cases.size());
    int64_t ids_checked = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const std::string text = cases[i].get<std::string>();
      INFO("case " << i << ": " << text.substr(0, 80));
      const auto want = expected[i]["ids"].get<std::vector<int64_t>>();
      CHECK(tokenizer->encode(text, false) == want);
      CHECK(tokenizer->encode(text, true) == expected[i]["ids_with_special"].get<std::vector<int64_t>>());
      CHECK(tokenizer->decode(want, false) == expected[i]["decoded"].get<std::string>());
      CHECK(tokenizer->decode(want, true) == expected[i]["decoded_skip_special"].get<std::string>());
      ids_checked += static_cast<int64_t>(want.size());
    }
    CHECK(ids_checked > 5000);  // the whole source files are among the cases
  }
}

TEST_CASE("tokenizer.json's pipeline steps each change ids: the fixtures would catch a step left out", "[tokenizer]") {
  const nlohmann::json cases = read_json(fixture("tokenizers/cases.json"));
  // Encodes every case with a changed tokenizer; counts the cases whose ids differ from HF's.
  const auto differing = [&](const std::string& name, const std::string& dir) {
    const auto tokenizer = consa::load_tokenizer_json(dir);
    const nlohmann::json expected = read_json(fixture("tokenizers/" + name + "/expected.json"))["cases"];
    int n = 0;
    for (size_t i = 0; i < cases.size(); ++i)
      n += tokenizer->encode(cases[i].get<std::string>(), false) != expected[i]["ids"].get<std::vector<int64_t>>();
    return n;
  };
  CHECK(differing("qwen2_style", edited_tokenizer("qwen2_style", [](auto& j) { j["normalizer"] = nullptr; })) >= 2);
  CHECK(differing("llama3_style", edited_tokenizer("llama3_style", [](auto& j) { j["model"]["ignore_merges"] = false; })) >= 1);
  CHECK(differing("llama3_style", edited_tokenizer("llama3_style", [](auto& j) {
          // Qwen2's digit rule (one digit per pre-token) in place of Llama-3's runs of up to 3
          std::string& p = j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].template get_ref<std::string&>();
          p.replace(p.find("\\p{N}{1,3}"), 10, "\\p{N}");
        })) >= 2);
  CHECK(differing("qwen2_style", edited_tokenizer("qwen2_style", [](auto& j) { j["added_tokens"] = nlohmann::json::array(); })) >= 2);
}

TEST_CASE("tokenizer.json: BOS and EOS from tokenizer_config.json and the post-processor", "[tokenizer]") {
  const auto llama = consa::load_tokenizer_json(fixture("tokenizers/llama3_style/tokenizer.json"));
  const auto qwen = consa::load_tokenizer_json(fixture("tokenizers/qwen2_style"));
  REQUIRE(llama->bos_id().has_value());
  CHECK(llama->decode({*llama->bos_id()}) == "<|begin_of_text|>");
  CHECK(llama->decode({*llama->eos_id()}) == "<|end_of_text|>");
  CHECK(llama->adds_bos());
  CHECK_FALSE(qwen->bos_id().has_value());
  CHECK_FALSE(qwen->adds_bos());
  CHECK(qwen->decode({*qwen->eos_id()}) == "<|endoftext|>");
  const auto doc = llama->encode_document("Hello world");
  const auto body = llama->encode("Hello world");
  REQUIRE(doc.size() == body.size() + 2);
  CHECK(doc.front() == *llama->bos_id());
  CHECK(doc.back() == *llama->eos_id());
  CHECK(std::vector<int64_t>(doc.begin() + 1, doc.end() - 1) == body);
  // Many documents on several threads give what one thread gives.
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("document " + std::to_string(i) + ": Ünïcödé, 12345, don't");
  std::vector<std::string_view> views(texts.begin(), texts.end());
  const auto parallel = qwen->encode_all(views, 4);
  for (size_t i = 0; i < texts.size(); ++i) CHECK(parallel[i] == qwen->encode(texts[i]));
}

TEST_CASE("tokenizer.json: invalid UTF-8 is encoded as U+FFFD, one per maximal subpart", "[tokenizer]") {
  const auto qwen = consa::load_tokenizer_json(fixture("tokenizers/qwen2_style"));
  // "\xE2\x82" is a truncated 3-byte sequence (one U+FFFD), "\xFF" one more.
  CHECK(qwen->encode("a\xE2\x82z\xFF") == qwen->encode("a\xEF\xBF\xBDz\xEF\xBF\xBD"));
  CHECK(qwen->decode(qwen->encode("a\xE2\x82z")) == "a\xEF\xBF\xBDz");
}

TEST_CASE("tokenizer.json files consa cannot read are refused naming the file and the part", "[tokenizer]") {
  using nlohmann::json;
  const auto refused = [](const std::string& dir, const std::string& message) {
    INFO(message);
    REQUIRE_THROWS_AS(consa::load_tokenizer_json(dir), consa::Error);
    REQUIRE_THROWS_WITH(consa::load_tokenizer_json(dir), contains(message));
    REQUIRE_THROWS_WITH(consa::load_tokenizer_json(dir), contains("tokenizer.json"));
  };
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["model"]["type"] = "WordPiece"; }),
          "model.type 'WordPiece' is not supported");
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; }),
          "normalizer 'Lowercase' is not supported (supported: normalizers NFC");
  refused(edited_tokenizer("qwen2_style",
                           [](json& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}}; }),
          "sentencepiece-style tokenizer.json");
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["model"]["byte_fallback"] = true; }), "byte_fallback");
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(["; }),
          "the regex does not compile");
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["model"]["merges"][0] = json::array({"\xC4\xA0", "zzzq"}); }),
          "model.merges[0]");
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["pre_tokenizer"] = nullptr; }), "no ByteLevel step");
  refused(edited_tokenizer("qwen2_style", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; }),
          "decoder 'WordPiece' is not supported");
  const std::string broken = scratch_dir("tokenizer-broken");
  write_text(broken + "/tokenizer.json", "{\"model\": ");
  refused(broken, "not valid JSON");
  const std::string empty = scratch_dir("tokenizer-missing");
  REQUIRE_THROWS_WITH(consa::resolve_tokenizer_file(empty), contains("neither tokenizer.json nor tokenizer.model"));
}
