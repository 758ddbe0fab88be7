#include "consa/data/batches.h"

#include "consa/core/error.h"
#include "consa/data/text_tasks.h"
#include "consa/core/mix.h"

namespace consa {

namespace {

// The synthetic/shard choice hashes the sequence index.
uint64_t mix(uint64_t x) { return splitmix64(x); }

// Held-out synthetic samples come from a different seed, so they never repeat training ones.
constexpr uint64_t kHeldoutSeedOffset = 0x5EEDF00Dull;

}  // namespace

SyntheticOptions synthetic_options(const DataOptions& data, int64_t vocab_size, int64_t min_distance) {
  SyntheticOptions s;
  s.seq_len = data.seq_len;
  s.vocab_size = vocab_size;
  s.value_digits = data.value_digits;
  s.num_needles = data.num_needles;
  s.min_distance = min_distance;
  s.seed = data.seed;
  if (!data.tokenizer.empty()) s.text = load_text_tasks(data.tokenizer, data.filler, "data.tokenizer");
  return s;
}

BatchStream::BatchStream(const DataOptions& options, int64_t vocab_size, int64_t min_distance, Split split)
    : options_(options), synthetic_(synthetic_options(options, vocab_size, min_distance)), split_(split) {
  if (split == Split::Heldout) synthetic_.seed += kHeldoutSeedOffset;

  int64_t tokens = 0;
  for (const auto& spec : options.shards) {
    sources_.push_back(open_token_source(spec));
    sources_.back()->check_vocabulary(vocab_size);
    tokens += sources_.back()->size();
  }
  total_windows_ = tokens / options.seq_len;
  if (!sources_.empty()) {
    heldout_windows_ = std::min(options.heldout_batches * options.batch_size, total_windows_ / 2);
    CONSA_CHECK(total_windows_ - heldout_windows_ >= 1, "data.shards: ", tokens, " tokens make no training window of ",
                options.seq_len, " tokens");
    CONSA_CHECK(split == Split::Train || heldout_windows_ >= 1 || options.heldout_batches == 0,
                "data.shards: too few tokens for a held-out split");
  }
}

namespace {

// The document of `source` that holds token `offset`: the last d with document_start(d) <= offset.
int64_t document_at(const TokenSource& source, int64_t offset) {
  int64_t lo = 0, hi = source.documents() - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (source.document_start(mid) <= offset) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

}  // namespace

void BatchStream::read_window(int64_t window, int64_t* out, int64_t* documents) const {
  int64_t offset = window * options_.seq_len, need = options_.seq_len;
  int64_t document = -1;  // the window's documents are numbered from 0; each source starts a new one
  for (const auto& source : sources_) {
    const int64_t size = source->size();
    if (offset >= size) {
      offset -= size;
      continue;
    }
    const int64_t n = std::min(need, size - offset);
    source->read(offset, n, out);
    if (documents) {
      int64_t d = document_at(*source, offset);
      ++document;
      for (int64_t t = 0; t < n; ++t) {
        for (; source->document_start(d + 1) <= offset + t; ++d) ++document;  // one starts inside the window
        documents[t] = document;
      }
      documents += n;
    }
    out += n;
    need -= n;
    offset = 0;
    if (need == 0) return;
  }
}

void BatchStream::fill_sequence(int64_t sequence, int64_t* tokens, float* mask, int64_t* documents) const {
  const int64_t len = options_.seq_len;
  const uint64_t h = mix(options_.seed * 1315423911ull + static_cast<uint64_t>(sequence) +
                         (split_ == Split::Heldout ? kHeldoutSeedOffset : 0));
  const bool synthetic = sources_.empty() || options_.synthetic_ratio >= 1.0 ||
                         (static_cast<double>(h >> 11) / 9007199254740992.0) < options_.synthetic_ratio;
  if (synthetic) {
    const SyntheticTask task = options_.synthetic_tasks[mix(h) % options_.synthetic_tasks.size()];
    SyntheticSample s = make_synthetic_sample(task, synthetic_, sequence);
    std::copy(s.tokens.begin(), s.tokens.end(), tokens);
    // Only the answer is a learnable target; the filler is noise by construction.
    for (int64_t t = 0; t + 1 < len; ++t) mask[t] = (t + 1 >= s.answer_start) ? 1.f : 0.f;
    if (documents) std::fill(documents, documents + len, int64_t{0});
    return;
  }
  const int64_t train_windows = total_windows_ - heldout_windows_;
  const int64_t window = split_ == Split::Train ? sequence % train_windows
                                                : train_windows + sequence % std::max<int64_t>(1, heldout_windows_);
  read_window(window, tokens, documents);
  // Across a document boundary the next token is unrelated: not a target under the mask.
  for (int64_t t = 0; t + 1 < len; ++t) mask[t] = (!documents || documents[t + 1] == documents[t]) ? 1.f : 0.f;
}

Batch BatchStream::sequences(int64_t first, int64_t count) const {
  const int64_t len = options_.seq_len;
  Batch batch{at::empty({count, len}, at::kLong), at::empty({count, len - 1}, at::kFloat), {}};
  if (options_.document_mask) batch.document_ids = at::empty({count, len}, at::kLong);
  for (int64_t i = 0; i < count; ++i)
    fill_sequence(first + i, batch.tokens[i].data_ptr<int64_t>(), batch.ce_mask[i].data_ptr<float>(),
                  options_.document_mask ? batch.document_ids[i].data_ptr<int64_t>() : nullptr);
  return batch;
}

}  // namespace consa
