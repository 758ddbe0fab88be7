// consa-tokenize: corpora -> token shards with a model's own tokenizer (tokenizer.json or
// sentencepiece tokenizer.model), the tokenizer as a filter (--encode, --decode, --decode-stream),
// and sentencepiece training. It is its own program, linked without LibTorch: Debian's
// libsentencepiece carries a private protobuf-lite that clashes with the libprotobuf LibTorch
// loads (a crash before main when both are in one process). `consa tokenize ...` runs it.
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cxxopts.hpp>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>

#include "consa/core/byte_size.h"
#include "consa/core/error.h"
#include "consa/core/output_path.h"
#include "consa/core/strings.h"
#include "consa/data/token_shards.h"
#include "consa/train/progress.h"
#include "../cli/flag_errors.h"
#include "corpus.h"
#include "sentencepiece_tokenizer.h"

namespace {

using consa::ends_with;
using consa::fail;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// --encode TEXT / --decode IDS / --decode-stream: the tokenizer as a filter (consa generate uses them).
int run_codec(const cxxopts::ParseResult& args, const consa::Tokenizer& tokenizer) {
  // An id beyond the vocabulary has no text: refused, not decoded as nothing.
  auto in_vocabulary = [&](const std::vector<int64_t>& ids, const char* option) {
    for (int64_t id : ids)
      CONSA_CHECK(id < tokenizer.vocab_size(), option, ": token id ", id, " is outside the vocabulary of ",
                  tokenizer.vocab_size(), " (", tokenizer.source(), ")");
    return ids;
  };
  if (args.count("encode")) {
    const auto ids = tokenizer.encode(args["encode"].as<std::string>(), args.count("add-special-tokens") > 0);
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
    return 0;
  }
  if (args.count("decode")) {
    std::cout << tokenizer.decode(in_vocabulary(consa::parse_token_ids(args["decode"].as<std::string>(), "--decode"), "--decode"),
                                  args.count("skip-special-tokens") > 0)
              << "\n";
    return 0;
  }
  // Decode the whole sequence each time and print what it added: pieces such as byte-level
  // fragments of one character and word-initial spaces only decode correctly in context.
  std::vector<int64_t> ids;
  std::string shown;
  for (std::string line; std::getline(std::cin, line);) {
    if (line.find_first_not_of(" \t\r,") == std::string::npos) continue;
    // Not checked against the vocabulary: a model's embedding is often padded beyond its tokenizer.
    const auto more = consa::parse_token_ids(line, "--decode-stream (stdin)");
    ids.insert(ids.end(), more.begin(), more.end());
    const std::string text = tokenizer.decode(ids, true);
    // A trailing U+FFFD may be half a character still to come: wait for it.
    const std::string stable = ends_with(text, "\xEF\xBF\xBD") ? text.substr(0, text.size() - 3) : text;
    if (stable.size() > shown.size() && stable.compare(0, shown.size(), shown) == 0) std::cout << stable.substr(shown.size());
    shown = stable;
    std::cout.flush();
  }
  return 0;
}

void train_sentencepiece(const std::vector<std::string>& inputs, const std::string& model, const cxxopts::ParseResult& args) {
  const std::string suffix = ".model";
  CONSA_CHECK(model.size() > suffix.size() && ends_with(model, suffix), "--tokenizer ", model,
              ": a trained tokenizer's path must end in .model");
  const auto folder = fs::path(model).parent_path();
  if (!folder.empty()) fs::create_directories(folder);
  std::ostringstream spec;
  spec << "--input=";
  for (size_t i = 0; i < inputs.size(); ++i) spec << (i ? "," : "") << inputs[i];
  spec << " --model_prefix=" << model.substr(0, model.size() - suffix.size())
       << " --vocab_size=" << args["vocab-size"].as<int>() << " --model_type=" << args["model-type"].as<std::string>()
       << " --character_coverage=1.0 --minloglevel=2";
  const auto status = sentencepiece::SentencePieceTrainer::Train(spec.str());
  CONSA_CHECK(status.ok(), "training the tokenizer ", model, ": ", status.ToString());
  std::cerr << "trained " << model << "\n";
}

std::string mb(double bytes) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << bytes / 1e6 << " MB";
  return out.str();
}

// The path of shard `index` when the output is split: out.tok -> out-00000.tok.
std::string shard_path(const std::string& output, int64_t index) {
  fs::path p = output;
  std::ostringstream name;
  name << p.stem().string() << "-" << std::setw(5) << std::setfill('0') << index << p.extension().string();
  return (p.parent_path() / name.str()).string();
}

