// Synthetic long-range tasks: answers are recovered from the token stream by an independent
// scan (not from the generator's bookkeeping), and the key sits beyond the requested distance.
#include <algorithm>
#include <set>

#include "catch_compat.h"
#include "consa/core/error.h"
#include "consa/data/synthetic.h"
#include "consa/data/text_tasks.h"
#include "consa/tokenizer/tokenizer.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

SyntheticOptions options(int64_t seq_len, int64_t min_distance) {
  SyntheticOptions o;
  o.seq_len = seq_len;
  o.vocab_size = 200;
  o.first_id = 3;
  o.min_distance = min_distance;
  o.seed = 17;
  return o;
}

// Scans the tokens the way a reader would: find the query, then look the answer up in the context.
std::vector<int64_t> scan_answer(SyntheticTask task, const std::vector<int64_t>& t, const SyntheticOptions& o,
                                 int64_t* value_pos) {
  const SyntheticVocab v = synthetic_vocab(o.first_id);
  const int64_t query = std::find(t.begin(), t.end(), v.query) - t.begin();
  REQUIRE(query < static_cast<int64_t>(t.size()));
  REQUIRE(std::count(t.begin(), t.end(), v.query) == 1);
  if (task == SyntheticTask::Passkey) {
    REQUIRE(std::count(t.begin(), t.begin() + query, v.key) == 1);
    const int64_t key = std::find(t.begin(), t.end(), v.key) - t.begin();
    *value_pos = key + 1;
    return {t.begin() + key + 1, t.begin() + key + 1 + o.value_digits};
  }
  const int64_t name = t[query + 1];
  if (task == SyntheticTask::MultiKeyNeedle) {
    for (int64_t p = 0; p + 2 < query; ++p)
      if (t[p] == v.key && t[p + 1] == name && t[p + 2] == v.value) {
        *value_pos = p + 3;
        return {t.begin() + p + 3, t.begin() + p + 3 + o.value_digits};
      }
    FAIL("needle not found");
  }
  REQUIRE(std::count(t.begin(), t.begin() + query, name) == 1);  // recall keys are unique
  const int64_t p = std::find(t.begin(), t.begin() + query, name) - t.begin();
  *value_pos = p + 1;
  return {t[p + 1]};
}

}  // namespace

TEST_CASE("synthetic samples hold their answer where an independent scan finds it", "[synthetic]") {
  for (SyntheticTask task : {SyntheticTask::Passkey, SyntheticTask::MultiKeyNeedle, SyntheticTask::AssociativeRecall}) {
    for (int64_t min_distance : {0, 40, 90}) {
      const SyntheticOptions o = options(128, min_distance);
      for (int64_t index = 0; index < 30; ++index) {
        SyntheticSample s = make_synthetic_sample(task, o, index);
        INFO(synthetic_task_name(task) << " min_distance " << min_distance << " index " << index);
        REQUIRE(static_cast<int64_t>(s.tokens.size()) == o.seq_len);
        int64_t value_pos = -1;
        const std::vector<int64_t> found = scan_answer(task, s.tokens, o, &value_pos);
        CHECK(found == s.answer);
        CHECK(std::vector<int64_t>(s.tokens.begin() + s.answer_start, s.tokens.end()) == s.answer);
        CHECK(value_pos == s.value_position);
        const int64_t query = std::find(s.tokens.begin(), s.tokens.end(), synthetic_vocab(o.first_id).query) - s.tokens.begin();
        CHECK(query - value_pos >= min_distance);
        for (int64_t id : s.tokens) CHECK((id >= o.first_id && id < o.vocab_size));
      }
    }
  }
}

TEST_CASE("synthetic samples are deterministic per index and vary across indices", "[synthetic]") {
  const SyntheticOptions o = options(96, 30);
  std::set<std::vector<int64_t>> distinct;
  for (int64_t i = 0; i < 20; ++i) {
    CHECK(make_synthetic_sample(SyntheticTask::Passkey, o, i).tokens == make_synthetic_sample(SyntheticTask::Passkey, o, i).tokens);
    distinct.insert(make_synthetic_sample(SyntheticTask::Passkey, o, i).answer);
  }
  CHECK(distinct.size() >= 18);
  SyntheticOptions at_depth = o;
  at_depth.depth = 0.0;
  CHECK(make_synthetic_sample(SyntheticTask::Passkey, at_depth, 3).value_position == 1);  // KEY at 0
}

