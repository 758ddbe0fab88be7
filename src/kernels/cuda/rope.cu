// Rotary position embedding of q or k [batch, length, heads, dim], one 16-byte pack of each
// half-dimension per thread, and its adjoint for the backward.
#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// out1 = x1 c1 - x2 s1, out2 = x2 c2 + x1 s2; transposed: dx1 = dy1 c1 + dy2 s2, dx2 = dy2 c2 - dy1 s1.
template <typename T>
__global__ void rope_kernel(const T* x, const T* cos, const T* sin, T* out, int64_t rows, int64_t length,
                            int64_t heads, int64_t dim, bool transpose) {
  constexpr int V = Pack<T>::kSize;
  const int64_t half = dim / 2, packs_per_row = half / V, packs = rows * packs_per_row;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = p / packs_per_row, c = (p % packs_per_row) * V;
    const int64_t position = (row / heads) % length;
    const T* in = x + row * dim;
    const T* cos_row = cos + position * dim;
    const T* sin_row = sin + position * dim;
    const Pack<T> a = load_pack(in + c), b = load_pack(in + half + c);
    const Pack<T> c1 = load_pack(cos_row + c), c2 = load_pack(cos_row + half + c);
    const Pack<T> s1 = load_pack(sin_row + c), s2 = load_pack(sin_row + half + c);
    Pack<T> o1, o2;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float x1 = to_float(a.v[k]), x2 = to_float(b.v[k]);
      if (!transpose) {
        o1.v[k] = from_float<T>(x1 * to_float(c1.v[k]) - x2 * to_float(s1.v[k]));
        o2.v[k] = from_float<T>(x2 * to_float(c2.v[k]) + x1 * to_float(s2.v[k]));
      } else {
        o1.v[k] = from_float<T>(x1 * to_float(c1.v[k]) + x2 * to_float(s2.v[k]));
        o2.v[k] = from_float<T>(x2 * to_float(c2.v[k]) - x1 * to_float(s1.v[k]));
      }
    }
    store_pack(out + row * dim + c, o1);
    store_pack(out + row * dim + half + c, o2);
  }
}

}  // namespace

const char* rope(ElementType type, const void* x, const void* cos, const void* sin, void* out, int64_t batch,
                 int64_t length, int64_t heads, int64_t dim, bool transpose, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const int64_t rows = batch * length * heads;
    const unsigned grid = grid_for(rows * (dim / 2 / Pack<T>::kSize), kThreads, 1 << 16);
    rope_kernel<T><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(cos), static_cast<const T*>(sin), static_cast<T*>(out), rows,
        length, heads, dim, transpose);
    return launch_status();
  });
}

}  // namespace consa::kernels::cuda
