// One .safetensors file: the 8-byte length, the JSON header and the data section it tiles.
#include "consa/load/safetensors.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = consa_fuzz::write_input("model.safetensors", data, size);
  return consa_fuzz::refuse_with_error({path}, [&] {
    const consa::SafetensorsFile file = consa::SafetensorsFile::open(path);
    uint64_t checksum = 0;
    for (const std::string& name : file.names()) {
      const consa::TensorRecord& rec = file.record(name);
      const at::Tensor t = file.tensor(name);
      const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
      if (t.sizes().vec() != rec.shape || t.scalar_type() != rec.dtype || bytes != rec.end - rec.begin)
        consa_fuzz::property_failed(path + ": tensor '" + name + "' does not match its record");
      // Every byte a record claims is read: a range past the mapping would fault here.
      const auto* p = static_cast<const uint8_t*>(t.data_ptr());
      for (uint64_t i = 0; i < bytes; ++i) checksum += p[i];
    }
    for (const auto& [key, value] : file.metadata()) checksum += key.size() + value.size();
    if (checksum == 0x5eed) std::fputc(' ', stderr);  // keeps the reads from being optimized away
  });
}