TEST_CASE("impossible synthetic settings are refused", "[synthetic]") {
  CHECK_THROWS_WITH(make_synthetic_sample(SyntheticTask::Passkey, options(32, 40), 0),
                    contains("synthetic task passkey: seq_len 32 is too short for min_distance 40"));
  SyntheticOptions tiny = options(64, 0);
  tiny.vocab_size = 20;
  CHECK_THROWS_WITH(make_synthetic_sample(SyntheticTask::Passkey, tiny, 0), contains("need at least 30 token ids"));
  CHECK_THROWS_WITH(parse_synthetic_task("needle"), contains("supported: passkey, multi_key_needle, associative_recall"));
}

TEST_CASE("text tasks: the question's answer is found again in the decoded text, beyond the distance", "[synthetic]") {
  // An independent reading: decode the whole sample to text, find the question, and look the
  // answer up in the context by the sentence that names it.
  const auto text = load_text_tasks(fixture("tokenizers/llama3_style"), "", "data.tokenizer");
  const Tokenizer& tok = text->tokenizer();
  for (SyntheticTask task : {SyntheticTask::Passkey, SyntheticTask::MultiKeyNeedle, SyntheticTask::AssociativeRecall}) {
    for (int64_t i = 0; i < 6; ++i) {
      SyntheticOptions o = options(400, 120);
      o.vocab_size = tok.vocab_size();
      o.text = text;
      const SyntheticSample s = make_synthetic_sample(task, o, i);
      INFO(synthetic_task_name(task) << " sample " << i);
      REQUIRE(static_cast<int64_t>(s.tokens.size()) == 400);
      REQUIRE(std::vector<int64_t>(s.tokens.begin() + s.answer_start, s.tokens.end()) == s.answer);
      const std::string answer = tok.decode(s.answer);
      REQUIRE(answer.size() >= 2);
      CHECK(answer[0] == ' ');
      const std::string context = tok.decode(std::vector<int64_t>(s.tokens.begin(), s.tokens.begin() + s.answer_start));
      const size_t question = context.rfind("\nWhat is ");
      REQUIRE(question != std::string::npos);
      // The question names what it asks for; the context's sentence for it holds the answer.
      std::string sentence = "The pass key is";
      if (task != SyntheticTask::Passkey) {
        const std::string lead = task == SyntheticTask::MultiKeyNeedle ? "The special magic number for " : "The value of ";
        const size_t name = context.find(task == SyntheticTask::MultiKeyNeedle ? "for " : "of ", question) + 3;
        const std::string key = context.substr(name + (context[name] == ' '), context.find('?', name) - name - (context[name] == ' '));
        sentence = lead + key + (task == SyntheticTask::MultiKeyNeedle ? " is:" : " is");
      }
      const size_t found = context.find(sentence + answer);
      CHECK(found < question);
      // The value's tokens sit at value_position, at least min_distance before the answer.
      CHECK(std::vector<int64_t>(s.tokens.begin() + s.value_position, s.tokens.begin() + s.value_position + s.answer.size()) ==
            s.answer);
      CHECK(s.answer_start - s.value_position >= 120);
    }
  }
  SyntheticOptions o = options(40, 10);
  o.vocab_size = tok.vocab_size();
  o.text = text;
  CHECK_THROWS_WITH(make_synthetic_sample(SyntheticTask::Passkey, o, 0), contains("seq_len 40 is too short"));
  o.seq_len = 4000;
  o.num_needles = 41;  // more needles than key words would repeat a key, and the question would be ambiguous
  CHECK_THROWS_WITH(make_synthetic_sample(SyntheticTask::MultiKeyNeedle, o, 0), contains("num_needles 41 is more than its 40"));
  CHECK_THROWS_WITH(load_text_tasks(fixture("tokenizers/missing"), "", "data.tokenizer"), contains("no such file"));
}
