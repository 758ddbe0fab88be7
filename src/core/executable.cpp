#include "consa/core/executable.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "consa/core/error.h"

namespace consa {

std::string running_executable() {
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  CONSA_CHECK(n > 0, "/proc/self/exe: cannot find the running consa executable: ", std::strerror(errno));
  return std::string(self, static_cast<size_t>(n));
}

}  // namespace consa
