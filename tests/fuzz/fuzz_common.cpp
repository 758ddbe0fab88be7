#include "fuzz_common.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace consa_fuzz {
namespace fs = std::filesystem;

namespace {
std::string make_scratch_dir() {
  std::string base = "/dev/shm";
  if (!fs::is_directory(base)) base = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
  const std::string dir = base + "/consa-fuzz-" + std::to_string(::getpid());
  fs::create_directories(dir);
  return dir;
}
void remove_scratch_dir() {
  std::error_code ec;
  fs::remove_all(scratch_dir(), ec);
}
}  // namespace

const std::string& scratch_dir() {
  // Never destroyed: the atexit handler that removes the directory runs after static destructors.
  static const std::string* dir = [] {
    auto* d = new std::string(make_scratch_dir());
    std::atexit(remove_scratch_dir);
    return d;
  }();
  return *dir;
}

std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) property_failed("cannot write the fuzz input to " + path);
  return path;
}

std::string write_input(const std::string& name, const std::string& bytes) {
  return write_input(name, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

bool verbose() {
  static const bool on = std::getenv("CONSA_FUZZ_VERBOSE") && std::string(std::getenv("CONSA_FUZZ_VERBOSE")) != "0";
  return on;
}

void property_failed(const std::string& what) {
  std::fprintf(stderr, "consa fuzz: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

std::pair<std::string, std::string> split_once(const std::string& bytes, const std::string& separator) {
  const size_t at = bytes.find(separator);
  if (at == std::string::npos) return {bytes, std::string()};
  return {bytes.substr(0, at), bytes.substr(at + separator.size())};
}

}  // namespace consa_fuzz
