// Cross-entropy over chunks of logits, one block per row: the forward reads each logit once
// (an online log-sum-exp in fp32) and the backward turns the logits into their gradient in place,
// so no fp32 copy of a chunk is ever written (linear_cross_entropy's chunks are 1 GiB of fp32
// logits in the math path).
#include <cfloat>

#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kThreads = 512;

// The running (max, sum of exp(x - max)) of a set of logits, merged pairwise.
struct Lse {
  float max, sum;
};
__device__ __forceinline__ Lse merge(Lse a, Lse b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

template <typename T>
__global__ void cross_entropy_forward_kernel(const T* logits, const int64_t* targets, float* lse, float* target_logit,
                                             int64_t vocab) {
  constexpr int V = Pack<T>::kSize;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  Lse acc{-INFINITY, 0.0f};
  for (int64_t c = threadIdx.x * V; c < vocab; c += kThreads * V) {
    const Pack<T> p = load_pack(x + c);
    float m = to_float(p.v[0]);
#pragma unroll
    for (int k = 1; k < V; ++k) m = fmaxf(m, to_float(p.v[k]));
    float s = 0;
#pragma unroll
    for (int k = 0; k < V; ++k) s += expf(to_float(p.v[k]) - m);
    acc = merge(acc, {m, m == -INFINITY ? 0.0f : s});  // a pack of -inf alone adds nothing
  }
  for (int offset = 16; offset > 0; offset /= 2)
    acc = merge(acc, {__shfl_xor_sync(0xffffffffu, acc.max, offset), __shfl_xor_sync(0xffffffffu, acc.sum, offset)});
  __shared__ Lse warps[kThreads / 32];
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    Lse total = warps[0];
    for (int w = 1; w < kThreads / 32; ++w) total = merge(total, warps[w]);
    const int64_t target = targets[row];
    // A target outside the vocabulary is never read: the row's loss is NaN, which training stops on.
    const bool valid = target >= 0 && target < vocab;
    lse[row] = valid ? total.max + logf(total.sum) : NAN;
    target_logit[row] = valid ? to_float(x[target]) : NAN;
  }
}

template <typename T>
__global__ void cross_entropy_backward_kernel(T* logits, const int64_t* targets, const float* lse, const float* coef,
                                              int64_t vocab) {
  constexpr int V = Pack<T>::kSize;
  const int64_t row = blockIdx.x;
  T* x = logits + row * vocab;
  const float l = lse[row], g = coef[row];
  const int64_t target = targets[row];
  for (int64_t c = threadIdx.x * V; c < vocab; c += kThreads * V) {
    Pack<T> p = load_pack(x + c);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float d = expf(to_float(p.v[k]) - l);
      if (c + k == target) d -= 1.0f;
      p.v[k] = from_float<T>(d * g);
    }
    store_pack(x + c, p);
  }
}

}  // namespace

const char* cross_entropy_forward(ElementType type, const void* logits, const int64_t* targets, float* lse,
                                  float* target_logit, int64_t rows, int64_t vocab, void* stream) {
  if (rows == 0) return nullptr;
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    cross_entropy_forward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(logits), targets, lse, target_logit, vocab);
    return launch_status();
  });
}

const char* cross_entropy_backward(ElementType type, void* logits, const int64_t* targets, const float* lse,
                                   const float* coef, int64_t rows, int64_t vocab, void* stream) {
  if (rows == 0) return nullptr;
  return dispatch(type, [&](auto* tag) {
    using T = element_of<decltype(tag)>;
    cross_entropy_backward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<T*>(logits), targets, lse, coef, vocab);
    return launch_status();
  });
}

}  // namespace consa::kernels::cuda
