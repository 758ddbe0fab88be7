#pragma once
// Names of the floating dtypes consa computes in, as users and config.json spell them.
#include <c10/core/ScalarType.h>

#include <string>

namespace consa {

// "float32"/"fp32", "bfloat16"/"bf16", "float16"/"fp16"; `what` names the option in the error.
at::ScalarType parse_dtype(const std::string& name, const std::string& what);

// "float32", "bfloat16", "float16" (config.json spelling).
std::string dtype_name(at::ScalarType dtype);

// What softmax and reductions over `dtype` run in: double stays double, the rest float32.
inline at::ScalarType accumulation_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace consa
