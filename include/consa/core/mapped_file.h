#pragma once
// A whole file mapped into memory, read-only for the file: pages are copy-on-write, so a stray
// in-place write on a tensor viewing them copies the page instead of crashing or touching the
// file. Shared by the safetensors reader and the token-shard reader.
#include <cstdint>
#include <string>

namespace consa {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws consa::Error naming the file
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace consa
