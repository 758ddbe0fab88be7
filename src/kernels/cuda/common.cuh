#pragma once
// What consa's kernels share: fp32 conversions of the three element types, 16-byte vector
// loads, and the element-type dispatch of the launchers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "launchers.h"

namespace consa::kernels::cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// v rounded to T and back: where the math path stores an intermediate in the model's dtype.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

// SwiGLU's silu(gate) * up as the math path rounds it: silu(gate) is stored before the product.
template <typename T>
__device__ __forceinline__ T swiglu_value(T gate, T up) {
  const float g = to_float(gate);
  return from_float<T>(round_to<T>(g * sigmoid(g)) * to_float(up));
}

// 16 bytes of T, moved in one load or store (callers keep offsets 16-byte aligned).
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) { return *reinterpret_cast<const Pack<T>*>(p); }
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& pack) { *reinterpret_cast<Pack<T>*>(p) = pack; }

// `op` (associative) over the `Lanes` consecutive lanes that share a row (a power of two up to
// 32); every lane of the row gets the result.
template <int Lanes, typename Op>
__device__ __forceinline__ float over_lanes(float v, Op op) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset, Lanes));
  return v;
}
template <int Lanes>
__device__ __forceinline__ float sum_over_lanes(float v) {
  return over_lanes<Lanes>(v, [](float a, float b) { return a + b; });
}

// Elements of a 16-byte pack.
inline int pack_elements(ElementType type) { return type == ElementType::Float32 ? 4 : 8; }

// The current GPU's multiprocessors (queried once per process).
inline int multiprocessor_count() {
  static const int count = [] {
    int device = 0, multiprocessors = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device);
    return multiprocessors > 0 ? multiprocessors : 1;
  }();
  return count;
}

// CUDA's message for the last launch, or nullptr.
inline const char* launch_status() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Calls f with a null T* for the element type, which the callee turns back into T.
template <typename F>
const char* dispatch(ElementType type, F&& f) {
  switch (type) {
    case ElementType::Float32: return f(static_cast<float*>(nullptr));
    case ElementType::Float16: return f(static_cast<__half*>(nullptr));
    case ElementType::BFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
  }
  return "unknown element type";
}
template <typename Tag>
using element_of = std::remove_pointer_t<Tag>;

// Grid size of a grid-stride loop over `work` items in blocks of `threads`, capped so that
// large inputs reuse blocks instead of launching millions.
inline unsigned grid_for(int64_t work, int threads, int64_t cap = 8192) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > cap ? cap : blocks);
}

}  // namespace consa::kernels::cuda
