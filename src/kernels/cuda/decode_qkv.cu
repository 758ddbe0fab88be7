// A decode step's work between the QKV projection and attention, in one kernel: split the
// projection into heads, RMS-normalise q and k (Qwen3's q/k norms, where the model has them),
// rotate them (RoPE at the step's position), write k and v into the full cache at the position or
// into the ring at its slot, and return q. One warp per (sequence, head row); each lane holds the
// rotation pairs (i, i + D/2) it needs. The position and slot are read on the device, so a CUDA
// graph replays the step at any position.
#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kWarps = 4;

template <typename T, int P>  // P: pairs per lane, head_dim = 64 P
__global__ void decode_qkv_kernel(const T* __restrict__ qkv, const T* __restrict__ q_norm, const T* __restrict__ k_norm,
                                  float eps, const T* __restrict__ cos, const T* __restrict__ sin,
                                  const int64_t* __restrict__ position, const int64_t* __restrict__ slot, T* full_k,
                                  T* full_v, T* ring_k, T* ring_v, T* q_out, int64_t batch, int heads, int kv_heads,
                                  int full_heads, int64_t capacity, int64_t ring) {
  constexpr int D = 64 * P, half = D / 2;
  const int rows_per_sequence = heads + 2 * kv_heads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= batch * rows_per_sequence) return;  // whole warps leave together
  const int lane = threadIdx.x % 32;
  const int64_t b = item / rows_per_sequence;
  const int row = static_cast<int>(item % rows_per_sequence);
  const bool is_q = row < heads, is_k = !is_q && row < heads + kv_heads;
  const T* in = qkv + item * D;
  float lo[P], hi[P];
#pragma unroll
  for (int p = 0; p < P; ++p) lo[p] = to_float(in[lane * P + p]), hi[p] = to_float(in[half + lane * P + p]);
  if (!is_q && !is_k) {  // v: stored as projected
    const int j = row - heads - kv_heads;
    T* out = j < full_heads ? full_v + ((b * full_heads + j) * capacity + position[0]) * D
                            : ring_v + ((b * (kv_heads - full_heads) + j - full_heads) * ring + slot[0]) * D;
#pragma unroll
    for (int p = 0; p < P; ++p) out[lane * P + p] = in[lane * P + p], out[half + lane * P + p] = in[half + lane * P + p];
    return;
  }
  const T* norm = is_q ? q_norm : k_norm;
  if (norm != nullptr) {  // as the math path rounds: n = round(x * rstd), y = round(w * n)
    float squares = 0.0f;
#pragma unroll
    for (int p = 0; p < P; ++p) squares += lo[p] * lo[p] + hi[p] * hi[p];
    const float rstd = rsqrtf(sum_over_lanes<32>(squares) / D + eps);
#pragma unroll
    for (int p = 0; p < P; ++p) {
      lo[p] = round_to<T>(to_float(norm[lane * P + p]) * round_to<T>(lo[p] * rstd));
      hi[p] = round_to<T>(to_float(norm[half + lane * P + p]) * round_to<T>(hi[p] * rstd));
    }
  }
  T* out;
  if (is_q) {
    out = q_out + (b * heads + row) * D;
  } else {
    const int j = row - heads;
    out = j < full_heads ? full_k + ((b * full_heads + j) * capacity + position[0]) * D
                         : ring_k + ((b * (kv_heads - full_heads) + j - full_heads) * ring + slot[0]) * D;
  }
#pragma unroll
  for (int p = 0; p < P; ++p) {  // rotate_half: [x1, x2] -> [-x2, x1]
    const int i = lane * P + p;
    out[i] = from_float<T>(lo[p] * to_float(cos[i]) - hi[p] * to_float(sin[i]));
    out[half + i] = from_float<T>(hi[p] * to_float(cos[half + i]) + lo[p] * to_float(sin[half + i]));
  }
}

}  // namespace

bool decode_qkv_takes(int64_t head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

const char* decode_qkv(ElementType type, const DecodeQkvArgs& a, void* stream) {
  if (!decode_qkv_takes(a.head_dim)) return "decode_qkv: head_dim must be 64, 128 or 256";
  const int64_t items = a.batch * (a.heads + 2 * a.kv_heads);
  const unsigned grid = static_cast<unsigned>((items + kWarps - 1) / kWarps);
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, [&](auto* tag) -> const char* {
    using T = element_of<decltype(tag)>;
    auto launch = [&](auto pairs) {
      decode_qkv_kernel<T, decltype(pairs)::value><<<grid, kWarps * 32, 0, s>>>(
          static_cast<const T*>(a.qkv), static_cast<const T*>(a.q_norm), static_cast<const T*>(a.k_norm), a.eps,
          static_cast<const T*>(a.cos), static_cast<const T*>(a.sin), a.position, a.slot, static_cast<T*>(a.full_k),
          static_cast<T*>(a.full_v), static_cast<T*>(a.ring_k), static_cast<T*>(a.ring_v), static_cast<T*>(a.q_out),
          a.batch, static_cast<int>(a.heads), static_cast<int>(a.kv_heads), static_cast<int>(a.full_heads), a.capacity,
          a.ring);
      return launch_status();
    };
    if (a.head_dim == 64) return launch(std::integral_constant<int, 1>{});
    if (a.head_dim == 128) return launch(std::integral_constant<int, 2>{});
    return launch(std::integral_constant<int, 4>{});
  });
}

}  // namespace consa::kernels::cuda
