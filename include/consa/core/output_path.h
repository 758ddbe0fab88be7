#pragma once
#include <string>

namespace consa {

// The one overwrite policy of commands that write (export, init, tokenize's shards, eval's
// report, assign): a path that exists is refused unless `overwrite` (--overwrite) is given, a
// training run's own directory (checkpoint.pt or recipe.yaml in it) is never written into, and
// the folder must take a new file. Called before any work, so that nothing runs only to fail at
// the end. `option` names the flag in errors.
void check_output_path(const std::string& path, bool overwrite, const std::string& option);

}  // namespace consa
