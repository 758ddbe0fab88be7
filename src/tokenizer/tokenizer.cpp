#include "consa/tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <filesystem>
#include <thread>

#include "consa/core/error.h"

namespace consa {

namespace fs = std::filesystem;

namespace {

// Worker threads that live as long as the process: their per-thread word caches stay warm from
// one batch of documents to the next.
class WorkerPool {
 public:
  static WorkerPool& instance() {
    static WorkerPool pool;
    return pool;
  }

  // Runs `job` on `n` threads at once (the caller's among them) and returns when all are done.
  void run(int n, const std::function<void()>& job) {
    std::lock_guard<std::mutex> one_run(run_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(threads_.size()) < n - 1) {
        const int index = static_cast<int>(threads_.size());
        threads_.emplace_back([this, index] { loop(index); });
      }
      job_ = &job;
      active_ = n - 1;
      pending_ = n - 1;
      ++generation_;
    }
    wake_.notify_all();
    job();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

 private:
  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void()>* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || (generation_ != seen && index < active_); });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      (*job)();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void()>* job_ = nullptr;
  int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace

std::vector<int64_t> Tokenizer::document_ids(const std::vector<int64_t>& body, std::optional<int64_t> eos) const {
  std::vector<int64_t> ids;
  ids.reserve(body.size() + 2);
  if (adds_bos_ && bos_id_) ids.push_back(*bos_id_);
  ids.insert(ids.end(), body.begin(), body.end());
  if (eos) ids.push_back(*eos);
  return ids;
}

std::vector<std::vector<int64_t>> Tokenizer::encode_all(const std::vector<std::string_view>& texts, int threads) const {
  std::vector<std::vector<int64_t>> out(texts.size());
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), std::max<size_t>(1, texts.size())));
  // Documents are taken one at a time from a shared counter: their lengths vary widely.
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::atomic<bool> failed{false};
  const auto work = [&] {
    try {
      for (size_t i; !failed && (i = next++) < texts.size();) out[i] = encode(texts[i], false);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
    }
  };
  if (threads == 1) work();
  else WorkerPool::instance().run(threads, work);
  if (error) std::rethrow_exception(error);
  return out;
}

std::vector<int64_t> parse_token_ids(const std::string& text, const std::string& option) {
  std::vector<int64_t> ids;
  std::string item;
  for (size_t i = 0; i <= text.size(); ++i) {
    const char c = i < text.size() ? text[i] : ' ';
    if (c != ',' && !std::isspace(static_cast<unsigned char>(c))) {
      item.push_back(c);
      continue;
    }
    if (item.empty()) continue;
    size_t used = 0;
    long long value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    CONSA_CHECK(used == item.size() && value >= 0, option, ": '", item,
                "' is not a token id; expected non-negative integers separated by spaces or commas, like 1,2,3");
    ids.push_back(value);
    item.clear();
  }
  CONSA_CHECK(!ids.empty(), option, ": expected at least one token id");
  return ids;
}

std::string resolve_tokenizer_file(const std::string& path) {
  const fs::path p = path;
  if (fs::is_regular_file(p)) return path;
  CONSA_CHECK(fs::is_directory(p), path, ": no such file or directory (expected a tokenizer.json, a tokenizer.model "
              "or a model directory holding one)");
  for (const char* name : {"tokenizer.json", "tokenizer.model"})
    if (fs::is_regular_file(p / name)) return (p / name).string();
  fail(path, ": the directory has neither tokenizer.json nor tokenizer.model");
}

}  // namespace consa
