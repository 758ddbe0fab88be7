#include <ATen/Context.h>
#include <ATen/core/grad_mode.h>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "flag_errors.h"
#include "consa/core/dtype.h"
#include "consa/core/error.h"
#include "consa/load/pretrained.h"
#include "consa/train/recipe.h"

namespace consa::cli {

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

bool parse_or_help(cxxopts::Options& options, int argc, char** argv, cxxopts::ParseResult& args) {
  args = parse_flags(options, argc, argv);
  if (!args.count("help")) return true;
  std::cout << options.help() << "\n";
  return false;
}

at::Device parse_device(const std::string& name) {
  CONSA_CHECK(name == "cpu" || name.rfind("cuda", 0) == 0, "--device: unknown device '", name,
              "'; supported: cpu, cuda, cuda:N");
  if (name != "cpu")
    CONSA_CHECK(at::hasCUDA(), "--device ", name,
                ": this build or machine has no CUDA device; use --device cpu");
  return at::Device(name);
}

void wait_for_device(at::Device device) {
  if (device.is_cuda()) at::zeros({1}, at::TensorOptions().device(device)).cpu();  // a one-element copy waits for the stream
}

ModelSource resolve_model_source(const std::string& path, const std::string& assignment_option) {
  namespace fs = std::filesystem;
  const fs::path source(path);
  ModelSource out;
  if (fs::exists(source / "config.json")) {
    out.model_dir = source.string();
  } else {
    const fs::path assignment = source / "assignment.json";
    CONSA_CHECK(fs::exists(assignment), path,
                ": neither a consa train output.dir (no assignment.json) nor a Hugging Face checkpoint (no config.json)");
    out.assignment_path = assignment.string();
    out.recipe_path = (source / "recipe.yaml").string();
    // Trained weights live in RUN_DIR/model; gates-only runs use the recipe's checkpoint.
    out.model_dir = (source / "model").string();
    if (!fs::exists(out.model_dir)) out.model_dir = load_recipe(out.recipe_path).model.path;
  }
  if (!assignment_option.empty()) out.assignment_path = assignment_option;
  return out;
}

Assignment source_assignment(const ModelSource& source, CausalLM& model, bool dtype_converted) {
  if (source.assignment_path.empty()) return declared_assignment(model, source.model_dir);
  Assignment a = Assignment::load(source.assignment_path);
  a.check_fits(model->config(), source.assignment_path);
  // Checksums are over the stored weights; a dtype conversion alters them, so check those.
  CausalLM checked = dtype_converted ? load_pretrained(source.model_dir) : model;
  const std::string checksum = weights_checksum(checked);
  CONSA_CHECK(checksum == a.weights_checksum, source.assignment_path, ": made for weights ", a.weights_checksum,
              " but ", source.model_dir, " holds ", checksum);
  return a;
}

std::vector<std::string> parse_name_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<double> parse_number_list(const std::string& text, const std::string& option) {
  std::vector<double> out;
  for (const std::string& item : parse_name_list(text)) {
    size_t used = 0;
    double value = 0;
    try {
      value = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CONSA_CHECK(used == item.size(), option, ": '", item, "' is not a number; expected a comma-separated list like 0.25,0.5");
    out.push_back(value);
  }
  CONSA_CHECK(!out.empty(), option, ": expected at least one value");
  return out;
}

namespace {


std::string layer_attention_summary(CausalLM& model) {
  std::ostringstream out;
  const int64_t n = model->num_layers();
  for (int64_t start = 0; start < n;) {
    const auto& spans = model->attention(start).group_spans;
    int64_t end = start + 1;
    while (end < n && model->attention(end).group_spans == spans) ++end;
    out << (start ? ", " : "") << "layers " << start << "-" << end - 1 << ": ";
    bool uniform = std::all_of(spans.begin(), spans.end(), [&](const AttentionSpan& s) { return s == spans[0]; });
    if (uniform) {
      out << spans[0].describe();
    } else {
      for (size_t g = 0; g < spans.size(); ++g) out << (g ? "/" : "") << spans[g].describe();
    }
    start = end;
  }
  return out.str();
}

void check_vocab(CausalLM& model, const std::vector<int64_t>& ids) {
  for (int64_t id : ids)
    CONSA_CHECK(id < model->config().vocab_size, "--prompt-ids: token id ", id,
                " is outside the vocabulary of ", model->config().vocab_size);
}

}  // namespace

void print_model_summary(std::ostream& out, CausalLM& model, const std::string& source) {
  const ModelConfig& c = model->config();
  std::ostringstream rope;
  rope << c.rope.type << ", theta " << c.rope.theta;
  if (c.rope.type != "default") rope << ", factor " << c.rope.factor;
  out << "model         " << source << "\n"
      << "architecture  " << architecture_name(c.arch) << "\n"
      << "layers        " << c.num_layers << "\n"
      << "heads         " << c.num_heads << " query, " << c.num_kv_heads << " KV (" << c.group_size()
      << " per group), head_dim " << c.head_dim << "\n"
      << "hidden        " << c.hidden_size << ", intermediate " << c.intermediate_size << ", vocab "
      << c.vocab_size << "\n"
      << "parameters    " << with_commas(model->parameter_count())
      << (c.tie_word_embeddings ? " (tied embeddings)" : "") << "\n"
      << "dtype         " << dtype_name(model->dtype()) << " (stored " << c.dtype << ") on "
      << model->device().str() << "\n"
      << "rope          " << rope.str() << "\n"
      << "attention     " << layer_attention_summary(model) << "\n";
}

void print_next_tokens(std::ostream& out, CausalLM& model, const std::vector<int64_t>& prompt,
                       int64_t top) {
  check_vocab(model, prompt);
  at::NoGradGuard no_grad;
  at::Tensor ids = at::tensor(prompt, at::kLong).unsqueeze(0);
  at::Tensor last = model->forward(ids)[0][-1].to(at::kFloat).cpu();
  at::Tensor probs = at::softmax(last, -1);
  auto best = at::topk(probs, std::min<int64_t>(top, probs.size(0)));
  out << "next tokens after " << prompt.size() << " prompt tokens:\n";
  for (int64_t i = 0; i < std::get<0>(best).size(0); ++i) {
    const int64_t id = std::get<1>(best)[i].item<int64_t>();
    out << "  id " << std::setw(7) << id << "  p " << std::fixed << std::setprecision(4)
        << std::get<0>(best)[i].item<float>() << "  logit " << std::setprecision(4)
        << last[id].item<float>() << "\n";
  }
  out.unsetf(std::ios::fixed);
}

}  // namespace consa::cli
