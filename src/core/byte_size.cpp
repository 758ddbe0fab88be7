#include "consa/core/byte_size.h"

#include <utility>
#include <vector>

#include "consa/core/error.h"

namespace consa {

int64_t parse_byte_size(const std::string& text, const std::string& option) {
  size_t end = 0;
  double value = 0;
  try {
    value = std::stod(text, &end);
  } catch (const std::exception&) {
    fail(option, ": '", text, "' is not a size; expected a number with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB)");
  }
  const std::string unit = text.substr(end);
  const std::vector<std::pair<std::string, double>> units = {
      {"", 1}, {"B", 1}, {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
      {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}};
  for (const auto& [name, scale] : units)
    if (unit == name) {
      CONSA_CHECK(value > 0, option, ": '", text, "' must be > 0");
      return static_cast<int64_t>(value * scale);
    }
  fail(option, ": '", text, "' has unit '", unit, "'; allowed: B, KiB, MiB, GiB, TiB, KB, MB, GB, TB");
}

}  // namespace consa
