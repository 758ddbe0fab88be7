#pragma once
#include <cstdint>
#include <string>

namespace consa {

// "100GiB", "512MiB", "2e9": a byte count; `option` names the flag or key in errors.
int64_t parse_byte_size(const std::string& text, const std::string& option);

}  // namespace consa
