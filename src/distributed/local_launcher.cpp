#include "consa/distributed/local_launcher.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>

#include "consa/core/error.h"
#include "consa/core/executable.h"

namespace consa::distributed {

namespace {

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "stopped";
}

}  // namespace

int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  CONSA_CHECK(fd >= 0, "--nproc-per-node: cannot open a socket: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  CONSA_CHECK(ok, "--nproc-per-node: cannot find a free port on 127.0.0.1: ", std::strerror(errno));
  return ntohs(addr.sin_port);
}

int launch_local_ranks(int nproc, const std::vector<std::string>& argv) {
  CONSA_CHECK(nproc >= 1, "--nproc-per-node: expected at least 1 rank, got ", nproc);
  const std::string exe = running_executable();
  const std::string port = std::getenv("MASTER_PORT") ? std::getenv("MASTER_PORT") : std::to_string(free_local_port());
  std::vector<std::string> args = argv;
  args[0] = exe;
  std::vector<char*> c_args;
  for (auto& a : args) c_args.push_back(a.data());
  c_args.push_back(nullptr);

  std::vector<pid_t> pids;
  std::fflush(nullptr);
  for (int rank = 0; rank < nproc; ++rank) {
    const pid_t pid = ::fork();
    CONSA_CHECK(pid >= 0, "--nproc-per-node: cannot start rank ", rank, ": ", std::strerror(errno));
    if (pid == 0) {
      const std::string r = std::to_string(rank), n = std::to_string(nproc);
      ::setenv("RANK", r.c_str(), 1);
      ::setenv("LOCAL_RANK", r.c_str(), 1);
      ::setenv("WORLD_SIZE", n.c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", n.c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");  // rank 0 hosts the store here
      ::execv(exe.c_str(), c_args.data());
      std::fprintf(stderr, "consa: error: rank %d: cannot run %s: %s\n", rank, exe.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    pids.push_back(pid);
  }

  int result = 0;
  size_t running = pids.size();
  while (running > 0) {
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, 0);
    if (done < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int rank = -1;
    for (size_t i = 0; i < pids.size(); ++i)
      if (pids[i] == done) {
        rank = static_cast<int>(i);
        pids[i] = -1;
      }
    if (rank < 0) continue;
    --running;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok || result != 0) continue;
    result = 1;
    std::cerr << "consa: error: rank " << rank << " of " << nproc << " " << describe_status(status)
              << (running > 0 ? "; stopping the other ranks" : "") << "\n";
    // The others would stop by themselves within distributed.timeout_s; do not make them wait.
    for (pid_t pid : pids)
      if (pid > 0) ::kill(pid, SIGTERM);
    std::thread([pids]() {
      std::this_thread::sleep_for(std::chrono::seconds(20));
      for (pid_t pid : pids)
        if (pid > 0) ::kill(pid, SIGKILL);
    }).detach();
  }
  return result;
}

}  // namespace consa::distributed
