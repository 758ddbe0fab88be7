// assignment.json as `consa inspect` reads it: load, print, and the save / load round trip.
#include <sstream>

#include "consa/export/assignment.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = consa_fuzz::write_input("assignment.json", data, size);
  return consa_fuzz::refuse_with_error({path}, [&] {
    const consa::Assignment a = consa::Assignment::load(path);
    std::ostringstream printed;
    consa::print_assignment(printed, a, path, 4096);
    const nlohmann::json saved = a.to_json(4096, 2);
    const consa::Assignment back = consa::Assignment::from_json(saved, "saved assignment");
    if (back.full != a.full || back.scores != a.scores || back.unit != a.unit || back.swa != a.swa ||
        back.rule != a.rule || back.num_layers != a.num_layers || back.num_heads != a.num_heads ||
        back.num_kv_heads != a.num_kv_heads || back.head_dim != a.head_dim || back.method != a.method ||
        !(back.target == a.target || (back.target != back.target && a.target != a.target)))
      consa_fuzz::property_failed(path + ": saving and loading changes the assignment: " + saved.dump());
  });
}
