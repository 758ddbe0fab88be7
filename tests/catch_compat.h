#pragma once
// The one place that knows Catch2 v2 (Debian 12) from v3. Tests include this, never Catch2.
#if defined(CONSA_CATCH2_V3)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif

#include <string>

namespace consa_test {
#if defined(CONSA_CATCH2_V3)
using Approx = Catch::Approx;
inline auto contains(const std::string& text) { return Catch::Matchers::ContainsSubstring(text); }
#else
using Approx = Catch::Detail::Approx;
inline auto contains(const std::string& text) { return Catch::Matchers::Contains(text); }
#endif
}  // namespace consa_test
