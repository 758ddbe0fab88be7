#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace consa {

inline bool ends_with(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "128, 1024": integers joined for messages.
inline std::string join_integers(const std::vector<int64_t>& values, const char* separator = ", ") {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) out += (i ? separator : "") + std::to_string(values[i]);
  return out;
}

}  // namespace consa
