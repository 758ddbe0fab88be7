#include "process.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <initializer_list>

#include "consa/core/error.h"
#include "consa/core/executable.h"

namespace consa::cli {

namespace {

std::vector<char*> c_args(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  for (const auto& a : argv) out.push_back(const_cast<char*>(a.c_str()));
  out.push_back(nullptr);
  return out;
}

// Forks; the child dups `child_end` onto each of `child_fds`, closes `parent_end` (-1: none) and
// execs argv. Returns the child's pid.
pid_t spawn(const std::vector<std::string>& argv, std::initializer_list<int> child_fds, int child_end, int parent_end) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  CONSA_CHECK(pid >= 0, argv[0], ": cannot start: ", std::strerror(errno));
  if (pid == 0) {
    for (int fd : child_fds) ::dup2(child_end, fd);
    ::close(child_end);
    if (parent_end >= 0) ::close(parent_end);
    auto args = c_args(argv);
    ::execv(args[0], args.data());
    std::fprintf(stderr, "consa: error: %s: cannot run: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(child_end);
  return pid;
}

void wait_ok(pid_t pid, const std::string& name) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  CONSA_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, name, " failed (see its message above)");
}

}  // namespace

std::string sibling_program(const std::string& name) {
  const std::string exe = running_executable();
  return exe.substr(0, exe.rfind('/') + 1) + name;
}

std::string run_and_capture(const std::vector<std::string>& argv) {
  int fds[2];
  CONSA_CHECK(::pipe(fds) == 0, "pipe: ", std::strerror(errno));
  const pid_t pid = spawn(argv, {STDOUT_FILENO}, fds[1], fds[0]);
  std::string out;
  char buffer[4096];
  for (ssize_t n; (n = ::read(fds[0], buffer, sizeof(buffer))) > 0;) out.append(buffer, static_cast<size_t>(n));
  ::close(fds[0]);
  wait_ok(pid, argv[0]);
  return out;
}

pid_t spawn_logged(const std::vector<std::string>& argv, const std::string& log_path) {
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  CONSA_CHECK(log >= 0, log_path, ": cannot open for writing: ", std::strerror(errno));
  return spawn(argv, {STDOUT_FILENO, STDERR_FILENO}, log, -1);
}

FeedProcess::FeedProcess(const std::vector<std::string>& argv) : name_(argv[0]) {
  int fds[2];
  CONSA_CHECK(::pipe(fds) == 0, "pipe: ", std::strerror(errno));
  pid_ = spawn(argv, {STDIN_FILENO}, fds[0], fds[1]);
  input_ = ::fdopen(fds[1], "w");
}

FeedProcess::~FeedProcess() {
  if (input_) std::fclose(input_);
  if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
}

void FeedProcess::write_line(const std::string& line) {
  std::fprintf(input_, "%s\n", line.c_str());
  std::fflush(input_);
}

void FeedProcess::finish() {
  std::fclose(input_);
  input_ = nullptr;
  const pid_t pid = pid_;
  pid_ = -1;
  wait_ok(pid, name_);
}

}  // namespace consa::cli
