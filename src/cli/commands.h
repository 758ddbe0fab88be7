#pragma once
// The consa command's subcommands. Each takes the arguments after its name (argv[0] is the
// subcommand) and returns the process exit code; errors are thrown as consa::Error.
#include <ATen/ATen.h>

#include <cxxopts.hpp>

#include <ostream>
#include <string>
#include <vector>

#include "consa/model/decoder.h"

namespace consa::cli {

int run_inspect(int argc, char** argv);
int run_demo(int argc, char** argv);
int run_train(int argc, char** argv);
int run_validate(int argc, char** argv);
int run_export(int argc, char** argv);
int run_generate(int argc, char** argv);

// Shared helpers.
// Parses argv with `options`; prints the help and returns false when --help was given.
bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& args);
at::Device parse_device(const std::string& name);
std::vector<int64_t> parse_token_ids(const std::string& text, const std::string& option);
void print_model_summary(std::ostream& out, CausalLM& model, const std::string& source);
// Prints the `top` most likely next tokens after `prompt`.
void print_next_tokens(std::ostream& out, CausalLM& model, const std::vector<int64_t>& prompt,
                       int64_t top);
// Greedy continuation of `prompt` by `count` tokens (full recompute each step).
std::vector<int64_t> greedy_continue(CausalLM& model, const std::vector<int64_t>& prompt,
                                     int64_t count);

}  // namespace consa::cli
