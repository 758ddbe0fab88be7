// consa-tokenize: text -> token shards with sentencepiece, and sentencepiece training.
// It is its own program, linked without LibTorch: Debian's libsentencepiece carries a private
// protobuf-lite that clashes with the libprotobuf LibTorch loads (a crash before main when both
// are in one process). `consa tokenize ...` runs this program.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cxxopts.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"
#include "consa/data/token_shards.h"

namespace {

using consa::fail;

void check(const sentencepiece::util::Status& status, const std::string& what) {
  CONSA_CHECK(status.ok(), what, ": ", status.ToString());
}

// --encode TEXT / --decode-stream: the tokenizer as a filter for consa generate.
int run_codec(const cxxopts::ParseResult& args) {
  CONSA_CHECK(args.count("tokenizer"), "consa tokenize: --tokenizer is required");
  const std::string model = args["tokenizer"].as<std::string>();
  sentencepiece::SentencePieceProcessor sp;
  check(sp.Load(model), model);
  if (args.count("encode")) {
    std::vector<int> ids;
    check(sp.Encode(args["encode"].as<std::string>(), &ids), "--encode");
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? "," : "") << ids[i];
    std::cout << "\n";
    return 0;
  }
  // Decode the whole sequence each time and print what it added: pieces such as byte
  // fallbacks and word-initial spaces only decode correctly in context.
  std::vector<int> ids;
  std::string shown;
  for (std::string line; std::getline(std::cin, line);) {
    if (line.empty()) continue;
    ids.push_back(std::stoi(line));
    std::string text;
    check(sp.Decode(ids, &text), "decoding generated ids");
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) std::cout << text.substr(shown.size());
    shown = text;
    std::cout.flush();
  }
  return 0;
}

int run(int argc, char** argv) {
  cxxopts::Options options("consa tokenize",
                           "Tokenize text files into a token shard with a sentencepiece model, or train one.");
  options.add_options()
      ("input", "text file(s), one document per line", cxxopts::value<std::vector<std::string>>())
      ("output", "token shard to write", cxxopts::value<std::string>())
      ("tokenizer", "sentencepiece tokenizer.model", cxxopts::value<std::string>())
      ("train-tokenizer", "train a sentencepiece model on --input first, written to --tokenizer")
      ("vocab-size", "vocabulary of a trained tokenizer", cxxopts::value<int>()->default_value("8000"))
      ("model-type", "unigram or bpe (trained tokenizer)", cxxopts::value<std::string>()->default_value("unigram"))
      ("eos", "append this id after every line (-1: the tokenizer's eos id, if any)", cxxopts::value<int>()->default_value("-1"))
      ("encode", "print the ids of this text, comma-separated (used by consa generate)", cxxopts::value<std::string>())
      ("decode-stream", "read ids from stdin, one per line, and write their text as it grows (used by consa generate)")
      ("h,help", "show this help");
  auto args = options.parse(argc, argv);
  if (args.count("help")) {
    std::cout << options.help() << "\n";
    return 0;
  }
  if (args.count("encode") || args.count("decode-stream")) return run_codec(args);
  CONSA_CHECK(args.count("input"), "consa tokenize: --input is required");
  CONSA_CHECK(args.count("tokenizer"), "consa tokenize: --tokenizer is required (a tokenizer.model to use, or to write "
              "with --train-tokenizer)");
  const auto inputs = args["input"].as<std::vector<std::string>>();
  const std::string model = args["tokenizer"].as<std::string>();
  for (const auto& f : inputs) CONSA_CHECK(std::ifstream(f).good(), f, ": cannot read input text");

  if (args.count("train-tokenizer")) {
    const std::string suffix = ".model";
    CONSA_CHECK(model.size() > suffix.size() && model.compare(model.size() - suffix.size(), suffix.size(), suffix) == 0,
                "--tokenizer ", model, ": a trained tokenizer's path must end in .model");
    const auto folder = std::filesystem::path(model).parent_path();
    if (!folder.empty()) std::filesystem::create_directories(folder);
    std::ostringstream spec;
    spec << "--input=";
    for (size_t i = 0; i < inputs.size(); ++i) spec << (i ? "," : "") << inputs[i];
    spec << " --model_prefix=" << model.substr(0, model.size() - suffix.size())
         << " --vocab_size=" << args["vocab-size"].as<int>() << " --model_type=" << args["model-type"].as<std::string>()
         << " --character_coverage=1.0 --minloglevel=2";
    check(sentencepiece::SentencePieceTrainer::Train(spec.str()), "training the tokenizer " + model);
    std::cerr << "trained " << model << "\n";
  }
  if (!args.count("output")) return 0;

  sentencepiece::SentencePieceProcessor sp;
  check(sp.Load(model), model);
  int eos = args["eos"].as<int>();
  if (eos < 0) eos = sp.eos_id();
  std::vector<int64_t> ids;
  int64_t lines = 0;
  for (const auto& f : inputs) {
    std::ifstream in(f);
    for (std::string line; std::getline(in, line);) {
      std::vector<int> piece_ids;
      check(sp.Encode(line, &piece_ids), f + ": line " + std::to_string(lines + 1));
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
      if (eos >= 0) ids.push_back(eos);
      ++lines;
    }
  }
  const std::string out = args["output"].as<std::string>();
  consa::write_token_shard(out, ids);
  std::cout << "wrote " << ids.size() << " tokens from " << lines << " lines to " << out << " (vocabulary "
            << sp.GetPieceSize() << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "consa: error: " << e.what() << "\n";
    return 1;
  }
}
