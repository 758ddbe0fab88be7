#pragma once
// Quality and cost of a model under an attention layout: held-out perplexity, long-context
// retrieval accuracy over a grid of context lengths x insertion depths, and KV-cache bytes per
// sequence. The model is any function from token ids to logits (a CausalLM under an assignment,
// or a scripted export), so dense models, gated runs and exports are measured the same way.
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <vector>

#include "consa/data/batches.h"
#include "consa/data/synthetic.h"
#include "consa/export/assignment.h"
#include "consa/model/decoder.h"

namespace consa {

using LogitsFn = std::function<at::Tensor(const at::Tensor& input_ids)>;  // [B, L] -> [B, L, vocab]

// `model` as it is set up (assignment applied), ids moved to its device.
LogitsFn model_logits(CausalLM& model);

struct EvalOptions {
  std::vector<SyntheticTask> tasks = {SyntheticTask::Passkey, SyntheticTask::MultiKeyNeedle};
  std::vector<int64_t> lengths = {256, 512};
  std::vector<double> depths = {0.1, 0.5, 0.9};
  int64_t samples = 8;        // per (task, length, depth) cell
  int64_t first_id = 0;       // synthetic token layout (consa/data/synthetic.h)
  std::shared_ptr<const TextTasks> text;  // set: the tasks as text in the model's tokens
  int64_t value_digits = 5;
  int64_t num_needles = 4;
  int64_t min_distance = 0;   // key-to-query distance; 0: the layout's window + sinks + 1
  uint64_t seed = 1000003;    // differs from training streams' seeds
  std::optional<DataOptions> perplexity_data;  // held-out split; none: no perplexity
  int64_t bytes_per_element = 2;               // KV-cache figures (bf16 serving)
};

struct RetrievalCell {
  SyntheticTask task;
  int64_t length = 0;
  double depth = 0;
  int64_t correct = 0, total = 0;
  double accuracy() const { return total ? static_cast<double>(correct) / total : 0.0; }
};

struct EvalReport {
  std::string model, layout;     // what was evaluated
  double achieved_sparsity = 0;
  double heldout_ce = -1;        // mean cross-entropy over the held-out mask (-1: not measured)
  int64_t heldout_tokens = 0;
  std::vector<RetrievalCell> retrieval;
  struct Kv {
    int64_t context, full_attention_bytes, sliding_window_bytes, dense_bytes;
  };
  std::vector<Kv> kv_cache;      // per evaluated length
  double seconds = 0;

  double perplexity() const { return heldout_ce < 0 ? -1 : std::exp(heldout_ce); }
  double retrieval_accuracy() const;  // over all cells
  double retrieval_accuracy(SyntheticTask task, int64_t length) const;  // over depths
  nlohmann::json to_json() const;
  void print(std::ostream& out) const;
};

// A sample counts as retrieved when greedy decoding would reproduce the whole answer: every
// answer token is the argmax at its position given the correct prefix (one forward pass).
EvalReport evaluate(const LogitsFn& logits, const Assignment& layout, int64_t vocab_size, const EvalOptions& options);

}  // namespace consa
