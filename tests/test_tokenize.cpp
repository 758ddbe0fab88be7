// consa tokenize on real corpora: JSONL (plain, gzip, zstd), lines and whole files through a
// tokenizer.json, shards with document boundaries, and a recipe that trains on the result.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "consa/data/batches.h"
#include "consa/data/token_shards.h"
#include "consa/load/pretrained.h"
#include "consa/model/decoder.h"
#include "consa/tokenizer/tokenizer.h"
#include "helpers.h"

using consa_test::contains;
using consa_test::fixture;
using consa_test::read_text;
using consa_test::run_consa;
using consa_test::scratch_dir;
using consa_test::tiny_config;
using consa_test::write_text;

namespace {

// The documents of a shard, split at its document boundaries.
std::vector<std::vector<int64_t>> shard_documents(const std::string& path) {
  const consa::TokenShard shard = consa::TokenShard::open(path);
  std::vector<std::vector<int64_t>> docs;
  for (int64_t d = 0; d < shard.documents(); ++d) {
    const int64_t begin = shard.document_start(d), end = shard.document_start(d + 1);
    docs.emplace_back(static_cast<size_t>(end - begin));
    shard.read(begin, end - begin, docs.back().data());
  }
  return docs;
}

}  // namespace

TEST_CASE("consa tokenize: JSONL, gzip and zstd corpora through a tokenizer.json train a recipe", "[cli]") {
  const std::string dir = scratch_dir("tokenize-jsonl");
  const std::string tok = fixture("tokenizers/llama3_style");
  const auto tokenizer = consa::load_tokenizer_json(tok);
  std::vector<std::string> texts;
  std::string jsonl;
  for (int i = 0; i < 120; ++i) {
    texts.push_back("Document " + std::to_string(i) + ": the passkey is " + std::to_string(1000 + 37 * i) +
                    ". Don't forget it, naïve café 😀\n\tIndented line.");
    jsonl += nlohmann::json({{"id", i}, {"body", texts.back()}}).dump() + "\n";
  }
  write_text(dir + "/corpus.jsonl", jsonl);
  REQUIRE(std::system(("gzip -k " + dir + "/corpus.jsonl && zstd -q -k " + dir + "/corpus.jsonl").c_str()) == 0);

  std::string out, err;
  REQUIRE(run_consa("tokenize --tokenizer " + tok + " --input " + dir + "/corpus.jsonl --text-key body --output " + dir +
                        "/plain.tok",
                    &out, &err) == 0);
  CHECK_THAT(out, contains("from 120 documents"));
  // Each document: BOS (the template adds one), the text's ids, EOS.
  const auto docs = shard_documents(dir + "/plain.tok");
  REQUIRE(docs.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) CHECK(docs[i] == tokenizer->encode_document(texts[i]));
  // Compressed copies, split into several shards, give the same documents in the same order.
  REQUIRE(run_consa("tokenize --tokenizer " + tok + " --input '" + dir + "/corpus.jsonl.*' --text-key body --shard-size 8KB "
                        "--threads 3 --output " + dir + "/split.tok",
                    &out, &err) == 0);
  std::vector<std::vector<int64_t>> joined;
  for (int s = 0;; ++s) {
    char name[32];
    std::snprintf(name, sizeof(name), "/split-%05d.tok", s);
    if (!std::filesystem::exists(dir + name)) break;
    const auto part = shard_documents(dir + name);
    CHECK(consa::TokenShard::open(dir + name).size() * 2 <= 8000 + 2 * 200);  // about the size asked for
    joined.insert(joined.end(), part.begin(), part.end());
  }
  REQUIRE(joined.size() == 2 * texts.size());  // .gz then .zst
  for (size_t i = 0; i < joined.size(); ++i) CHECK(joined[i] == docs[i % docs.size()]);

  // Refusals name the file, line or flag.
  write_text(dir + "/bad.jsonl", "{\"body\": \"ok\"}\n{\"text\": \"no body\"}\n");
  CHECK(run_consa("tokenize --tokenizer " + tok + " --input " + dir + "/bad.jsonl --text-key body --output " + dir + "/bad.tok",
                  &out, &err) == 1);
  CHECK_THAT(err, contains("bad.jsonl: line 2: no \"body\" field"));
  CHECK_FALSE(std::filesystem::exists(dir + "/bad.tok"));
  CHECK(run_consa("tokenize --tokenizer " + tok + " --input " + dir + "/corpus.jsonl --output " + dir + "/plain.tok", &out, &err) == 1);
  CHECK_THAT(err, contains("plain.tok: exists; pass --overwrite"));
  CHECK(run_consa("tokenize --tokenizer " + tok + " --input '" + dir + "/*.parquet' --output " + dir + "/x.tok", &out, &err) == 1);
  CHECK_THAT(err, contains("*.parquet: the pattern matches no input file"));

  // --encode / --decode are the library's encode and decode.
  REQUIRE(run_consa("tokenize --tokenizer " + tok + " --encode 'naïve café 12345'", &out, &err) == 0);
  CHECK(consa::parse_token_ids(out, "out") == tokenizer->encode("naïve café 12345"));
  REQUIRE(run_consa("tokenize --tokenizer " + tok + " --decode '" + out.substr(0, out.size() - 1) + "'", &out, &err) == 0);
  CHECK(out == "naïve café 12345\n");

  // A recipe trains on the shard: a random model over the tokenizer's vocabulary.
  const std::string model_dir = dir + "/model";
  {
    consa::CausalLM model(tiny_config(2, 4, 2, 8, tokenizer->vocab_size()), at::TensorOptions().dtype(at::kFloat));
    consa::init_random_weights(model, 0.5, 3);
    consa::save_pretrained(model, model_dir);
  }
  write_text(dir + "/recipe.yaml", "model: {path: " + model_dir + "}\ngates: {window: 4}\n"
                                   "data: {seq_len: 32, batch_size: 2, heldout_batches: 1, shards: [" + dir +
                                   "/plain.tok], synthetic_ratio: 0}\ntrain: {steps: 3, log_every: 1}\noutput: {dir: " +
                                   dir + "/run}\n");
  REQUIRE(run_consa("train " + dir + "/recipe.yaml", &out, &err) == 0);
  CHECK(read_text(dir + "/run/metrics.jsonl").find("\"step\":3") != std::string::npos);
}

