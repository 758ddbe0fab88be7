#include "consa/data/synthetic.h"

#include <algorithm>
#include <random>

#include "consa/core/enum_names.h"
#include "consa/core/error.h"
#include "consa/data/text_tasks.h"

namespace consa {

namespace {
constexpr EnumName<SyntheticTask> kTasks[] = {{SyntheticTask::Passkey, "passkey"},
                                              {SyntheticTask::MultiKeyNeedle, "multi_key_needle"},
                                              {SyntheticTask::AssociativeRecall, "associative_recall"}};
}  // namespace

SyntheticTask parse_synthetic_task(const std::string& name) {
  return parse_enum(kTasks, name, "synthetic task");
}

const char* synthetic_task_name(SyntheticTask task) { return enum_name(kTasks, task); }

SyntheticVocab synthetic_vocab(int64_t first_id) {
  return {first_id, first_id + 1, first_id + 2, first_id + 3, first_id + 4, first_id + 14};
}

namespace {

constexpr int64_t kMinFillerIds = 16;

class Sampler {
 public:
  Sampler(const SyntheticOptions& o, SyntheticTask task, int64_t index)
      : rng_(o.seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(index) * 0xBF58476D1CE4E5B9ull) ^
             (static_cast<uint64_t>(task) + 1) * 0x94D049BB133111EBull),
        vocab_(synthetic_vocab(o.first_id)),
        filler_count_(o.vocab_size - vocab_.first_filler) {}

  int64_t uniform(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng_); }
  int64_t digit() { return vocab_.first_digit + uniform(0, 9); }
  int64_t filler() { return vocab_.first_filler + uniform(0, filler_count_ - 1); }
  std::vector<int64_t> digits(int64_t n) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < n; ++i) out.push_back(digit());
    return out;
  }
  // `n` distinct key names from the filler range.
  std::vector<int64_t> distinct_keys(int64_t n) {
    std::vector<int64_t> pool(filler_count_);
    for (int64_t i = 0; i < filler_count_; ++i) pool[i] = vocab_.first_filler + i;
    std::shuffle(pool.begin(), pool.end(), rng_);
    pool.resize(n);
    return pool;
  }
  // Position in [0, last] chosen by depth (or at random).
  int64_t place(double depth, int64_t last) {
    if (depth < 0) return uniform(0, last);
    return static_cast<int64_t>(depth * static_cast<double>(last) + 0.5);
  }
  const SyntheticVocab& vocab() const { return vocab_; }

 private:
  std::mt19937_64 rng_;
  SyntheticVocab vocab_;
  int64_t filler_count_;
};

void check_fits(bool fits, const SyntheticOptions& o, SyntheticTask task) {
  CONSA_CHECK(fits, "synthetic task ", synthetic_task_name(task), ": seq_len ", o.seq_len,
              " is too short for min_distance ", o.min_distance, " and its needles");
}

}  // namespace

