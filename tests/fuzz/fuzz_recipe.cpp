// A recipe YAML and its key=value overrides. Input: the recipe, then optionally a line
// "#overrides" and one override per line. An accepted recipe is also written back with
// recipe_to_yaml (as consa train does into its run directory) and must load as the same recipe.
#include <sstream>

#include "consa/train/recipe.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto [yaml, override_text] =
      consa_fuzz::split_once(std::string(reinterpret_cast<const char*>(data), size), "\n#overrides\n");
  std::vector<std::string> overrides;
  std::istringstream lines(override_text);
  for (std::string line; std::getline(lines, line);) overrides.push_back(line);
  const std::string path = consa_fuzz::write_input("recipe.yaml", yaml);

  consa::Recipe recipe;
  bool accepted = false;
  consa_fuzz::refuse_with_error({path, "override '"}, [&] {
    recipe = consa::load_recipe(path, overrides);
    accepted = true;
  });
  if (!accepted) return 0;
  const std::string resolved = consa::recipe_to_yaml(recipe);
  const std::string resolved_path = consa_fuzz::write_input("resolved.yaml", resolved);
  try {
    const consa::Recipe back = consa::load_recipe(resolved_path);
    const std::string again = consa::recipe_to_yaml(back);
    if (again != resolved)  // resume_fingerprint is read from this text too
      consa_fuzz::property_failed(path + ": the resolved recipe reads back differently:\n" + resolved + "---\n" + again);
  } catch (const consa::Error& e) {
    consa_fuzz::property_failed(path + ": accepted, but its resolved recipe is refused: " + std::string(e.what()) +
                                "\n" + resolved);
  }
  return 0;
}
