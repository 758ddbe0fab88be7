#pragma once
// The pruned TorchScript export: a self-contained scripted model with no gates, the heads of each
// layer stored in the hybrid layout (consa/export/hybrid_layout.h) and attention run as two
// slices: full-cache KV groups and sliding-window KV groups. Its methods:
//   forward(input_ids [B, T]) -> logits [B, T, vocab]
//   init_cache(batch, capacity) -> List[Tensor]   an empty KV cache for `capacity` positions
//   extend(input_ids [B, T], cache, last_only) -> logits   runs T more tokens through the cache
// Full-cache groups keep every position; sliding-window groups keep a ring buffer of
// min(sinks + window, capacity) slots. The cache list is [per layer: full_k, full_v, ring_k,
// ring_v] + [ring slot positions (-1 = empty), [length, capacity] (CPU int64)]; extend updates
// it in place.
// Only ops LibTorch 1.13 has are used, so files load in 1.13 and 2.x, C++ and Python.
// Extra files: assignment.json (in stored head order) and consa.json (format and shapes).
#include <torch/csrc/jit/api/module.h>

#include <string>

#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

constexpr int kTorchScriptFormatVersion = 1;

struct TorchScriptOptions {
  int64_t query_block = 1024;  // queries per attention block in extend (bounds the score matrix)
};

torch::jit::Module build_scripted_model(CausalLM& model, const Assignment& assignment,
                                        const TorchScriptOptions& options = {});
// Builds and writes `path` atomically, with assignment.json and consa.json embedded.
void export_torchscript(CausalLM& model, const Assignment& assignment, const std::string& path,
                        const TorchScriptOptions& options = {});

// A scripted hybrid model (loaded from a file or built in memory) and calls into it.
class ScriptedLM {
 public:
  ScriptedLM(torch::jit::Module module, Assignment assignment);
  static ScriptedLM load(const std::string& path, at::Device device);

  struct Cache {
    c10::List<at::Tensor> tensors;
    int64_t length() const;
    int64_t capacity() const;
    // Bytes of key/value storage held (ring-slot positions and the length excluded).
    int64_t kv_bytes() const;
  };
  Cache new_cache(int64_t batch, int64_t capacity);
  at::Tensor extend(const at::Tensor& input_ids, Cache& cache, bool last_only);
  at::Tensor forward(const at::Tensor& input_ids);

  const Assignment& assignment() const { return assignment_; }
  int64_t vocab_size() const;
  at::Device device() const;
  at::ScalarType dtype() const;
  torch::jit::Module& module() { return module_; }

 private:
  torch::jit::Module module_;
  Assignment assignment_;
};

}  // namespace consa
