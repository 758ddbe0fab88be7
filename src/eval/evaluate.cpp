#include "consa/eval/evaluate.h"

#include <ATen/core/grad_mode.h>

#include <chrono>
#include <iomanip>
#include <sstream>

#include "consa/core/error.h"

namespace consa {

namespace {

std::string mib(int64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(2) << bytes / (1024.0 * 1024.0) << " MiB";
  return s.str();
}

}  // namespace

LogitsFn model_logits(CausalLM& model) {
  return [&model](const at::Tensor& ids) { return model->forward(ids.to(model->device())); };
}

double EvalReport::retrieval_accuracy() const {
  int64_t correct = 0, total = 0;
  for (const auto& c : retrieval) correct += c.correct, total += c.total;
  return total ? static_cast<double>(correct) / total : 0.0;
}

double EvalReport::retrieval_accuracy(SyntheticTask task, int64_t length) const {
  int64_t correct = 0, total = 0;
  for (const auto& c : retrieval)
    if (c.task == task && c.length == length) correct += c.correct, total += c.total;
  return total ? static_cast<double>(correct) / total : 0.0;
}

nlohmann::json EvalReport::to_json() const {
  nlohmann::json cells = nlohmann::json::array();
  for (const auto& c : retrieval)
    cells.push_back({{"task", synthetic_task_name(c.task)}, {"length", c.length}, {"depth", c.depth},
                     {"correct", c.correct}, {"total", c.total}, {"accuracy", c.accuracy()}});
  nlohmann::json kv = nlohmann::json::array();
  for (const auto& k : kv_cache)
    kv.push_back({{"context", k.context}, {"full_attention_bytes", k.full_attention_bytes},
                  {"sliding_window_bytes", k.sliding_window_bytes},
                  {"bytes", k.full_attention_bytes + k.sliding_window_bytes}, {"dense_bytes", k.dense_bytes}});
  return {{"schema", "consa.eval"},
          {"version", 1},
          {"model", model},
          {"layout", layout},
          {"achieved_sparsity", achieved_sparsity},
          {"heldout_ce", heldout_ce < 0 ? nlohmann::json(nullptr) : nlohmann::json(heldout_ce)},
          {"perplexity", heldout_ce < 0 ? nlohmann::json(nullptr) : nlohmann::json(perplexity())},
          {"heldout_tokens", heldout_tokens},
          {"retrieval_accuracy", retrieval_accuracy()},
          {"retrieval", cells},
          {"kv_cache", kv},
          {"seconds", seconds}};
}

void EvalReport::print(std::ostream& out) const {
  out << "model        " << model << "\n"
      << "layout       " << layout << " (" << std::fixed << std::setprecision(3) << achieved_sparsity
      << " of units on SWA)\n";
  if (heldout_ce >= 0)
    out << "perplexity   " << std::setprecision(3) << perplexity() << " (held-out cross-entropy " << heldout_ce
        << " over " << heldout_tokens << " tokens)\n";
  std::vector<double> depths;
  for (const auto& c : retrieval)
    if (std::find(depths.begin(), depths.end(), c.depth) == depths.end()) depths.push_back(c.depth);
  out << "retrieval    accuracy by depth of the key in the context\n"
      << "  task               length";
  for (double d : depths) out << "  d=" << std::setprecision(2) << d;
  out << "   mean\n";
  for (size_t i = 0; i < retrieval.size();) {
    const RetrievalCell& first = retrieval[i];
    out << "  " << std::left << std::setw(18) << synthetic_task_name(first.task) << std::right << std::setw(7)
        << first.length;
    for (; i < retrieval.size() && retrieval[i].task == first.task && retrieval[i].length == first.length; ++i)
      out << "  " << std::setw(6) << std::setprecision(2) << retrieval[i].accuracy();
    out << "  " << std::setw(5) << std::setprecision(3) << retrieval_accuracy(first.task, first.length) << "\n";
  }
  out << "  all                        mean " << std::setprecision(3) << retrieval_accuracy() << "\n";
  out << "KV cache     per sequence (bf16):";
  for (const auto& k : kv_cache)
    out << "  " << k.context << ": " << mib(k.full_attention_bytes + k.sliding_window_bytes) << " (dense "
        << mib(k.dense_bytes) << ")";
  out << "\n";
  out.unsetf(std::ios::fixed);
}

namespace {

// Logits [B, L, vocab] (fp32, CPU) of a batch; with document ids, each packed document runs
// alone, which any model (a TorchScript export too) computes as the document mask asks.
at::Tensor batch_logits(const LogitsFn& logits, const Batch& batch) {
  if (!batch.document_ids.defined()) return logits(batch.tokens).to(at::kFloat).cpu();
  // Documents never span two rows, so the starts over all B x L positions cut the rows too.
  const at::Tensor starts = PackedDocuments::from_ids(batch.document_ids, at::kCPU).starts;
  const int64_t* start = starts.data_ptr<int64_t>();
  const at::Tensor flat = batch.tokens.reshape({-1});
  std::vector<at::Tensor> parts;
  for (int64_t d = 0; d + 1 < starts.numel(); ++d)
    parts.push_back(logits(flat.slice(0, start[d], start[d + 1]).unsqueeze(0)).to(at::kFloat).cpu()[0]);
  return at::cat(parts, 0).view({batch.tokens.size(0), batch.tokens.size(1), -1});
}

}  // namespace

EvalReport evaluate(const LogitsFn& logits, const Assignment& layout, int64_t vocab_size, const EvalOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  at::NoGradGuard no_grad;
  EvalReport r;
  r.layout = layout.achieved_sparsity() == 0
                 ? std::string("full attention everywhere")
                 : layout.method + ", " + gate_unit_name(layout.unit) + " units, " + layout.describe_windows();
  r.achieved_sparsity = layout.achieved_sparsity();

  if (o.perplexity_data) {
    const DataOptions& d = *o.perplexity_data;
    BatchStream heldout(d, vocab_size, distance_beyond(layout.swa, d.min_distance),
                        Split::Heldout);
    double total = 0, count = 0;
    for (int64_t b = 0; b < d.heldout_batches; ++b) {
      Batch batch = heldout.batch_at(b);
      at::Tensor l = batch_logits(logits, batch);
      at::Tensor pred = l.narrow(1, 0, l.size(1) - 1);
      at::Tensor target = batch.tokens.narrow(1, 1, batch.tokens.size(1) - 1);
      at::Tensor nll = -at::log_softmax(pred, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1);
      total += (nll * batch.ce_mask).sum().item<double>();
      count += batch.ce_mask.sum().item<double>();
    }
    CONSA_CHECK(count > 0, "evaluation: the held-out data has no scored tokens");
    r.heldout_ce = total / count;
    r.heldout_tokens = static_cast<int64_t>(count);
  }

  for (SyntheticTask task : o.tasks)
    for (int64_t length : o.lengths) {
      for (double depth : o.depths) {
        SyntheticOptions s;
        s.seq_len = length;
        s.vocab_size = vocab_size;
        s.first_id = o.first_id;
        s.value_digits = o.value_digits;
        s.num_needles = o.num_needles;
        s.min_distance = distance_beyond(layout.swa, o.min_distance);
        s.depth = depth;
        s.seed = o.seed;
        s.text = o.text;
        std::vector<SyntheticSample> samples;
        std::vector<int64_t> flat;
        for (int64_t i = 0; i < o.samples; ++i) {
          samples.push_back(make_synthetic_sample(task, s, i));
          flat.insert(flat.end(), samples.back().tokens.begin(), samples.back().tokens.end());
        }
        at::Tensor ids = at::tensor(flat, at::kLong).view({o.samples, length});
        at::Tensor predicted = logits(ids).argmax(-1).cpu();  // [N, L]
        RetrievalCell cell{task, length, depth, 0, o.samples};
        for (int64_t i = 0; i < o.samples; ++i) {
          const SyntheticSample& sample = samples[i];
          bool ok = true;
          for (size_t j = 0; j < sample.answer.size() && ok; ++j)
            ok = predicted[i][sample.answer_start - 1 + static_cast<int64_t>(j)].item<int64_t>() == sample.answer[j];
          cell.correct += ok;
        }
        r.retrieval.push_back(cell);
      }
    }
  for (int64_t length : o.lengths) {
    auto [fa, swa] = layout.kv_cache_bytes(length, o.bytes_per_element);
    r.kv_cache.push_back({length, fa, swa, layout.dense_kv_cache_bytes(length, o.bytes_per_element)});
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace consa
