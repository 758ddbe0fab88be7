// RMSNorm with its residual add, forward and backward, one group of lanes per row. Rows are
// the hidden states (dim = hidden size) or, for Qwen3's q/k norms, the heads (dim = head_dim).
#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, int Lanes>
__global__ void rms_norm_forward_kernel(const T* x, const T* residual, const T* weight, T* y, T* sum, float* rstd,
                                        int64_t rows, int64_t dim, float eps) {
  constexpr int V = Pack<T>::kSize;
  const int lane = threadIdx.x % Lanes;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / Lanes;
  // Lanes of a row beyond the last one still take part in the shuffles.
  const bool valid = row < rows;
  const int64_t base = row * dim;
  float squares = 0;
  for (int64_t c = lane * V; valid && c < dim; c += Lanes * V) {
    Pack<T> s = load_pack(x + base + c);
    if (residual) {
      const Pack<T> r = load_pack(residual + base + c);
#pragma unroll
      for (int k = 0; k < V; ++k) s.v[k] = from_float<T>(to_float(s.v[k]) + to_float(r.v[k]));
      store_pack(sum + base + c, s);
    }
#pragma unroll
    for (int k = 0; k < V; ++k) squares += to_float(s.v[k]) * to_float(s.v[k]);
  }
  squares = sum_over_lanes<Lanes>(squares);
  if (!valid) return;
  const float r = rsqrtf(squares / static_cast<float>(dim) + eps);
  if (lane == 0) rstd[row] = r;
  const T* s_rows = residual ? sum : x;  // this thread's own stores: visible to it
  for (int64_t c = lane * V; c < dim; c += Lanes * V) {
    const Pack<T> s = load_pack(s_rows + base + c);
    const Pack<T> w = load_pack(weight + c);
    Pack<T> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = from_float<T>(to_float(w.v[k]) * round_to<T>(to_float(s.v[k]) * r));
    store_pack(y + base + c, out);
  }
}

// Per row: n = s * r, dn = dy * w, ds = r * (dn - n * mean(dn * n)) (+ the gradient that reaches
// s directly); dw = sum over rows of dy * round(n). A thread's columns are the same in every row
// it visits, so it sums their dw in registers (the first kHeld packs of a row; wider rows add
// the rest to shared memory at once) and adds them to the block's shared row once at the end.
template <typename T, int Lanes>
__global__ void rms_norm_backward_kernel(const T* dy, const T* sum_grad, const T* input, const float* rstd,
                                         const T* weight, T* input_grad, float* weight_grad_partial, int64_t rows,
                                         int64_t dim) {
  extern __shared__ float weight_grad[];
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) weight_grad[i] = 0;
  __syncthreads();
  constexpr int V = Pack<T>::kSize;
  constexpr int kHeld = 8;
  float held[kHeld][V] = {};
  const int lane = threadIdx.x % Lanes;
  const int64_t rows_per_block = blockDim.x / Lanes;
  for (int64_t first = blockIdx.x * rows_per_block; first < rows; first += gridDim.x * rows_per_block) {
    const int64_t row = first + threadIdx.x / Lanes;
    const bool valid = row < rows;
    const int64_t base = row * dim;
    const float r = valid ? rstd[row] : 0.0f;
    float dot = 0;
    if (valid) {
#pragma unroll
      for (int j = 0; j < kHeld; ++j) {
        const int64_t c = lane * V + j * Lanes * V;
        if (c >= dim) break;
        const Pack<T> g = load_pack(dy + base + c), s = load_pack(input + base + c), w = load_pack(weight + c);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float n = to_float(s.v[k]) * r;
          dot += to_float(g.v[k]) * to_float(w.v[k]) * n;
          held[j][k] += to_float(g.v[k]) * round_to<T>(n);
        }
      }
      for (int64_t c = lane * V + kHeld * Lanes * V; c < dim; c += Lanes * V) {
        const Pack<T> g = load_pack(dy + base + c), s = load_pack(input + base + c), w = load_pack(weight + c);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float n = to_float(s.v[k]) * r;
          dot += to_float(g.v[k]) * to_float(w.v[k]) * n;
          atomicAdd(&weight_grad[c + k], to_float(g.v[k]) * round_to<T>(n));
        }
      }
    }
    const float mean_dot = sum_over_lanes<Lanes>(dot) / static_cast<float>(dim);
    for (int64_t c = lane * V; valid && c < dim; c += Lanes * V) {
      const Pack<T> g = load_pack(dy + base + c), s = load_pack(input + base + c), w = load_pack(weight + c);
      Pack<T> direct;
      if (sum_grad) direct = load_pack(sum_grad + base + c);
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float n = to_float(s.v[k]) * r;
        float ds = r * (to_float(g.v[k]) * to_float(w.v[k]) - n * mean_dot);
        if (sum_grad) ds += to_float(direct.v[k]);
        out.v[k] = from_float<T>(ds);
      }
      store_pack(input_grad + base + c, out);
    }
  }
