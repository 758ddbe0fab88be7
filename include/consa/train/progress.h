#pragma once
// Progress reporting for long jobs: a live bar with ETA on a terminal, plain log lines
// otherwise, and machine-readable metrics as JSON lines.
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

namespace consa {

class Progress {
 public:
  // `total` steps; a plain line is printed every `log_every` steps when stderr is no terminal.
  Progress(std::string label, int64_t total, int64_t log_every);
  void update(int64_t done, const std::string& status);
  void finish(const std::string& status);

 private:
  std::string label_;
  int64_t total_, log_every_, first_ = -1;
  bool live_;
  std::chrono::steady_clock::time_point start_;
};

// "1m05s", "12s": a duration for humans.
std::string format_duration(double seconds);

// metrics.jsonl: one JSON object per line, "step" counting the steps done. Resuming from a
// checkpoint taken after s steps first drops the lines of steps > s, which the interrupted run
// wrote after that checkpoint.
class MetricsLog {
 public:
  MetricsLog(std::string path, int64_t resume_step);
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace consa
