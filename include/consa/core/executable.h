#pragma once
// The path of the running program (/proc/self/exe), for starting it again: data-parallel ranks,
// side-by-side sweep pairs, companion programs beside it.
#include <string>

namespace consa {

// Throws consa::Error when the path cannot be read.
std::string running_executable();

}  // namespace consa
