// A Megatron-LM indexed dataset: input bytes 0..1 are the .idx length L (little endian), then
// L bytes of PREFIX.idx, then PREFIX.bin.
#include "token_source_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t idx_len = std::min<size_t>(data[0] | (data[1] << 8), size - 2);
  const std::string idx = consa_fuzz::write_input("data.idx", data + 2, idx_len);
  const std::string bin = consa_fuzz::write_input("data.bin", data + 2 + idx_len, size - 2 - idx_len);
  const std::string prefix = consa_fuzz::scratch_dir() + "/data";
  return consa_fuzz::refuse_with_error({prefix}, [&] {
    const auto source = consa::open_token_source({prefix, consa::TokenFormat::Megatron});
    consa_fuzz::check_token_source(*source, prefix, data + 2 + idx_len, size - 2 - idx_len);
  });
}
