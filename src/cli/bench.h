#pragma once
// What the `consa bench` measurements share: model shapes, random models, the uniform hybrid
// assignment and timing helpers.
#include <chrono>
#include <string>
#include <vector>

#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa::cli {

using Clock = std::chrono::steady_clock;

// Shapes of public checkpoints (their config.json values): qwen3-0.6b, qwen3-1.7b, and tiny for
// smoke runs on a CPU.
ModelConfig shape_config(const std::string& name);
// A model of `config` with transformers-style random weights (seed 0).
CausalLM random_model(const ModelConfig& config, at::Device device, at::ScalarType dtype);
// The same fraction `rho` of KV heads on `swa` in every layer (per-layer scope, as serving
// engines prefer); rho = 0 is all full attention.
Assignment uniform_assignment(CausalLM& model, const AttentionSpan& swa, double rho);

double median(std::vector<double> values);
double seconds_since(Clock::time_point start);

int bench_decode(int argc, char** argv);
int bench_train(int argc, char** argv);

}  // namespace consa::cli
