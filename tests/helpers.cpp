#include "helpers.h"

#include <ftw.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "consa/train/fused_adamw.h"

namespace consa_test {
namespace fs = std::filesystem;

namespace {
// Directories made by scratch_dir; removed by remove_scratch_dirs() from main(), explicitly
// rather than from a static destructor that would run amid library teardown.
std::vector<std::string>& scratch_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}
}  // namespace

// POSIX nftw instead of std::filesystem::remove_all: pip builds of libtorch.so export their own
// copy of remove_all, which the dynamic linker may pick and which crashes there.
void remove_scratch_dirs() {
  auto remove_entry = [](const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); };
  for (const auto& d : scratch_dirs()) ::nftw(d.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
  scratch_dirs().clear();
}

std::string fixture(const std::string& name) { return std::string(CONSA_FIXTURES_DIR) + "/" + name; }

std::string scratch_dir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("consa-test-" + tag + "-XXXXXX")).string();
  char* made = ::mkdtemp(pattern.data());
  if (!made) throw std::runtime_error("mkdtemp failed for " + pattern);
  scratch_dirs().push_back(made);
  return made;
}

consa::ModelConfig tiny_config(int64_t layers, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               int64_t vocab) {
  consa::ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = layers;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.layer_window.assign(layers, 0);
  return c;
}

consa::ModelConfig qwen_like_config() {
  using namespace consa;
  ModelConfig c = tiny_config(3, 6, 3, 8, 61);
  c.arch = Architecture::Qwen3;
  c.qkv_bias = true;
  c.o_bias = true;
  c.qk_norm = true;
  return c;
}

consa::Assignment random_assignment(consa::CausalLM& model, consa::GateUnit unit, consa::AttentionSpan swa,
                                    uint64_t seed) {
  using namespace consa;
  const ModelConfig& c = model->config();
  Assignment a = Assignment::for_model(c);
  a.unit = unit;
  a.swa = swa;
  const int64_t units = units_per_layer(unit, c);
  at::manual_seed(seed);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::vector<bool> full;
    std::vector<double> scores;
    for (int64_t u = 0; u < units; ++u) {
      const double s = at::randn({1}).item<double>();
      full.push_back(unit == GateUnit::Layer ? l % 2 == 1 : s > 0);
      scores.push_back(s);
    }
    a.full.push_back(full);
    a.scores.push_back(scores);
  }
  a.target = a.achieved_sparsity();
  a.weights_checksum = weights_checksum(model);
  return a;
}

consa::Assignment random_window_assignment(consa::CausalLM& model, consa::GateUnit unit,
                                           const std::vector<int64_t>& windows, int64_t sinks, uint64_t seed) {
  using namespace consa;
  Assignment a = random_assignment(model, unit, AttentionSpan::sliding(windows.front(), sinks), seed);
  const int64_t options = 1 + static_cast<int64_t>(windows.size());
  // The first `options` units take each option once (from a seed-dependent start), the rest at random.
  int64_t unit_index = 0;
  for (size_t l = 0; l < a.full.size(); ++l) {
    std::vector<int64_t> layer;
    for (size_t u = 0; u < a.full[l].size(); ++u, ++unit_index) {
      const int64_t pick = unit_index < options ? (static_cast<int64_t>(seed) + unit_index) % options
                                                : at::randint(0, options, {1}).item<int64_t>();
      a.full[l][u] = pick == 0;
      layer.push_back(pick == 0 ? 0 : windows[pick - 1]);
    }
    a.windows.push_back(layer);
  }
  a.target = a.achieved_sparsity();
  return a;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).abs().max().item<double>();
}

double peak_rel_err(const at::Tensor& got, const at::Tensor& want) {
  const double scale = want.abs().max().item<double>();
  return max_abs_diff(got, want) / std::max(scale, 1e-30);
}

std::vector<at::Tensor> attention_gradients(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& z, const at::Tensor& weights,
    const std::function<at::Tensor(const consa::ProjectedQKV& qkv, const at::Tensor& z)>& attend) {
  consa::ProjectedQKV qkv{q.clone().requires_grad_(true), k.clone().requires_grad_(true), v.clone().requires_grad_(true)};
  const at::Tensor gates = z.clone().requires_grad_(true);
  const at::Tensor out = attend(qkv, gates);
  (out * weights).sum().backward();
  return {out.detach(), qkv.q.grad(), qkv.k.grad(), qkv.v.grad(), gates.grad()};
}

int run_consa(const std::string& args, std::string* out, std::string* err) {
  const std::string dir = scratch_dir("cli");
  const std::string out_path = dir + "/stdout", err_path = dir + "/stderr";
  const std::string cmd = std::string(CONSA_BINARY) + " " + args + " >" + out_path + " 2>" + err_path;
  const int status = std::system(cmd.c_str());
  if (out) *out = read_text(out_path);
  if (err) *err = read_text(err_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

double adamw_max_difference(at::Device device, int64_t steps) {
  auto make_params = [&]() {
    at::manual_seed(3);
    std::vector<at::Tensor> on_device = {at::randn({7, 5}).to(device).requires_grad_(true),
                                         at::randn({11}).to(device).requires_grad_(true)};
    std::vector<at::Tensor> on_cpu = {at::randn({4}).requires_grad_(true)};
    return std::make_pair(on_device, on_cpu);
  };
  auto run = [&](auto make_optimizer) {
    auto [on_device, on_cpu] = make_params();
    auto options = [](double lr) {
      auto o = std::make_unique<torch::optim::AdamWOptions>(lr);
      o->betas({0.9, 0.95}).weight_decay(0.1);
      return o;
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(on_device, options(0.01));
    groups.emplace_back(on_cpu, options(0.05));
    auto optimizer = make_optimizer(std::move(groups));
    for (int64_t step = 0; step < steps; ++step) {
      optimizer->zero_grad();
      for (auto* list : {&on_device, &on_cpu})
        for (auto& p : *list) {
          // A gradient that changes sign and scale from step to step.
          at::NoGradGuard no_grad;
          p.mutable_grad() = at::sin(p.detach() * (step + 1)) * (step % 2 == 0 ? 1.0 : 0.3);
        }
      optimizer->step();
    }
    std::vector<at::Tensor> out;
    for (auto* list : {&on_device, &on_cpu})
      for (auto& p : *list) out.push_back(p.detach().cpu());
    return out;
  };
  auto fused = run([](std::vector<torch::optim::OptimizerParamGroup> g) {
    return std::make_unique<consa::FusedAdamW>(std::move(g), torch::optim::AdamWOptions(0.01));
  });
  auto reference = run([](std::vector<torch::optim::OptimizerParamGroup> g) {
    return std::make_unique<torch::optim::AdamW>(std::move(g), torch::optim::AdamWOptions(0.01));
  });
  double worst = 0;
  for (size_t i = 0; i < fused.size(); ++i) worst = std::max(worst, max_abs_diff(fused[i], reference[i]));
  return worst;
}

}  // namespace consa_test
