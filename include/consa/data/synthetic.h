#pragma once
// Synthetic long-range tasks, generated on the fly from (seed, index): a key is embedded in
// filler and asked for back at the end of the sequence, at least `min_distance` tokens later
// (set it beyond the sliding window so that only full attention can answer). Without such data
// no objective can tell which units need full attention.
//
// Token ids are tokenizer-independent, counted from `first_id`:
//   first_id + 0..3   markers KEY, VALUE, QUERY, ANSWER
//   first_id + 4..13  the ten "digits" values are written in
//   first_id + 14..   filler, and the names of keys
//
// passkey             ... KEY d1..dn ...                       QUERY ANSWER d1..dn
// multi_key_needle    ... KEY k VALUE d1..dn ... (m needles)   QUERY k ANSWER d1..dn
// associative_recall  k1 v1 k2 v2 ... (pairs fill the context) QUERY kj ANSWER vj
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace consa {

class TextTasks;

enum class SyntheticTask { Passkey, MultiKeyNeedle, AssociativeRecall };
SyntheticTask parse_synthetic_task(const std::string& name);  // passkey | multi_key_needle | associative_recall
const char* synthetic_task_name(SyntheticTask task);

struct SyntheticOptions {
  int64_t seq_len = 512;
  int64_t vocab_size = 0;
  int64_t first_id = 0;
  int64_t value_digits = 5;   // digits per value (passkey, needles); recall values are 1 digit
  int64_t num_needles = 4;    // multi_key_needle
  int64_t min_distance = 0;   // tokens from the queried value to the query, at least
  double depth = -1.0;        // where the queried value sits in [0, 1] of its allowed range; < 0: random
  uint64_t seed = 0;
  // With a tokenizer (data.tokenizer): the tasks as text in its tokens (consa/data/text_tasks.h);
  // first_id is then unused.
  std::shared_ptr<const TextTasks> text;
};

struct SyntheticSample {
  std::vector<int64_t> tokens;  // seq_len ids
  std::vector<int64_t> answer;  // what the model must produce
  int64_t answer_start = 0;     // tokens[answer_start..] == answer; predicted from the position before
  int64_t value_position = 0;   // where the queried value starts in the context
};

// Deterministic in (options, task, index). Throws when seq_len cannot hold the task.
SyntheticSample make_synthetic_sample(SyntheticTask task, const SyntheticOptions& options, int64_t index);

// Marker and digit ids for a given first_id (the layout above).
struct SyntheticVocab {
  int64_t key, value, query, answer, first_digit, first_filler;
};
SyntheticVocab synthetic_vocab(int64_t first_id);

}  // namespace consa
