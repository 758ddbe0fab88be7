#pragma once
// Running child programs: the companion consa-tokenize (which cannot share a process with
// LibTorch) beside this executable, a run that captures its output, a run fed line by line, and
// a run logged to a file (consa sweep --devices).
#include <sys/types.h>

#include <cstdio>
#include <string>
#include <vector>

namespace consa::cli {

// `name` in the folder of the running executable.
std::string sibling_program(const std::string& name);

// Runs argv[0] with argv and returns its standard output; throws when it fails.
std::string run_and_capture(const std::vector<std::string>& argv);

// Starts argv[0] with argv, its standard output and error appended to `log_path`; returns its pid
// (the caller waits for it).
pid_t spawn_logged(const std::vector<std::string>& argv, const std::string& log_path);

// A child whose standard input we write; its output goes to ours.
class FeedProcess {
 public:
  explicit FeedProcess(const std::vector<std::string>& argv);
  ~FeedProcess();
  void write_line(const std::string& line);
  void finish();  // closes its input and waits for it

 private:
  FILE* input_ = nullptr;
  pid_t pid_ = -1;
  std::string name_;
};

}  // namespace consa::cli
