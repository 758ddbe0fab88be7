#pragma once
// Spelling tables for option enums: one {value, name} list per enum gives both the parser (with
// an error listing the supported names) and the printer, so the two cannot drift apart.
#include <string>

#include "consa/core/error.h"

namespace consa {

template <typename Enum>
struct EnumName {
  Enum value;
  const char* name;
};

// `what` names the option in the error: "unknown gate unit 'x'; supported: layer, kv_head, head".
template <typename Enum, size_t N>
Enum parse_enum(const EnumName<Enum> (&table)[N], const std::string& name, const char* what) {
  std::string supported;
  for (const auto& entry : table) {
    if (name == entry.name) return entry.value;
    supported += (supported.empty() ? "" : ", ") + std::string(entry.name);
  }
  fail("unknown ", what, " '", name, "'; supported: ", supported);
}

template <typename Enum, size_t N>
const char* enum_name(const EnumName<Enum> (&table)[N], Enum value) {
  for (const auto& entry : table)
    if (entry.value == value) return entry.name;
  return "?";
}

}  // namespace consa