// A live byte progress line on a terminal, a plain line every few seconds otherwise.
class ByteProgress {
 public:
  explicit ByteProgress(int64_t total) : total_(total), live_(::isatty(STDERR_FILENO) != 0), start_(Clock::now()) {}
  void update(int64_t bytes, int64_t tokens, bool last = false) {
    const double elapsed = seconds_since(start_);
    if (!live_ && !last && elapsed < next_log_) return;
    next_log_ = elapsed + 10;
    const double rate = elapsed > 0 ? bytes / elapsed : 0;
    const double eta = rate > 0 ? (total_ - bytes) / rate : 0;
    std::ostringstream status;
    status << mb(bytes) << "/" << mb(total_) << ", " << std::fixed << std::setprecision(1) << rate / 1e6 << " MB/s, "
           << std::setprecision(0) << (elapsed > 0 ? tokens / elapsed : 0) << " tokens/s, " << tokens << " tokens";
    if (live_) {
      const int width = 24, filled = static_cast<int>(width * std::min<double>(1.0, static_cast<double>(bytes) / std::max<int64_t>(1, total_)));
      std::cerr << "\rtokenize [" << std::string(filled, '#') << std::string(width - filled, '.') << "] " << status.str()
                << " eta " << consa::format_duration(eta) << "   " << (last ? "\n" : "") << std::flush;
    } else {
      std::cerr << "tokenize " << status.str() << " elapsed " << consa::format_duration(elapsed) << " eta "
                << consa::format_duration(eta) << "\n";
    }
  }

 private:
  int64_t total_;
  bool live_;
  Clock::time_point start_;
  double next_log_ = 10;  // short runs print only their final line
};

consa::tokenize::CorpusOptions corpus_options(const cxxopts::ParseResult& args) {
  consa::tokenize::CorpusOptions o;
  const std::string form = args.count("whole-file") ? "whole-file" : args["format"].as<std::string>();
  if (form == "auto") o.form = consa::tokenize::DocumentForm::Auto;
  else if (form == "lines") o.form = consa::tokenize::DocumentForm::Lines;
  else if (form == "jsonl") o.form = consa::tokenize::DocumentForm::Jsonl;
  else if (form == "whole-file") o.form = consa::tokenize::DocumentForm::WholeFile;
  else fail("--format: '", form, "' is not a corpus format; expected auto, lines, jsonl or whole-file");
  o.text_key = args["text-key"].as<std::string>();
  return o;
}

