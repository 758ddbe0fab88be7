#include "consa/core/output_path.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "consa/core/error.h"

namespace consa {

void check_output_path(const std::string& path, bool overwrite, const std::string& option) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  CONSA_CHECK(!(fs::is_directory(p) && (fs::exists(p / "checkpoint.pt") || fs::exists(p / "recipe.yaml"))), option, " ",
              path, ": is a training run's directory; write the output elsewhere (e.g. ", (p / "export").string(), ")");
  const bool taken = fs::is_directory(p) ? !fs::is_empty(p) : fs::exists(p);
  CONSA_CHECK(!taken || overwrite, option, " ", path, ": exists; pass --overwrite to replace it");
  // Writable means a file can be made there (root passes access() checks where that fails).
  fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
  while (!fs::exists(parent) && parent.has_parent_path() && parent != parent.parent_path()) parent = parent.parent_path();
  std::string probe = (parent / ".consa-write-test-XXXXXX").string();
  const int fd = ::mkstemp(probe.data());
  CONSA_CHECK(fd >= 0, option, " ", path, ": its folder is not writable");
  ::close(fd);
  ::unlink(probe.c_str());
}

}  // namespace consa
