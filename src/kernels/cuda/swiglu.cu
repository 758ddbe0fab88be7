// SwiGLU's elementwise product silu(gate) * up, forward and backward, 16 bytes per thread.
#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ void swiglu_grads(T dy, T gate, T up, T& gate_grad, T& up_grad) {
  const float g = to_float(gate), s = sigmoid(g), d = to_float(dy);
  up_grad = from_float<T>(d * round_to<T>(g * s));
  gate_grad = from_float<T>(d * to_float(up) * s * (1.0f + g * (1.0f - s)));
}

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* y, int64_t n) {
  constexpr int V = Pack<T>::kSize;
  const int64_t packs = (n + V - 1) / V;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p * V;
    if (i + V <= n) {
      const Pack<T> g = load_pack(gate + i), u = load_pack(up + i);
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < V; ++k) out.v[k] = swiglu_value(g.v[k], u.v[k]);
      store_pack(y + i, out);
    } else {  // the ragged tail
      for (int64_t j = i; j < n; ++j) y[j] = swiglu_value(gate[j], up[j]);
    }
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* dy, const T* gate, const T* up, T* gate_grad, T* up_grad, int64_t n) {
  constexpr int V = Pack<T>::kSize;
  const int64_t packs = (n + V - 1) / V;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p * V;
    if (i + V <= n) {
      const Pack<T> d = load_pack(dy + i), g = load_pack(gate + i), u = load_pack(up + i);
      Pack<T> dg, du;
#pragma unroll
      for (int k = 0; k < V; ++k) swiglu_grads(d.v[k], g.v[k], u.v[k], dg.v[k], du.v[k]);
      store_pack(gate_grad + i, dg);
      store_pack(up_grad + i, du);
    } else {
      for (int64_t j = i; j < n; ++j) swiglu_grads(dy[j], gate[j], up[j], gate_grad[j], up_grad[j]);
    }
  }
}

}  // namespace

const char* swiglu_forward(ElementType type, const void* gate, const void* up, void* y, int64_t n, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const unsigned grid = grid_for((n + Pack<T>::kSize - 1) / Pack<T>::kSize, kThreads, 1 << 16);
    swiglu_forward_kernel<T><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(gate), static_cast<const T*>(up), static_cast<T*>(y), n);
    return launch_status();
  });
}

const char* swiglu_backward(ElementType type, const void* dy, const void* gate, const void* up, void* gate_grad,
                            void* up_grad, int64_t n, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const unsigned grid = grid_for((n + Pack<T>::kSize - 1) / Pack<T>::kSize, kThreads, 1 << 16);
    swiglu_backward_kernel<T><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(dy), static_cast<const T*>(gate), static_cast<const T*>(up),
        static_cast<T*>(gate_grad), static_cast<T*>(up_grad), n);
    return launch_status();
  });
}

}  // namespace consa::kernels::cuda