#pragma unroll
  for (int j = 0; j < kHeld; ++j) {
    const int64_t c = lane * V + j * Lanes * V;
    if (c >= dim) break;
#pragma unroll
    for (int k = 0; k < V; ++k) atomicAdd(&weight_grad[c + k], held[j][k]);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) weight_grad_partial[blockIdx.x * dim + i] = weight_grad[i];
}

// Lanes per row: enough for one 16-byte pack each, at most a warp.
int lanes_for(int64_t dim, int pack) {
  const int64_t packs = dim / pack;
  return packs >= 32 ? 32 : packs >= 16 ? 16 : packs >= 8 ? 8 : 4;
}

// Enough blocks to fill the GPU several times over; each sums its rows' weight gradient once.
int64_t backward_blocks(int64_t rows, int64_t dim, int pack) {
  const int64_t rows_per_block = kThreads / lanes_for(dim, pack);
  const int64_t needed = (rows + rows_per_block - 1) / rows_per_block;
  return needed < 1 ? 1 : needed > 512 ? 512 : needed;
}

}  // namespace

const char* rms_norm_forward(ElementType type, const void* x, const void* residual, const void* weight, void* y,
                             void* sum, float* rstd, int64_t rows, int64_t dim, float eps, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const int lanes = lanes_for(dim, Pack<T>::kSize);
    const int64_t rows_per_block = kThreads / lanes;
    const dim3 grid(static_cast<unsigned>((rows + rows_per_block - 1) / rows_per_block));
    const auto s = static_cast<cudaStream_t>(stream);
    auto* xp = static_cast<const T*>(x);
    auto* rp = static_cast<const T*>(residual);
    auto* wp = static_cast<const T*>(weight);
    auto* yp = static_cast<T*>(y);
    auto* sp = static_cast<T*>(sum);
    switch (lanes) {
      case 32: rms_norm_forward_kernel<T, 32><<<grid, kThreads, 0, s>>>(xp, rp, wp, yp, sp, rstd, rows, dim, eps); break;
      case 16: rms_norm_forward_kernel<T, 16><<<grid, kThreads, 0, s>>>(xp, rp, wp, yp, sp, rstd, rows, dim, eps); break;
      case 8: rms_norm_forward_kernel<T, 8><<<grid, kThreads, 0, s>>>(xp, rp, wp, yp, sp, rstd, rows, dim, eps); break;
      default: rms_norm_forward_kernel<T, 4><<<grid, kThreads, 0, s>>>(xp, rp, wp, yp, sp, rstd, rows, dim, eps); break;
    }
    return launch_status();
  });
}

int64_t rms_norm_backward_blocks(ElementType type, int64_t rows, int64_t dim) {
  return backward_blocks(rows, dim, type == ElementType::Float32 ? 4 : 8);
}

const char* rms_norm_backward(ElementType type, const void* dy, const void* sum_grad, const void* input,
                              const float* rstd, const void* weight, void* input_grad, float* weight_grad_partial,
                              int64_t rows, int64_t dim, void* stream) {
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    const int lanes = lanes_for(dim, Pack<T>::kSize);
    const dim3 grid(static_cast<unsigned>(backward_blocks(rows, dim, Pack<T>::kSize)));
    const size_t shared = static_cast<size_t>(dim) * sizeof(float);
    const auto s = static_cast<cudaStream_t>(stream);
    auto* gp = static_cast<const T*>(dy);
    auto* dp = static_cast<const T*>(sum_grad);
    auto* ip = static_cast<const T*>(input);
    auto* wp = static_cast<const T*>(weight);
    auto* op = static_cast<T*>(input_grad);
    switch (lanes) {
      case 32: rms_norm_backward_kernel<T, 32><<<grid, kThreads, shared, s>>>(gp, dp, ip, rstd, wp, op, weight_grad_partial, rows, dim); break;
      case 16: rms_norm_backward_kernel<T, 16><<<grid, kThreads, shared, s>>>(gp, dp, ip, rstd, wp, op, weight_grad_partial, rows, dim); break;
      case 8: rms_norm_backward_kernel<T, 8><<<grid, kThreads, shared, s>>>(gp, dp, ip, rstd, wp, op, weight_grad_partial, rows, dim); break;
      default: rms_norm_backward_kernel<T, 4><<<grid, kThreads, shared, s>>>(gp, dp, ip, rstd, wp, op, weight_grad_partial, rows, dim); break;
    }
    return launch_status();
  });
}

}  // namespace consa::kernels::cuda
