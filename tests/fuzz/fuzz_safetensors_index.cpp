// A sharded checkpoint's model.safetensors.index.json, beside two valid shards.
#include <filesystem>

#include "consa/load/safetensors.h"
#include "fuzz_common.h"

namespace {
// The shards the seed index names: a (F32 [2]) and b (BF16 [1, 3]) in the first, c (I64 [1]) in the second.
std::string checkpoint_dir() {
  static const std::string dir = [] {
    const std::string d = consa_fuzz::scratch_dir() + "/ckpt";
    std::filesystem::create_directories(d);
    consa::write_safetensors(d + "/model-00001-of-00002.safetensors",
                             {{"a", at::ones({2})}, {"b", at::zeros({1, 3}, at::kBFloat16)}});
    consa::write_safetensors(d + "/model-00002-of-00002.safetensors", {{"c", at::full({1}, 7, at::kLong)}});
    return d;
  }();
  return dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = checkpoint_dir();
  const std::string path = consa_fuzz::write_input("ckpt/model.safetensors.index.json", data, size);
  return consa_fuzz::refuse_with_error({path, dir}, [&] {
    const consa::CheckpointTensors ckpt = consa::CheckpointTensors::open(dir);
    for (const std::string& name : ckpt.names()) {
      const at::Tensor t = ckpt.tensor(name);
      if (t.numel() > 3 || ckpt.file_of(name).rfind(dir, 0) != 0)
        consa_fuzz::property_failed(path + ": tensor '" + name + "' is not one of the shards' own");
    }
  });
}
