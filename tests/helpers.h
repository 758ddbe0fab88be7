#pragma once
// Shared test utilities: fixture paths, scratch directories, tensor comparisons.
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "consa/export/assignment.h"
#include "consa/model/config.h"
#include "consa/model/decoder.h"

namespace consa_test {

// tests/fixtures/<name>: checkpoints written by scripts/make_parity_fixtures.py.
std::string fixture(const std::string& name);

// A fresh empty directory under the system temp folder, removed by remove_scratch_dirs().
std::string scratch_dir(const std::string& tag);
void remove_scratch_dirs();

// A small Llama config for tests: hidden 32, intermediate 48, no sliding-window layers.
consa::ModelConfig tiny_config(int64_t layers, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               int64_t vocab = 50);

// A 3-layer Qwen3-like config (6 heads, 3 KV groups, QKV and o biases, q/k norms).
consa::ModelConfig qwen_like_config();

// A random assignment of `model` with about half of the units on SWA, and every layer mixed
// when possible; layer units alternate.
consa::Assignment random_assignment(consa::CausalLM& model, consa::GateUnit unit, consa::AttentionSpan swa,
                                    uint64_t seed);
// A random assignment whose units each take full attention or one of `windows` (widest first)
// with `sinks`, about evenly; every option is used when the model has that many units.
consa::Assignment random_window_assignment(consa::CausalLM& model, consa::GateUnit unit,
                                           const std::vector<int64_t>& windows, int64_t sinks, uint64_t seed);

double max_abs_diff(const at::Tensor& a, const at::Tensor& b);
// Max |got - want| relative to want's largest magnitude (at least 1e-30).
double peak_rel_err(const at::Tensor& got, const at::Tensor& want);
// `attend` on copies of q, k, v and gate weights z that require gradients, and the gradients of
// sum(out * weights): {out, dq, dk, dv, dz}.
std::vector<at::Tensor> attention_gradients(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& z, const at::Tensor& weights,
    const std::function<at::Tensor(const consa::ProjectedQKV& qkv, const at::Tensor& z)>& attend);

// Runs `steps` steps of consa::FusedAdamW and of torch::optim::AdamW (lr 0.01, betas 0.9/0.95,
// weight decay 0.1) from the same start with the same deterministic gradients, on a parameter
// group on `device` and one on the CPU; returns the largest difference of the final parameters.
double adamw_max_difference(at::Device device, int64_t steps);

// Runs the consa binary with `args`; returns the exit code and fills stdout/stderr.
int run_consa(const std::string& args, std::string* out, std::string* err);

void write_text(const std::string& path, const std::string& text);
std::string read_text(const std::string& path);

}  // namespace consa_test
