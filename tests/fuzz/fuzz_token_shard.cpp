// One token file: the first byte picks how it is opened (consa shard, auto-detected, raw uint16
// or raw uint32), the rest is the file.
#include "consa/data/token_shards.h"
#include "token_source_checks.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string path = consa_fuzz::write_input("train.tok", data + 1, size - 1);
  consa::TokenSourceSpec spec(path);
  switch (data[0] % 4) {
    case 0: spec.format = consa::TokenFormat::Consa; break;
    case 1: spec.format = consa::TokenFormat::Auto; break;
    case 2: spec = consa::TokenSourceSpec(path, consa::TokenFormat::Raw, 2); break;
    default: spec = consa::TokenSourceSpec(path, consa::TokenFormat::Raw, 4); break;
  }
  return consa_fuzz::refuse_with_error({path}, [&] {
    const auto source = consa::open_token_source(spec);
    consa_fuzz::check_token_source(*source, path, data + 1, size - 1);
  });
}
