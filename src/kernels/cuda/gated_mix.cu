// The gated FA/SWA mix of a layer's heads, out = lerp(swa, full, z[h]), forward and backward,
// with the gates' gradient dz[h] = sum over positions and head_dim of dy * (full - swa).
#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// lerp as ATen computes it: exactly swa at z == 0 and exactly full at z == 1.
__device__ __forceinline__ float lerp(float swa, float full, float z) {
  return z < 0.5f ? swa + z * (full - swa) : full - (full - swa) * (1.0f - z);
}

template <typename T>
__global__ void gated_mix_forward_kernel(const T* full, const T* swa, const float* z, T* out, int64_t packs,
                                         int64_t heads, int64_t dim) {
  constexpr int V = Pack<T>::kSize;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < packs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float w = z[(p * V / dim) % heads];
    const Pack<T> f = load_pack(full + p * V), s = load_pack(swa + p * V);
    Pack<T> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_float<T>(lerp(to_float(s.v[k]), to_float(f.v[k]), w));
    store_pack(out + p * V, o);
  }
}

// Each block takes a run of positions; each thread one column (a pack of one head) at a time
// over those positions, so its share of dz[h] sums in a register before one shared-memory add.
template <typename T>
__global__ void gated_mix_backward_kernel(const T* dy, const T* full, const T* swa, const float* z, T* full_grad,
                                          T* swa_grad, float* z_grad_partial, int64_t positions, int64_t heads,
                                          int64_t dim) {
  extern __shared__ float z_grad[];
  for (int64_t h = threadIdx.x; h < heads; h += blockDim.x) z_grad[h] = 0;
  __syncthreads();
  constexpr int V = Pack<T>::kSize;
  const int64_t row = heads * dim, columns = row / V;
  const int64_t per_block = (positions + gridDim.x - 1) / gridDim.x;
  const int64_t begin = blockIdx.x * per_block;
  const int64_t end = begin + per_block < positions ? begin + per_block : positions;
  for (int64_t column = threadIdx.x; column < columns; column += blockDim.x) {
    const int64_t h = column * V / dim;
    const float w = z[h];
    float sum = 0;
    for (int64_t position = begin; position < end; ++position) {
      const int64_t i = position * row + column * V;
      const Pack<T> g = load_pack(dy + i), f = load_pack(full + i), s = load_pack(swa + i);
      Pack<T> df, ds;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = to_float(g.v[k]);
        df.v[k] = from_float<T>(d * w);
        ds.v[k] = from_float<T>(d * (1.0f - w));
        sum += d * (to_float(f.v[k]) - to_float(s.v[k]));
      }
      store_pack(full_grad + i, df);
      store_pack(swa_grad + i, ds);
    }
    atomicAdd(&z_grad[h], sum);
  }
  __syncthreads();
  for (int64_t h = threadIdx.x; h < heads; h += blockDim.x) z_grad_partial[blockIdx.x * heads + h] = z_grad[h];
}

int64_t backward_blocks(int64_t positions) { return positions < 1 ? 1 : positions > 1024 ? 1024 : positions; }

}  // namespace

int64_t gated_mix_backward_blocks(int64_t positions) { return backward_blocks(positions); }

const char* gated_mix_forward(ElementType type, const void* full, const void* swa, const float* z, void* out,
                              int64_t positions, int64_t heads, int64_t dim, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const int64_t packs = positions * heads * dim / Pack<T>::kSize;
    gated_mix_forward_kernel<T><<<grid_for(packs, kThreads, 1 << 16), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(full), static_cast<const T*>(swa), z, static_cast<T*>(out), packs, heads, dim);
    return launch_status();
  });
}

const char* gated_mix_backward(ElementType type, const void* dy, const void* full, const void* swa, const float* z,
                               void* full_grad, void* swa_grad, float* z_grad_partial, int64_t positions,
                               int64_t heads, int64_t dim, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const unsigned grid = static_cast<unsigned>(backward_blocks(positions));
    gated_mix_backward_kernel<T><<<grid, kThreads, heads * sizeof(float), static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(dy), static_cast<const T*>(full), static_cast<const T*>(swa), z,
        static_cast<T*>(full_grad), static_cast<T*>(swa_grad), z_grad_partial, positions, heads, dim);
    return launch_status();
  });
}

}  // namespace consa::kernels::cuda
