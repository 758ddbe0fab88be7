#include "consa/core/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "consa/core/error.h"

namespace consa {

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), temp_path_(path_ + ".tmp." + std::to_string(::getpid())) {
  out_.open(temp_path_, std::ios::binary | std::ios::trunc);
  CONSA_CHECK(out_.good(), path_, ": cannot create ", temp_path_, ": ", std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (!committed_) {
    out_.close();
    std::remove(temp_path_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  CONSA_CHECK(out_.good(), path_, ": write failed: ", std::strerror(errno));
}

void AtomicFileWriter::commit() {
  out_.flush();
  CONSA_CHECK(out_.good(), path_, ": write failed: ", std::strerror(errno));
  out_.close();
  CONSA_CHECK(std::rename(temp_path_.c_str(), path_.c_str()) == 0, path_, ": cannot rename ",
              temp_path_, " into place: ", std::strerror(errno));
  committed_ = true;
}

void write_file_atomically(const std::string& path, const std::string& content) {
  AtomicFileWriter out(path);
  out.write(content.data(), content.size());
  out.commit();
}

std::string read_text_file(const std::string& path) {
  // A directory opens as an empty stream on Linux and would read as "".
  CONSA_CHECK(!std::filesystem::is_directory(path), path, ": is a directory; expected a file");
  std::ifstream in(path, std::ios::binary);
  CONSA_CHECK(in.good(), path, ": cannot open: ", std::strerror(errno));
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

}  // namespace consa
