#include "consa/train/progress.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include "consa/core/atomic_file.h"
#include "consa/core/error.h"

namespace consa {

std::string format_duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  std::ostringstream out;
  if (s >= 3600) out << s / 3600 << "h" << (s % 3600) / 60 << "m";
  else if (s >= 60) out << s / 60 << "m" << (s % 60 < 10 ? "0" : "") << s % 60 << "s";
  else out << s << "s";
  return out.str();
}

Progress::Progress(std::string label, int64_t total, int64_t log_every)
    : label_(std::move(label)), total_(total), log_every_(log_every), live_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, const std::string& status) {
  if (first_ < 0) {
    first_ = done - 1;  // steps done before this process (a resumed run) do not count for the ETA
    start_ = std::chrono::steady_clock::now();
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const int64_t ran = done - first_;
  const double eta = ran > 0 ? elapsed / ran * (total_ - done) : 0.0;
  if (live_) {
    const int width = 24;
    const int filled = static_cast<int>(width * done / std::max<int64_t>(1, total_));
    std::cerr << "\r" << label_ << " [" << std::string(filled, '#') << std::string(width - filled, '.') << "] "
              << done << "/" << total_ << " " << status << " eta " << format_duration(eta) << "   " << std::flush;
  } else if (done % log_every_ == 0 || done == total_) {
    std::cerr << label_ << " step " << done << "/" << total_ << " " << status << " elapsed "
              << format_duration(elapsed) << " eta " << format_duration(eta) << "\n";
  }
}

void Progress::finish(const std::string& status) {
  if (live_) std::cerr << "\n";
  std::cerr << label_ << " done: " << status << "\n";
}

MetricsLog::MetricsLog(std::string path, int64_t resume_step) : path_(std::move(path)) {
  std::vector<std::string> kept;
  if (resume_step >= 0) {
    std::ifstream in(path_);
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!record.is_discarded() && record.value("step", int64_t{0}) <= resume_step) kept.push_back(line);
    }
  }
  AtomicFileWriter out(path_);
  for (const auto& line : kept) out.stream() << line << "\n";
  out.commit();
}

void MetricsLog::write(const nlohmann::json& record) {
  std::ofstream out(path_, std::ios::app);
  out << record.dump() << "\n";
  CONSA_CHECK(out.good(), path_, ": cannot append metrics");
}

}  // namespace consa