TEST_CASE("text passkey through a tokenizer.json: a recipe trains on it, eval scores it, generate prompts it", "[cli]") {
  const std::string dir = scratch_dir("text-tasks");
  const std::string tok = fixture("tokenizers/qwen2_style");
  const auto tokenizer = consa::load_tokenizer_json(tok);
  const std::string model_dir = dir + "/model";
  {
    consa::CausalLM model(tiny_config(2, 4, 2, 8, tokenizer->vocab_size()), at::TensorOptions().dtype(at::kFloat));
    consa::init_random_weights(model, 0.5, 5);
    consa::save_pretrained(model, model_dir);
  }
  write_text(dir + "/filler.txt", "The lighthouse keeper counts the waves.\nA train crosses the plain at noon.\n");
  write_text(dir + "/recipe.yaml", "model: {path: " + model_dir + "}\ngates: {window: 8}\n"
                                   "data: {seq_len: 160, batch_size: 2, heldout_batches: 1, synthetic_tasks: [passkey, "
                                   "multi_key_needle], value_digits: 4, num_needles: 2, tokenizer: " + tok +
                                   ", filler: " + dir + "/filler.txt}\ntrain: {steps: 2, log_every: 1}\noutput: {dir: " +
                                   dir + "/run}\n");
  std::string out, err;
  REQUIRE(run_consa("validate " + dir + "/recipe.yaml", &out, &err) == 0);
  REQUIRE(run_consa("train " + dir + "/recipe.yaml", &out, &err) == 0);
  CHECK(read_text(dir + "/run/metrics.jsonl").find("\"step\":2") != std::string::npos);
  CHECK_THAT(read_text(dir + "/run/recipe.yaml"), contains("tokenizer: " + tok));

  // What the run trained on: the batches hold the text, answers scored only.
  consa::DataOptions data;
  data.seq_len = 160;
  data.batch_size = 2;
  data.synthetic_tasks = {consa::SyntheticTask::Passkey};
  data.tokenizer = tok;
  data.filler = dir + "/filler.txt";
  consa::BatchStream stream(data, tokenizer->vocab_size(), 9, consa::Split::Train);
  const consa::Batch batch = stream.next();
  std::vector<int64_t> ids(batch.tokens[0].data_ptr<int64_t>(), batch.tokens[0].data_ptr<int64_t>() + 160);
  const std::string text = tokenizer->decode(ids);
  CHECK_THAT(text, contains("The lighthouse keeper counts the waves."));
  CHECK_THAT(text, contains("What is the pass key? The pass key is"));
  CHECK(batch.ce_mask[0].sum().item<double>() == static_cast<double>(tokenizer->encode(text.substr(text.rfind(' '))).size()));

  // consa eval reads data.tokenizer from the run's recipe; generate takes --tokenizer.
  REQUIRE(run_consa("eval " + dir + "/run --tasks passkey --lengths 160 --depths 0.5 --samples 2 --out " + dir + "/eval.json",
                    &out, &err) == 0);
  CHECK(nlohmann::json::parse(read_text(dir + "/eval.json"))["retrieval"].size() == 1);
  REQUIRE(run_consa("generate " + model_dir + " --synthetic passkey --length 160 --min-distance 20 --value-digits 4 "
                        "--max-new-tokens 2 --tokenizer " + tok,
                    &out, &err) == 0);
  CHECK_THAT(err, contains("expected answer:"));
  CHECK_THAT(err, contains("('"));
  // A refused job changes nothing in the output directory: a --resume whose model is missing
  // keeps the run's recipe.yaml, and a fresh run refused at load leaves no directory behind.
  const std::string recipe_before = read_text(dir + "/run/recipe.yaml");
  CHECK(run_consa("train " + dir + "/recipe.yaml --resume model.path=" + dir + "/missing", &out, &err) == 1);
  CHECK(read_text(dir + "/run/recipe.yaml") == recipe_before);
  CHECK(run_consa("train " + dir + "/recipe.yaml model.path=" + dir + "/missing output.dir=" + dir + "/run3", &out, &err) == 1);
  CHECK_FALSE(std::filesystem::exists(dir + "/run3"));
  // sentencepiece models cannot render text tasks in process: refused, naming the key.
  write_text(dir + "/spm.yaml", "model: {path: " + model_dir + "}\ndata: {seq_len: 160, tokenizer: " + dir +
                                    "/tok.model}\noutput: {dir: " + dir + "/run2}\n");
  write_text(dir + "/tok.model", "not a model");
  CHECK(run_consa("train " + dir + "/spm.yaml", &out, &err) == 1);
  CHECK_THAT(err, contains("data.tokenizer: " + dir + "/tok.model: text tasks need a tokenizer.json"));
}