SyntheticSample make_synthetic_sample(SyntheticTask task, const SyntheticOptions& o, int64_t index) {
  if (o.text) return o.text->sample(task, o, index);
  CONSA_CHECK(o.vocab_size - o.first_id >= 14 + kMinFillerIds, "synthetic tasks need at least ",
              14 + kMinFillerIds, " token ids from first_id ", o.first_id, ", vocab_size is ", o.vocab_size);
  CONSA_CHECK(o.value_digits > 0 && o.num_needles > 0 && o.min_distance >= 0 && o.depth <= 1.0,
              "synthetic task options out of range (value_digits > 0, num_needles > 0, min_distance >= 0, depth <= 1)");
  Sampler s(o, task, index);
  const SyntheticVocab& v = s.vocab();
  SyntheticSample out;

  if (task == SyntheticTask::AssociativeRecall) {
    // [pad][k1 v1 k2 v2 ... ][QUERY kj ANSWER vj]: the pairs fill the context; the queried
    // value (at pad + 2j + 1) lies at least min_distance before QUERY (at `context`).
    const int64_t context = o.seq_len - 4;
    const int64_t pad = context % 2, pairs = context / 2;
    CONSA_CHECK(pairs >= 1 && pairs <= o.vocab_size - v.first_filler, "synthetic task associative_recall: seq_len ",
                o.seq_len, " must be between 6 and ", 2 * (o.vocab_size - v.first_filler) + 5,
                " with vocab_size ", o.vocab_size, " (keys are distinct filler ids)");
    const int64_t last_j = std::min(pairs - 1, (context - o.min_distance - pad - 1) / 2);
    check_fits(context - o.min_distance - pad - 1 >= 0, o, task);
    std::vector<int64_t> keys = s.distinct_keys(pairs);
    for (int64_t i = 0; i < pad; ++i) out.tokens.push_back(v.first_digit);  // a value-free lead-in
    for (int64_t i = 0; i < pairs; ++i) out.tokens.insert(out.tokens.end(), {keys[i], s.digit()});
    const int64_t j = s.place(o.depth, last_j);
    out.value_position = pad + 2 * j + 1;
    out.answer = {out.tokens[out.value_position]};
    out.tokens.insert(out.tokens.end(), {v.query, keys[j], v.answer});
    out.answer_start = static_cast<int64_t>(out.tokens.size());
    out.tokens.push_back(out.answer[0]);
    return out;
  }

  const int64_t n = o.value_digits;
  const bool needles = task == SyntheticTask::MultiKeyNeedle;
  const int64_t count = needles ? o.num_needles : 1;
  const int64_t needle_len = needles ? n + 3 : n + 1;    // KEY k VALUE d.. | KEY d..
  const int64_t tail_len = (needles ? 3 : 2) + n;        // QUERY [k] ANSWER d..
  const int64_t context = o.seq_len - tail_len;
  check_fits(context >= count * needle_len, o, task);

  std::vector<int64_t> keys = needles ? s.distinct_keys(count) : std::vector<int64_t>{0};
  std::vector<std::vector<int64_t>> values;
  for (int64_t i = 0; i < count; ++i) values.push_back(s.digits(n));
  const int64_t target = needles ? s.uniform(0, count - 1) : 0;

  // The queried needle's value starts at start + (needle_len - n) and must be at least
  // min_distance before the query (at position `context`).
  const int64_t value_offset = needle_len - n;
  const int64_t last_start = std::min(context - o.min_distance - value_offset, context - needle_len);
  check_fits(last_start >= 0, o, task);
  std::vector<int64_t> starts(count, -1);
  starts[target] = s.place(o.depth, last_start);
  // Other needles go into free slots, never overlapping.
  std::vector<bool> used(context, false);
  for (int64_t p = starts[target]; p < starts[target] + needle_len; ++p) used[p] = true;
  for (int64_t i = 0; i < count; ++i) {
    if (i == target) continue;
    for (int attempt = 0; attempt < 1000 && starts[i] < 0; ++attempt) {
      const int64_t p = s.uniform(0, context - needle_len);
      if (std::none_of(used.begin() + p, used.begin() + p + needle_len, [](bool b) { return b; })) {
        starts[i] = p;
        std::fill(used.begin() + p, used.begin() + p + needle_len, true);
      }
    }
    check_fits(starts[i] >= 0, o, task);
  }

  // Filler never reuses a key name, so each key appears only in its own needle and the query.
  out.tokens.assign(context, 0);
  for (int64_t p = 0; p < context; ++p) {
    do out.tokens[p] = s.filler();
    while (needles && std::find(keys.begin(), keys.end(), out.tokens[p]) != keys.end());
  }
  for (int64_t i = 0; i < count; ++i) {
    std::vector<int64_t> needle = {v.key};
    if (needles) needle.insert(needle.end(), {keys[i], v.value});
    needle.insert(needle.end(), values[i].begin(), values[i].end());
    std::copy(needle.begin(), needle.end(), out.tokens.begin() + starts[i]);
  }
  out.value_position = starts[target] + value_offset;
  out.tokens.push_back(v.query);
  if (needles) out.tokens.push_back(keys[target]);
  out.tokens.push_back(v.answer);
  out.answer_start = static_cast<int64_t>(out.tokens.size());
  out.answer = values[target];
  out.tokens.insert(out.tokens.end(), out.answer.begin(), out.answer.end());
  return out;
}

}  // namespace consa
