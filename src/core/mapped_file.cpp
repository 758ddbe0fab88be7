#include "consa/core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "consa/core/error.h"

namespace consa {

MappedFile::MappedFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  CONSA_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {  // a directory maps as "No such device"
    ::close(fd);
    fail(path, S_ISDIR(st.st_mode) ? ": is a directory; expected a file" : ": not a regular file; expected a file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    // PROT_WRITE + MAP_PRIVATE: a stray in-place write on a loaded tensor copies the page
    // instead of crashing or touching the file.
    void* addr = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      ::close(fd);
      fail(path, ": cannot mmap: ", std::strerror(errno));
    }
    data_ = static_cast<uint8_t*>(addr);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

}  // namespace consa
