#include "consa/core/dtype.h"

#include "consa/core/error.h"

namespace consa {

at::ScalarType parse_dtype(const std::string& name, const std::string& what) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  fail(what, ": unknown dtype '", name, "'; supported: float32, bfloat16, float16");
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return c10::toString(dtype);
  }
}

}  // namespace consa
