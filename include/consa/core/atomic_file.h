#pragma once
// Writes a file so that readers only ever see the old or the complete new version: data goes to
// a temp file beside the target, which commit() flushes and renames over it. A writer destroyed
// without commit() removes its temp file.
#include <fstream>
#include <string>

namespace consa {

class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  std::ofstream& stream() { return out_; }
  void write(const void* data, size_t size);
  void commit();

 private:
  std::string path_;
  std::string temp_path_;
  std::ofstream out_;
  bool committed_ = false;
};

// Reads a whole file; throws consa::Error naming it when it cannot be read.
std::string read_text_file(const std::string& path);
// Writes `content` (text or bytes) as the whole of `path`, atomically.
void write_file_atomically(const std::string& path, const std::string& content);

}  // namespace consa
