// consa: turn a pretrained decoder LLM into a hybrid full / sliding-window attention model.
#include <c10/util/Exception.h>

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <iostream>
#include <string>

#include "commands.h"
#include "process.h"
#include "consa/core/error.h"

namespace {

// consa-tokenize lives beside this program (it links sentencepiece, which cannot share a
// process with LibTorch's protobuf); hand the arguments over to it.
int run_tokenize(int argc, char** argv) {
  const std::string path = consa::cli::sibling_program("consa-tokenize");
  std::vector<char*> args = {const_cast<char*>(path.c_str())};
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  args.push_back(nullptr);
  std::cout.flush();
  ::execv(path.c_str(), args.data());
  consa::fail(path, ": cannot run the tokenizer program: ", std::strerror(errno));
}

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

constexpr Command kCommands[] = {
    {"assign", consa::cli::run_assign, "a baseline allocator's assignment: uniform, random, attention-span, duo"},
    {"bench", consa::cli::run_bench, "prefill/decode speed and KV bytes of exported models (consa bench decode)"},
    {"eval", consa::cli::run_eval, "perplexity, retrieval accuracy and KV bytes of a model under a layout"},
    {"export", consa::cli::run_export, "export a model under its FA/SWA assignment (Hugging Face or TorchScript)"},
    {"generate", consa::cli::run_generate, "generate with an exported model through its sliding-window KV cache"},
    {"init", consa::cli::run_init, "write a randomly initialised model of a given shape (Hugging Face format)"},
    {"inspect", consa::cli::run_inspect, "summarise a Hugging Face checkpoint; --prompt-ids for next tokens"},
    {"sweep", consa::cli::run_sweep, "every (method, target) pair on a recipe's model: sweep.csv, sweep.md"},
    {"tokenize", run_tokenize, "text -> token shard with sentencepiece (--train-tokenizer to train one)"},
    {"train", consa::cli::run_train, "run a ConSA recipe: learn the FA/SWA assignment (consa train RECIPE)"},
    {"validate", consa::cli::run_validate, "check a recipe without running it"},
};

void print_usage(std::ostream& out) {
  out << "usage: consa COMMAND [options]   (consa COMMAND --help for a command's options)\n\n"
         "commands:\n";
  for (const auto& c : kCommands) out << "  " << c.name << std::string(10 - std::strlen(c.name), ' ') << c.summary << "\n";
}

// One line of a LibTorch error, without its C++ backtrace: the first, except for errors raised
// inside a TorchScript export, whose first line only says that one happened; their cause is the
// last line ("RuntimeError: CUDA out of memory ...").
std::string first_line(const char* text) {
  std::string s(text);
  const std::string first = s.substr(0, s.find('\n'));
  if (first.find("TorchScript interpreter") == std::string::npos) return first;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return "in the exported TorchScript model: " + s.substr(s.rfind('\n') + 1);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    print_usage(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc - 1, argv + 1);
    } catch (const consa::Error& e) {
      std::cerr << "consa: error: " << e.what() << "\n";
    } catch (const c10::Error& e) {
      std::cerr << "consa: error: " << first_line(e.what_without_backtrace()) << "\n";
    } catch (const std::exception& e) {
      std::cerr << "consa: error: " << first_line(e.what()) << "\n";
    }
    return 1;
  }
  std::cerr << "consa: error: unknown command '" << argv[1] << "'\n";
  print_usage(std::cerr);
  return 2;
}
