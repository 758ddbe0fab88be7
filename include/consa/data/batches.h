#pragma once
// Training and held-out batches: fixed-length sequences drawn deterministically from synthetic
// long-range tasks and/or packed token shards. Sequence i of a split is a pure function of
// (options, split, i), so a run resumes exactly from a cursor.
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "consa/attention/attention.h"
#include "consa/data/synthetic.h"
#include "consa/data/token_sources.h"

namespace consa {

struct DataOptions {
  int64_t seq_len = 512;
  int64_t batch_size = 8;
  int64_t heldout_batches = 4;           // evaluation batches, never trained on
  // Pre-tokenized corpora (consa shards, Megatron datasets, raw token files), packed end to end
  // into seq_len windows in this order.
  std::vector<TokenSourceSpec> shards;
  std::vector<SyntheticTask> synthetic_tasks = {SyntheticTask::Passkey};
  double synthetic_ratio = 1.0;          // fraction of sequences drawn from synthetic tasks
  int64_t min_distance = 0;              // key-to-query distance; 0: the gate window + 1
  int64_t value_digits = 5;
  int64_t num_needles = 4;
  uint64_t seed = 0;
  // With a tokenizer.json: the synthetic tasks as text in its tokens (consa/data/text_tasks.h),
  // haystack from `filler` (a text file, one sentence per line; empty: built-in sentences).
  std::string tokenizer, filler;
  // Attention stays inside each document of a packed shard window (Batch::document_ids), and the
  // last token of a document is not trained to predict the next document's first.
  bool document_mask = false;
};

struct Batch {
  at::Tensor tokens;   // [B, L] int64
  at::Tensor ce_mask;  // [B, L - 1] float: 1 where predicting token t + 1 counts for cross-entropy
  // [B, L] int64 with data.document_mask: each position's document within its row (non-decreasing;
  // a synthetic sequence is document 0 throughout); undefined otherwise.
  at::Tensor document_ids;
};

enum class Split { Train, Heldout };

// The key-to-query distance for retrieval data meant to defeat `swa`: `configured` when set
// (> 0), otherwise just past the span's window and sinks.
inline int64_t distance_beyond(const AttentionSpan& swa, int64_t configured) {
  return configured > 0 ? configured : swa.window + swa.sinks + 1;
}

// The synthetic tasks' options of `data` (its text tasks loaded when data.tokenizer is set), with
// keys `min_distance` tokens before their query: what a training stream samples from.
SyntheticOptions synthetic_options(const DataOptions& data, int64_t vocab_size, int64_t min_distance);

class BatchStream {
 public:
  // `min_distance` is the resolved key-to-query distance for synthetic tasks.
  BatchStream(const DataOptions& options, int64_t vocab_size, int64_t min_distance, Split split);

  Batch next() { return batch_at(cursor_++); }
  Batch batch_at(int64_t index) const { return sequences(index * options_.batch_size, options_.batch_size); }
  // Sequences [first, first + count) of the split (batch_at(i) is sequences(i * batch_size,
  // batch_size)): a data-parallel rank reads its own slice of a step's global batch.
  Batch sequences(int64_t first, int64_t count) const;
  int64_t cursor() const { return cursor_; }
  void seek(int64_t cursor) { cursor_ = cursor; }
  int64_t heldout_windows() const { return heldout_windows_; }

 private:
  void fill_sequence(int64_t sequence, int64_t* tokens, float* mask, int64_t* documents) const;
  // Copies window `window` of the packed shards; with `documents`, numbers its documents too.
  void read_window(int64_t window, int64_t* tokens, int64_t* documents) const;

  DataOptions options_;
  SyntheticOptions synthetic_;
  Split split_;
  std::vector<std::shared_ptr<const TokenSource>> sources_;
  int64_t total_windows_ = 0, heldout_windows_ = 0;
  int64_t cursor_ = 0;
};

}  // namespace consa