// --bench: encode throughput over the inputs' documents (read once), median of --repeats runs.
int run_bench(const std::vector<std::string>& files, const consa::Tokenizer& tokenizer, const cxxopts::ParseResult& args) {
  consa::tokenize::CorpusReader reader(files, corpus_options(args));
  std::vector<std::string> docs;
  while (reader.next(docs, int64_t{1} << 40)) {
  }
  std::vector<std::string_view> views(docs.begin(), docs.end());
  int64_t bytes = 0;
  for (const auto& d : docs) bytes += static_cast<int64_t>(d.size());
  const int threads = args["threads"].as<int>();
  std::vector<double> seconds;
  int64_t tokens = 0;
  for (int r = 0; r < args["repeats"].as<int>(); ++r) {
    const auto start = Clock::now();
    const auto ids = tokenizer.encode_all(views, threads);
    seconds.push_back(seconds_since(start));
    tokens = 0;
    for (const auto& d : ids) tokens += static_cast<int64_t>(d.size());
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const int used = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::cout << "{\"tokenizer\": \"" << tokenizer.source() << "\", \"threads\": " << used << ", \"documents\": " << docs.size()
            << ", \"bytes\": " << bytes << ", \"tokens\": " << tokens << ", \"seconds\": " << median
            << ", \"mb_per_s\": " << bytes / median / 1e6 << "}\n";
  return 0;
}

int run(int argc, char** argv) {
  cxxopts::Options options("consa tokenize",
                           "Tokenize corpora into token shards with a model's tokenizer (tokenizer.json or "
                           "tokenizer.model), encode or decode text, or train a sentencepiece model.");
  options.add_options()
      ("input", "input files or globs: text (a document per line), JSONL (--text-key), or --whole-file; "
                ".gz and .zst are decompressed", cxxopts::value<std::vector<std::string>>())
      ("output", "token shard to write (with --shard-size, out.tok becomes out-00000.tok, out-00001.tok, ...)",
       cxxopts::value<std::string>())
      ("tokenizer", "a model directory, a tokenizer.json or a sentencepiece tokenizer.model", cxxopts::value<std::string>())
      ("format", "auto (JSONL for *.jsonl*, else lines), lines, jsonl or whole-file",
       cxxopts::value<std::string>()->default_value("auto"))
      ("whole-file", "each input file is one document (source code, books)")
      ("text-key", "JSONL: the field holding the text", cxxopts::value<std::string>()->default_value("text"))
      ("shard-size", "split the output into shards of about this size (e.g. 1GiB); documents are never split",
       cxxopts::value<std::string>())
      ("threads", "tokenizer threads (0: every core)", cxxopts::value<int>()->default_value("0"))
      ("overwrite", "replace existing output shards")
      ("eos", "append this id after every document (-1: the tokenizer's EOS, if any)",
       cxxopts::value<int>()->default_value("-1"))
      ("train-tokenizer", "train a sentencepiece model on --input first, written to --tokenizer")
      ("vocab-size", "vocabulary of a trained tokenizer", cxxopts::value<int>()->default_value("8000"))
      ("model-type", "unigram or bpe (trained tokenizer)", cxxopts::value<std::string>()->default_value("unigram"))
      ("encode", "print the ids of this text, separated by spaces", cxxopts::value<std::string>())
      ("add-special-tokens", "with --encode: add what the tokenizer's post-processor adds (e.g. BOS)")
      ("decode", "print the text of these ids (separated by spaces or commas)", cxxopts::value<std::string>())
      ("skip-special-tokens", "with --decode: leave special tokens out")
      ("decode-stream", "read ids from stdin and write their text as it grows (used by consa generate)")
      ("bench", "measure the tokenizer's throughput on --input (MB/s; JSON on stdout)")
      ("repeats", "with --bench: runs (the median is printed)", cxxopts::value<int>()->default_value("3"))
      ("h,help", "show this help");
  auto args = consa::cli::parse_flags(options, argc, argv);
  if (args.count("help")) {
    std::cout << options.help() << "\n";
    return 0;
  }
  CONSA_CHECK(args.count("tokenizer"), "consa tokenize: --tokenizer is required (a model directory, tokenizer.json or "
              "tokenizer.model; with --train-tokenizer, the .model to write)");
  const std::string tokenizer_path = args["tokenizer"].as<std::string>();
  CONSA_CHECK(args["threads"].as<int>() >= 0, "--threads must be >= 0 (0: every core)");
  CONSA_CHECK(args["repeats"].as<int>() >= 1, "--repeats must be >= 1");
  if (args.count("encode") || args.count("decode") || args.count("decode-stream"))
    return run_codec(args, *consa::tokenize::load_any_tokenizer(tokenizer_path));

  CONSA_CHECK(args.count("input"), "consa tokenize: --input is required");
  const auto inputs = consa::tokenize::expand_inputs(args["input"].as<std::vector<std::string>>());
  const auto form = corpus_options(args);  // validates --format before anything is written
  if (args.count("train-tokenizer")) train_sentencepiece(inputs, tokenizer_path, args);
  const auto tokenizer = consa::tokenize::load_any_tokenizer(tokenizer_path);
  if (args.count("bench")) return run_bench(inputs, *tokenizer, args);
  if (!args.count("output")) return 0;

  const std::string output = args["output"].as<std::string>();
  const int64_t shard_bytes = args.count("shard-size") ? consa::parse_byte_size(args["shard-size"].as<std::string>(), "--shard-size") : 0;
  consa::check_output_path(output, args.count("overwrite") > 0, "--output");
  if (shard_bytes > 0) consa::check_output_path(shard_path(output, 0), args.count("overwrite") > 0, "--output");
  const int eos_option = args["eos"].as<int>();
  const std::optional<int64_t> eos = eos_option >= 0 ? std::optional<int64_t>(eos_option) : tokenizer->eos_id();

  consa::tokenize::CorpusReader reader(inputs, form);
  ByteProgress progress(consa::tokenize::total_bytes(inputs));
  std::vector<std::string> written;
  std::unique_ptr<consa::TokenShardWriter> shard;
  int64_t tokens = 0;
  const auto open_shard = [&] {
    written.push_back(shard_bytes > 0 ? shard_path(output, static_cast<int64_t>(written.size())) : output);
    shard = std::make_unique<consa::TokenShardWriter>(written.back(), tokenizer->vocab_size() - 1);
  };
  const auto close_shard = [&] {
    if (!shard) return;
    shard->commit();
    shard.reset();
  };
  // Batches of about 64 MB of text: large enough for every thread, small enough to stream.
  constexpr int64_t kBatchBytes = 64 << 20;
  std::vector<std::string> docs;
  while (reader.next(docs, kBatchBytes)) {
    std::vector<std::string_view> views(docs.begin(), docs.end());
    const auto encoded = tokenizer->encode_all(views, args["threads"].as<int>());
    for (const auto& doc : encoded) {
      const std::vector<int64_t> ids = tokenizer->document_ids(doc, eos);
      if (!shard || (shard_bytes > 0 && shard->tokens() > 0 && (shard->tokens() + static_cast<int64_t>(ids.size())) * shard->bytes_per_token() > shard_bytes)) {
        close_shard();
        open_shard();
      }
      shard->add_document(ids.data(), static_cast<int64_t>(ids.size()));
      tokens += static_cast<int64_t>(ids.size());
    }
    docs.clear();
    progress.update(reader.bytes_read(), tokens);
  }
  if (!shard) open_shard();  // an empty corpus still gives an (empty) shard
  close_shard();
  progress.update(reader.bytes_read(), tokens, true);
  std::cout << "wrote " << tokens << " tokens from " << reader.documents() << " documents";
  if (reader.skipped_empty() > 0) std::cout << " (" << reader.skipped_empty() << " empty skipped)";
  std::cout << " to " << (written.size() == 1 ? written[0] : std::to_string(written.size()) + " shards " + written[0] + " ...")
            << " (vocabulary " << tokenizer->vocab_size() << ", BOS " << (tokenizer->adds_bos() && tokenizer->bos_id() ? "yes" : "no")
            << ", EOS " << (eos ? std::to_string(*eos) : std::string("none")) << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "consa: error: " << e.what() << "\n";
  }
  return 1;
}
