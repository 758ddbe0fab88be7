#include "helpers.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace consa_test {
namespace fs = std::filesystem;

namespace {
struct ScratchRegistry {
  std::vector<std::string> dirs;
  ~ScratchRegistry() {
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
  }
};
ScratchRegistry& registry() {
  static ScratchRegistry r;
  return r;
}
}  // namespace

std::string fixture(const std::string& name) { return std::string(CONSA_FIXTURES_DIR) + "/" + name; }

std::string scratch_dir(const std::string& tag) {
  std::string pattern = (fs::temp_directory_path() / ("consa-test-" + tag + "-XXXXXX")).string();
  char* made = ::mkdtemp(pattern.data());
  if (!made) throw std::runtime_error("mkdtemp failed for " + pattern);
  registry().dirs.push_back(made);
  return made;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).abs().max().item<double>();
}

int run_consa(const std::string& args, std::string* out, std::string* err) {
  const std::string dir = scratch_dir("cli");
  const std::string out_path = dir + "/stdout", err_path = dir + "/stderr";
  const std::string cmd = std::string(CONSA_BINARY) + " " + args + " >" + out_path + " 2>" + err_path;
  const int status = std::system(cmd.c_str());
  if (out) *out = read_text(out_path);
  if (err) *err = read_text(err_path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace consa_test
