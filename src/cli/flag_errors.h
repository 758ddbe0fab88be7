#pragma once
// cxxopts' parse errors as consa errors that name the flag and what it expects:
//   "consa train: flag --stop-after expects an integer, got '1.5'"
// instead of "Argument '1.5' failed to parse". Shared by consa and consa-tokenize; include it
// after cxxopts.hpp (consa's commands.h sets cxxopts' list delimiter first).
#include <cxxopts.hpp>

#include <string>
#include <utility>
#include <vector>

#include "consa/core/error.h"

namespace consa::cli {

namespace flag_errors_detail {

// The first text cxxopts quotes in a message (‘x’ in UTF-8, or 'x' without unicode).
inline std::string quoted(const std::string& what) {
  static const std::string open = "\xe2\x80\x98", close = "\xe2\x80\x99";
  size_t begin = what.find(open), width = open.size();
  if (begin == std::string::npos) begin = what.find('\''), width = 1;
  if (begin == std::string::npos) return "";
  size_t end = what.find(width == 1 ? std::string("'") : close, begin + width);
  return end == std::string::npos ? "" : what.substr(begin + width, end - begin - width);
}

inline std::string dashed(const std::string& name) { return (name.size() == 1 ? "-" : "--") + name; }

// The flag that was given `value` on the command line ("--steps abc" or "--steps=abc").
inline std::string flag_with_value(int argc, const char* const* argv, const std::string& value) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-') continue;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos && arg.substr(eq + 1) == value) return arg.substr(0, eq);
    if (eq == std::string::npos && i + 1 < argc && value == argv[i + 1]) return arg;
  }
  return "";
}

// What `flag` takes, found by parsing probe values alone: cxxopts does not expose the type.
inline std::string expected_kind(cxxopts::Options& options, const std::string& flag) {
  const std::pair<const char*, const char*> probes[] = {
      {"0.5", "a number"}, {"-1", "an integer"}, {"2", "a non-negative integer"}, {"true", "true or false"}};
  for (const auto& [probe, kind] : probes) {
    const std::string arg = flag + "=" + probe;
    const char* probe_argv[] = {"consa", arg.c_str()};
    try {
      options.parse(2, probe_argv);
      return kind;
    } catch (const cxxopts::exceptions::exception&) {
    }
  }
  return "another value";
}

}  // namespace flag_errors_detail

// options.parse(argc, argv), with every cxxopts parse error turned into one consa::Error line.
inline cxxopts::ParseResult parse_flags(cxxopts::Options& options, int argc, const char* const* argv) {
  namespace d = flag_errors_detail;
  const std::string& command = options.program();
  try {
    return options.parse(argc, argv);
  } catch (const cxxopts::exceptions::no_such_option& e) {
    fail(command, ": unknown flag ", d::dashed(d::quoted(e.what())), " (see ", command, " --help)");
  } catch (const cxxopts::exceptions::missing_argument& e) {
    fail(command, ": flag ", d::dashed(d::quoted(e.what())), " needs a value");
  } catch (const cxxopts::exceptions::option_requires_argument& e) {
    fail(command, ": flag ", d::dashed(d::quoted(e.what())), " needs a value");
  } catch (const cxxopts::exceptions::gratuitous_argument_for_option& e) {
    fail(command, ": flag ", d::dashed(d::quoted(e.what())), " takes no value (it is a switch)");
  } catch (const cxxopts::exceptions::incorrect_argument_type& e) {
    const std::string value = d::quoted(e.what());
    const std::string flag = d::flag_with_value(argc, argv, value);
    if (flag.empty()) fail(command, ": cannot read the value '", value, "' of a flag");
    std::string kind = d::expected_kind(options, flag);
    // A whole number that still failed is out of the flag's range.
    const bool whole = !value.empty() && value.find_first_not_of("0123456789", value[0] == '-') == std::string::npos;
    if (whole && kind.find("integer") != std::string::npos && !(value[0] == '-' && kind.find("non-negative") != std::string::npos))
      kind += " in range";
    fail(command, ": flag ", flag, " expects ", kind, ", got '", value, "'");
  } catch (const cxxopts::exceptions::parsing& e) {
    fail(command, ": ", e.what());
  }
}

}  // namespace consa::cli
