#pragma once
// The pruned TorchScript export: a self-contained scripted model with no gates, the heads of each
// layer stored in the hybrid layout (consa/export/hybrid_layout.h) and attention run as slices of
// KV groups: the full-cache groups, then one slice per sliding window. Its methods:
//   forward(input_ids [B, T]) -> logits [B, T, vocab]
//   init_cache(batch, capacity) -> List[Tensor]   an empty KV cache for `capacity` positions
//   extend(input_ids [B, T], cache, last_only) -> logits   runs T more tokens through the cache
//   decode_step(input_ids [B, 1], cache, position [1]) -> logits   one token at a position held
//       on the device, in shapes that never change, for CUDA graphs (the caller advances the
//       cache's length; ScriptedLM::decode_step and GraphedDecoder do)
// Full-cache groups keep every position; the groups of window W keep a ring buffer of
// min(sinks + W, capacity) slots. With windows W_1 > ... > W_n (consa.json "windows"; n = 1 for
// a single-window export) the cache list is [per layer: full_k, full_v, ring_k_1, ring_v_1, ...,
// ring_k_n, ring_v_n] + [ring slot positions per window (-1 = empty)] + [[length, capacity]
// (CPU int64)]; a slice a layer does not use has 0 heads. extend updates it in place.
// By default only ops LibTorch 1.13 has are used, so files load in 1.13 and 2.x, C++ and Python;
// TorchScriptOptions::fused_kernels trades that for consa's own operators.
// Extra files: assignment.json (in stored head order) and consa.json (format and shapes).
#include <torch/csrc/jit/api/module.h>

#include <string>

#include "consa/core/torch_compat.h"
#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

constexpr int kTorchScriptFormatVersion = 1;

struct TorchScriptOptions {
  int64_t query_block = 1024;  // queries per attention block in extend (bounds the score matrix)
  // Call consa's operators (torch.ops.consa.*, consa/kernels/torch_ops.h lists them) for the
  // norms, RoPE, SwiGLU, the decode step's QKV and its attention: fewer, fused kernels on a GPU.
  // Such a file loads where they are registered: in consa, or in Python after
  // torch.ops.load_library("libconsa_ops.so"). Off (the default): aten operators only.
  bool fused_kernels = false;
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
    // Records `tokens` more positions as filled (decode_step leaves this to its caller).
    void advance(int64_t tokens);
  };
  Cache new_cache(int64_t batch, int64_t capacity);
  at::Tensor extend(const at::Tensor& input_ids, Cache& cache, bool last_only);
  at::Tensor forward(const at::Tensor& input_ids);
  // Exports written before decode_step existed lack it; decode through extend then.
  bool has_decode_step() const;
  // One token per sequence (input_ids [B, 1]) at the cache's end through decode_step, which
  // attends over the whole capacity; logits [B, 1, vocab]. Advances the cache.
  at::Tensor decode_step(const at::Tensor& input_ids, Cache& cache);
  // Throws unless every id lies in [0, vocab) (one host read).
  void check_token_ids(const at::Tensor& input_ids) const;

  const Assignment& assignment() const { return assignment_; }
  int64_t vocab_size() const;
  at::Device device() const;
  at::ScalarType dtype() const;
  torch::jit::Module& module() { return module_; }

 private:
  torch::jit::Module module_;
  Assignment assignment_;
};

// Decoding through a CUDA graph of decode_step, recorded once for one cache: each token is one
// graph replay, without the TorchScript interpreter's host-side work per operator. The model
// and the cache must outlive it. CUDA builds and devices only.
class GraphedDecoder {
 public:
  GraphedDecoder(ScriptedLM& model, ScriptedLM::Cache& cache);
  // Whether `model` can decode this way: a CUDA build, the model on a CUDA device, and an export
  // that has decode_step.
  static bool supported(const ScriptedLM& model);
  // Logits [B, 1, vocab] for `input_ids` [B, 1] at the cache's end; advances the cache. The
  // result is the graph's output buffer: the next step overwrites it.
  at::Tensor step(const at::Tensor& input_ids);

 private:
  ScriptedLM& model_;
  ScriptedLM::Cache& cache_;
  at::Tensor input_ids_, position_, logits_;  // the graph's fixed input and output buffers
  std::unique_ptr<compat::DeviceGraph> graph_;
};

}  // namespace consa
