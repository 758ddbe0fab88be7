// consa bench: speed and memory on random weights of real models' shapes. The measurements live
// in bench_decode.cpp (exported models) and bench_train.cpp (training steps).
#include <iostream>

#include "bench.h"
#include "commands.h"
#include "consa/core/error.h"
#include "consa/kernels/fused_ops.h"
#include "consa/eval/baselines.h"

namespace consa::cli {

ModelConfig shape_config(const std::string& name) {
  ModelConfig c;
  c.arch = Architecture::Qwen3;
  c.qk_norm = true;
  c.rope.theta = 1e6;
  c.max_position_embeddings = 40960;
  c.tie_word_embeddings = true;
  c.vocab_size = 151936;
  c.num_layers = 28;
  c.num_heads = 16;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  if (name == "qwen3-0.6b") {
    c.hidden_size = 1024;
    c.intermediate_size = 3072;
  } else if (name == "qwen3-1.7b") {
    c.hidden_size = 2048;
    c.intermediate_size = 6144;
  } else if (name == "tiny") {  // for smoke runs on a CPU
    c.vocab_size = 256;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 16;
    c.hidden_size = 64;
    c.intermediate_size = 128;
  } else {
    fail("--shape '", name, "' is not known; supported: qwen3-0.6b, qwen3-1.7b, tiny");
  }
  c.layer_window.assign(c.num_layers, 0);
  return c;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

CausalLM random_model(const ModelConfig& config, at::Device device, at::ScalarType dtype) {
  CausalLM model(config, at::TensorOptions().dtype(at::kFloat));
  init_random_weights(model, 0.02, 0);
  model->to(device, dtype);
  model->set_fused_kernels(use_fused_kernels(KernelImpl::Auto, device, "model.kernels"));
  return model;
}

Assignment uniform_assignment(CausalLM& model, const AttentionSpan& swa, double rho) {
  BaselineOptions b;
  b.unit = GateUnit::KvHead;
  b.scope = ConstraintScope::PerLayer;
  b.swa = swa;
  b.target = rho;
  return make_baseline(BaselineMethod::Uniform, model, b);
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

int run_bench(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "";
  if (what == "decode") return bench_decode(argc - 1, argv + 1);
  if (what == "train") return bench_train(argc - 1, argv + 1);
  if (what == "-h" || what == "--help") {
    std::cout << "consa bench decode  prefill/decode speed and KV-cache bytes of exported hybrid models\n"
                 "consa bench train   step time, tokens/s, MFU and peak memory of dense, gated and stage-2 training\n"
                 "(on random weights of a real model's shape; see consa bench <what> --help)\n";
    return 0;
  }
  fail("consa bench: expected `consa bench decode` or `consa bench train`, got '", what, "' (see consa bench --help)");
}

}  // namespace consa::cli
