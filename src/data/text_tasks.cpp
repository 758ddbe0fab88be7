#include "consa/data/text_tasks.h"

#include <algorithm>
#include <fstream>
#include <random>

#include "consa/core/error.h"
#include "consa/core/strings.h"
#include "consa/tokenizer/tokenizer.h"

namespace consa {

namespace {

// Haystack sentences when no filler file is given (LongLoRA's and DuoAttention's filler style).
constexpr const char* kFiller[] = {
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.",
    "The river flows to the sea.", "A bird sings in the morning.", "The road winds through the hills.",
    "Clouds drift slowly over the town.", "The market opens at dawn.", "Leaves fall in the autumn wind.",
    "The old bridge crosses the valley."};

// Names for keys: common words, so that each is a word of the model's language.
constexpr const char* kKeyWords[] = {
    "apple", "river", "candle", "mountain", "violin", "harbor", "lantern", "meadow", "falcon", "garden",
    "pepper", "silver", "thunder", "window", "anchor", "basket", "castle", "dolphin", "feather", "glacier",
    "helmet", "island", "jungle", "kettle", "ladder", "marble", "needle", "orchard", "pillow", "quartz",
    "rocket", "saddle", "tunnel", "umbrella", "valley", "walnut", "yogurt", "zebra", "copper", "desert"};
constexpr int64_t kKeyWordCount = sizeof(kKeyWords) / sizeof(kKeyWords[0]);

constexpr const char* kInstruction =
    "There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about it.\n";

std::string digits(std::mt19937_64& rng, int64_t n) {
  std::string s;
  // A leading zero would read as a shorter number.
  s.push_back(static_cast<char>('1' + std::uniform_int_distribution<int>(0, 8)(rng)));
  for (int64_t i = 1; i < n; ++i) s.push_back(static_cast<char>('0' + std::uniform_int_distribution<int>(0, 9)(rng)));
  return s;
}

void append(std::vector<int64_t>& out, const std::vector<int64_t>& ids) { out.insert(out.end(), ids.begin(), ids.end()); }

}  // namespace

TextTasks::TextTasks(std::shared_ptr<const Tokenizer> tokenizer, const std::string& filler_path)
    : tokenizer_(std::move(tokenizer)) {
  std::vector<std::string> sentences;
  if (filler_path.empty()) {
    sentences.assign(std::begin(kFiller), std::end(kFiller));
  } else {
    std::ifstream in(filler_path);
    CONSA_CHECK(in.good(), filler_path, ": cannot read the filler text");
    for (std::string line; std::getline(in, line);)
      if (line.find_first_not_of(" \t\r") != std::string::npos) sentences.push_back(line);
    CONSA_CHECK(!sentences.empty(), filler_path, ": the filler text has no non-empty line");
  }
  for (const auto& s : sentences) filler_.push_back(encode(" " + s));
}

std::vector<int64_t> TextTasks::encode(const std::string& text) const { return tokenizer_->encode(text, false); }

SyntheticSample TextTasks::sample(SyntheticTask task, const SyntheticOptions& o, int64_t index) const {
  CONSA_CHECK(o.value_digits > 0 && o.num_needles > 0 && o.min_distance >= 0 && o.depth <= 1.0,
              "synthetic task options out of range (value_digits > 0, num_needles > 0, min_distance >= 0, depth <= 1)");
  CONSA_CHECK(tokenizer_->vocab_size() <= o.vocab_size, tokenizer_->source(), ": the tokenizer's ",
              tokenizer_->vocab_size(), " ids do not fit the model's vocabulary of ", o.vocab_size);
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(index) * 0xBF58476D1CE4E5B9ull) ^
                      (static_cast<uint64_t>(task) + 1) * 0x94D049BB133111EBull);
  const auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };

  // The needles, and which one is asked for.
  const int64_t count = task == SyntheticTask::MultiKeyNeedle ? o.num_needles : 1;
  CONSA_CHECK(count <= kKeyWordCount, "text task multi_key_needle: num_needles ", count, " is more than its ",
              kKeyWordCount, " distinct key words");
  std::vector<int64_t> word_order(kKeyWordCount);
  for (int64_t i = 0; i < kKeyWordCount; ++i) word_order[i] = i;
  std::shuffle(word_order.begin(), word_order.end(), rng);
  std::vector<std::string> keys, values;
  for (int64_t i = 0; i < std::max<int64_t>(count, task == SyntheticTask::AssociativeRecall ? kKeyWordCount : 1); ++i) {
    keys.push_back(kKeyWords[word_order[i % kKeyWordCount]]);
    values.push_back(digits(rng, task == SyntheticTask::AssociativeRecall ? std::min<int64_t>(o.value_digits, 2) : o.value_digits));
  }
  const auto needle_text = [&](int64_t i) -> std::pair<std::string, std::string> {  // (before value, after value)
    switch (task) {
      case SyntheticTask::Passkey:
        return {" The pass key is", " " + values[i] + ". Remember it. " + values[i] + " is the pass key.\n"};
      case SyntheticTask::MultiKeyNeedle:
        return {" The special magic number for " + keys[i] + " is:", " " + values[i] + ".\n"};
      case SyntheticTask::AssociativeRecall:
        return {" The value of " + keys[i] + " is", " " + values[i] + "."};
    }
    return {};
  };

  SyntheticSample out;
  const std::vector<int64_t> prefix = encode(task == SyntheticTask::AssociativeRecall ? std::string(
      "Remember the value of each word.\n") : std::string(kInstruction));
  // Recall pairs fill the context: as many as fit beside about 60 tokens of instruction and question.
  int64_t needle_count = count;
  if (task == SyntheticTask::AssociativeRecall) {
    const int64_t pair_tokens = static_cast<int64_t>(encode(" The value of " + keys[0] + " is " + values[0] + ".").size());
    needle_count = std::clamp<int64_t>((o.seq_len - 60) / (pair_tokens + 1), 2, kKeyWordCount);
  }
  const int64_t target = uniform(0, needle_count - 1);
  std::string question;
  switch (task) {
    case SyntheticTask::Passkey: question = "\nWhat is the pass key? The pass key is"; break;
    case SyntheticTask::MultiKeyNeedle:
      question = "\nWhat is the special magic number for " + keys[target] + "? The special magic number for " +
                 keys[target] + " is:";
      break;
    case SyntheticTask::AssociativeRecall:
      question = "\nWhat is the value of " + keys[target] + "? The value of " + keys[target] + " is";
      break;
  }
  const std::vector<int64_t> query = encode(question);
  out.answer = encode(" " + values[target]);

  // Needles as token runs; each records where its value starts inside it.
  struct Needle {
    std::vector<int64_t> ids;
    int64_t value_offset;
  };
  std::vector<Needle> needles;
  for (int64_t i = 0; i < needle_count; ++i) {
    auto [before, after] = needle_text(i);
    Needle n{encode(before), 0};
    n.value_offset = static_cast<int64_t>(n.ids.size());
    append(n.ids, encode(after));
    needles.push_back(std::move(n));
  }
  int64_t needle_tokens = 0;
  for (const auto& n : needles) needle_tokens += static_cast<int64_t>(n.ids.size());
  const int64_t fixed = static_cast<int64_t>(prefix.size() + query.size() + out.answer.size()) + needle_tokens;
  const int64_t filler_budget = o.seq_len - fixed;
  CONSA_CHECK(filler_budget >= 0, "text task ", synthetic_task_name(task), ": seq_len ", o.seq_len, " is too short for ",
              fixed, " tokens of instruction, needles, question and answer");

  // The filler: sentences in a random cyclic order, cut to the budget at a token.
  std::vector<int64_t> filler;
  for (int64_t s = uniform(0, static_cast<int64_t>(filler_.size()) - 1); static_cast<int64_t>(filler.size()) < filler_budget; ++s)
    append(filler, filler_[static_cast<size_t>(s) % filler_.size()]);
  filler.resize(static_cast<size_t>(filler_budget));

  // Insertion points into the filler. The target's value must lie at least min_distance before
  // the question: everything after its insertion point up to the question is filler, the
  // needles placed after it and the target's own tail.
  const Needle& t = needles[target];
  const int64_t tail = static_cast<int64_t>(t.ids.size()) - t.value_offset;
  std::vector<int64_t> points(needles.size());
  if (task == SyntheticTask::AssociativeRecall) {
    // Pairs spread evenly through the context; the target must be far enough from the end.
    for (size_t i = 0; i < points.size(); ++i) points[i] = filler_budget * static_cast<int64_t>(i) / static_cast<int64_t>(points.size());
  } else {
    for (auto& p : points) p = uniform(0, filler_budget);
  }
  // Distance from the target's value to the question, for a target at insertion point p:
  // tail + filler after p + every needle inserted after p.
  const auto distance = [&](int64_t p) {
    int64_t d = tail + (filler_budget - p);
    for (size_t i = 0; i < needles.size(); ++i)
      if (static_cast<int64_t>(i) != target && points[i] >= p) d += static_cast<int64_t>(needles[i].ids.size());
    return d;
  };
  if (task != SyntheticTask::AssociativeRecall) {
    int64_t last = filler_budget;
    while (last > 0 && distance(last) < o.min_distance) --last;
    CONSA_CHECK(distance(last) >= o.min_distance, "text task ", synthetic_task_name(task), ": seq_len ", o.seq_len,
                " is too short for min_distance ", o.min_distance, " beside the needles' text");
    points[target] = o.depth < 0 ? uniform(0, last) : static_cast<int64_t>(o.depth * static_cast<double>(last) + 0.5);
  } else {
    // A target too close to the end is swapped for the last pair that is far enough.
    int64_t j = target;
    while (j > 0 && distance(points[j]) < o.min_distance) --j;
    CONSA_CHECK(distance(points[j]) >= o.min_distance, "text task associative_recall: seq_len ", o.seq_len,
                " is too short for min_distance ", o.min_distance);
    std::swap(points[j], points[target]);
  }

  // Assemble: prefix, filler with the needles at their points (in point order), question, answer.
  std::vector<size_t> order(needles.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return points[a] < points[b]; });
  out.tokens = prefix;
  int64_t done = 0;
  for (size_t i : order) {
    out.tokens.insert(out.tokens.end(), filler.begin() + done, filler.begin() + points[i]);
    done = points[i];
    if (static_cast<int64_t>(i) == target) out.value_position = static_cast<int64_t>(out.tokens.size()) + t.value_offset;
    append(out.tokens, needles[i].ids);
  }
  out.tokens.insert(out.tokens.end(), filler.begin() + done, filler.end());
  append(out.tokens, query);
  out.answer_start = static_cast<int64_t>(out.tokens.size());
  append(out.tokens, out.answer);
  CONSA_CHECK(static_cast<int64_t>(out.tokens.size()) == o.seq_len, "text task: internal length mismatch");
  return out;
}

std::shared_ptr<const TextTasks> load_text_tasks(const std::string& tokenizer_path, const std::string& filler_path,
                                                 const std::string& option) {
  const std::string file = resolve_tokenizer_file(tokenizer_path);
  CONSA_CHECK(ends_with(file, ".json"), option, ": ", file,
              ": text tasks need a tokenizer.json (sentencepiece models are read only by consa tokenize)");
  return std::make_shared<const TextTasks>(std::shared_ptr<const Tokenizer>(load_tokenizer_json(file)), filler_path);
}

}  // namespace consa
