#pragma once
// The consa command's subcommands. Each takes the arguments after its name (argv[0] is the
// subcommand) and returns the process exit code; errors are thrown as consa::Error.
#include <ATen/ATen.h>

// The consa command's lists on the command line (a recipe's overrides) are split by the shell
// alone: an override's value may hold commas, as YAML lists do
// (data.synthetic_tasks=[passkey,associative_recall]); comma lists are string options parsed
// by parse_name_list. Every file of the command includes cxxopts through this header.
#ifdef CXXOPTS_HPP_INCLUDED
#error "include commands.h before cxxopts.hpp: the command's cxxopts needs CXXOPTS_VECTOR_DELIMITER"
#endif
#define CXXOPTS_VECTOR_DELIMITER '\x1f'
#include <cxxopts.hpp>

#include <ostream>
#include <string>
#include <vector>

#include "consa/core/output_path.h"
#include "consa/eval/evaluate.h"
#include "consa/export/assignment.h"
#include "consa/train/recipe.h"
#include "consa/model/decoder.h"

namespace consa::cli {

int run_inspect(int argc, char** argv);
int run_init(int argc, char** argv);
int run_train(int argc, char** argv);
int run_validate(int argc, char** argv);
int run_export(int argc, char** argv);
int run_generate(int argc, char** argv);

int run_eval(int argc, char** argv);
int run_assign(int argc, char** argv);
int run_sweep(int argc, char** argv);
int run_bench(int argc, char** argv);

// Shared helpers.
// What a command was pointed at: a consa train output.dir (assignment.json, recipe.yaml, and
// model/ when weights were trained) or a Hugging Face checkpoint directory.
struct ModelSource {
  std::string model_dir;
  std::string assignment_path;  // empty: the checkpoint's own declared layout
  std::string recipe_path;      // a run's recipe.yaml; empty for a checkpoint directory
};
// `assignment_option` (a file) replaces the source's own assignment when not empty.
ModelSource resolve_model_source(const std::string& path, const std::string& assignment_option);
// Loads the source's assignment, or its declared layout, checked against the model's weights
// (the stored ones, read again, when `dtype_converted`: the model was loaded in another dtype).
Assignment source_assignment(const ModelSource& source, CausalLM& model, bool dtype_converted);
// "0.1,0.5" -> numbers; `option` names the flag in errors.
std::vector<double> parse_number_list(const std::string& text, const std::string& option);
std::vector<std::string> parse_name_list(const std::string& text);
// consa eval's evaluation flags (tasks, lengths, depths, ...), shared with consa sweep; defaults
// come from `recipe` when there is one.
void add_eval_options(cxxopts::Options& options);
EvalOptions eval_options(const cxxopts::ParseResult& args, const Recipe* recipe);
// Parses argv with `options`; prints the help and returns false when --help was given.
bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& args);
at::Device parse_device(const std::string& name);

// Returns once the work queued on `device` has finished (for timing); immediate on the CPU.
void wait_for_device(at::Device device);
std::string with_commas(int64_t n);  // 1234567 -> "1,234,567"
void print_model_summary(std::ostream& out, CausalLM& model, const std::string& source);
// Prints the `top` most likely next tokens after `prompt`.
void print_next_tokens(std::ostream& out, CausalLM& model, const std::vector<int64_t>& prompt,
                       int64_t top);
}  // namespace consa::cli
