#pragma once
// consa's one error type. Every user-facing failure (bad file, bad key, bad value) throws
// consa::Error with a single line that names the file or key and what was expected; the CLI
// prints it as "consa: error: ..." and exits non-zero.
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace consa {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& out, T&& first, Rest&&... rest) {
  out << std::forward<T>(first);
  append(out, std::forward<Rest>(rest)...);
}
}  // namespace detail

// Builds the message from its pieces: fail("file.json: key 'x' must be > 0, got ", v).
template <typename... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream out;
  detail::append(out, std::forward<Parts>(parts)...);
  throw Error(out.str());
}

}  // namespace consa

// CONSA_CHECK(cond, "what", value, ...): throws consa::Error with the concatenated message.
#define CONSA_CHECK(cond, ...)        \
  do {                                \
    if (!(cond)) ::consa::fail(__VA_ARGS__); \
  } while (0)
