// A linear layer over few rows (launchers.h, decode_linear): a decode step's projections, where
// the work is streaming the weights once. A warp (or, for layers with few outputs, a block's
// warps together) computes a few output features over the whole input: its lanes stride over the
// 16-byte packs of the weight rows with kLoads packs in flight each and keep every row's partial
// dot products in registers until one sum at the end. x (a few KB, read by every warp) stays in
// the caches. The input's RMSNorm or SwiGLU and the output's bias and residual add happen on the
// way, each saving a launch and a round trip through memory.
#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kLoads = 8;  // weight packs each lane has in flight: kLoads / Outs packs of each feature

// Rows: a compiled bound on a.rows (registers scale with it). Outs: output features per group of
// Splits warps, which share the input's packs between them (Splits = 1: a warp owns its features
// over the whole input and never waits for another; Splits = kWarps: the block splits the input,
// for layers with few outputs, where whole rows per warp would leave the GPU mostly idle).
// RMSNorm is applied as rstd * sum_k w_k (g_k x_k), the rstd of x's row summed from the same
// loads, so x is read once; SwiGLU's product is rounded as the math path stores it.
template <typename T, LinearInput In, int Rows, int Outs, int Splits>
__global__ void __launch_bounds__(kThreads) decode_linear_kernel(const DecodeLinearArgs a) {
  static_assert(Splits == 1 || Splits == kWarps, "a warp's own features, or the block's split");
  constexpr int V = Pack<T>::kSize, kUnroll = kLoads / Outs, kStride = 32 * Splits;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ norm_weight = static_cast<const T*>(a.norm_weight);
  const int64_t in = a.in_features, packs = in / V, n_out = a.out_features;
  const int64_t x_stride = In == LinearInput::Swiglu ? 2 * in : in;
  const int rows = static_cast<int>(a.rows), lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * (kWarps / Splits) + warp / Splits) * Outs;
  if (Splits == 1 && first >= n_out) return;  // a whole warp: nothing below waits for it
  const T* __restrict__ w_row[Outs];
#pragma unroll
  for (int o = 0; o < Outs; ++o)  // features past the end read the last row and are never stored
    w_row[o] = static_cast<const T*>(a.weight) + (first + o < n_out ? first + o : n_out - 1) * in;

  float acc[Rows][Outs] = {}, squares[Rows] = {};
  for (int64_t p0 = (warp % Splits) * 32 + lane; p0 < packs; p0 += kStride * kUnroll) {
    Pack<T> w[kUnroll][Outs];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (p0 + kStride * u < packs)
#pragma unroll
        for (int o = 0; o < Outs; ++o) w[u][o] = load_pack(w_row[o] + (p0 + kStride * u) * V);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = (p0 + kStride * u) * V;
      if (c >= in) break;
      Pack<T> g{};
      if constexpr (In == LinearInput::RmsNorm) g = load_pack(norm_weight + c);
#pragma unroll
      for (int m = 0; m < Rows; ++m) {
        if (m >= rows) break;
        const Pack<T> xs = load_pack(x + m * x_stride + c);
        float xv[V];
        if constexpr (In == LinearInput::Swiglu) {
          const Pack<T> up = load_pack(x + m * x_stride + in + c);
#pragma unroll
          for (int k = 0; k < V; ++k) xv[k] = to_float(swiglu_value(xs.v[k], up.v[k]));
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            xv[k] = to_float(xs.v[k]);
            if constexpr (In == LinearInput::RmsNorm) {
              squares[m] += xv[k] * xv[k];
              xv[k] *= to_float(g.v[k]);
            }
          }
        }
#pragma unroll
        for (int o = 0; o < Outs; ++o)
#pragma unroll
          for (int k = 0; k < V; ++k) acc[m][o] += xv[k] * to_float(w[u][o].v[k]);
      }
    }
  }

  // Sums over the warp (every lane gets them), then over the block's splits.
#pragma unroll
  for (int m = 0; m < Rows; ++m) {
    squares[m] = sum_over_lanes<32>(squares[m]);
#pragma unroll
    for (int o = 0; o < Outs; ++o) acc[m][o] = sum_over_lanes<32>(acc[m][o]);
  }
  if constexpr (Splits > 1) {
    __shared__ float partial[kWarps][Rows * (Outs + 1)];
    if (lane == 0)
#pragma unroll
      for (int m = 0; m < Rows; ++m) {
        partial[warp][m * (Outs + 1) + Outs] = squares[m];
#pragma unroll
        for (int o = 0; o < Outs; ++o) partial[warp][m * (Outs + 1) + o] = acc[m][o];
      }
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int m = 0; m < Rows; ++m)
#pragma unroll
      for (int o = 0; o <= Outs; ++o) {
        float total = 0;
#pragma unroll
        for (int j = 0; j < kWarps; ++j) total += partial[j][m * (Outs + 1) + o];
        (o < Outs ? acc[m][o] : squares[m]) = total;
      }
  }

  const T* bias = static_cast<const T*>(a.bias);
  const T* residual = static_cast<const T*>(a.residual);
  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int m = 0; m < Rows; ++m)
#pragma unroll
    for (int o = 0; o < Outs; ++o) {
      const int64_t n = first + o;
      if (lane != m * Outs + o || m >= rows || n >= n_out) continue;  // lane m Outs + o stores it
      float v = acc[m][o];
      if constexpr (In == LinearInput::RmsNorm) v *= rsqrtf(squares[m] / static_cast<float>(in) + a.eps);
      if (bias) v += to_float(bias[n]);
      T y = from_float<T>(v);
      if (residual) y = from_float<T>(to_float(y) + to_float(residual[m * n_out + n]));
      out[m * n_out + n] = y;
    }
}

template <typename T, LinearInput In, int Rows, int Outs, int Splits>
const char* launch(const DecodeLinearArgs& a, cudaStream_t stream) {
  constexpr int64_t kPerBlock = kWarps / Splits * Outs;  // output features
  decode_linear_kernel<T, In, Rows, Outs, Splits>
      <<<static_cast<unsigned>((a.out_features + kPerBlock - 1) / kPerBlock), kThreads, 0, stream>>>(a);
  return launch_status();
}

template <typename T, LinearInput In, int Rows>
const char* launch_rows(const DecodeLinearArgs& a, cudaStream_t stream) {
  // Whole rows per warp, as many features per warp as still leave about eight warps per
  // multiprocessor (each x value loaded then serves that many weights); fewer outputs than that
  // (o_proj, down) split each row over a block's warps instead.
  const int64_t min_warps = 8 * static_cast<int64_t>(multiprocessor_count());
  if ((a.out_features + 3) / 4 >= min_warps) return launch<T, In, Rows, 4, 1>(a, stream);
  if ((a.out_features + 1) / 2 >= min_warps) return launch<T, In, Rows, 2, 1>(a, stream);
  return launch<T, In, Rows, 4, kWarps>(a, stream);
}

template <typename T, LinearInput In>
const char* launch_input(const DecodeLinearArgs& a, cudaStream_t stream) {
  static_assert(kDecodeLinearMaxRows == 4, "a compiled row bound per power of two up to the most");
  if (a.rows <= 1) return launch_rows<T, In, 1>(a, stream);
  if (a.rows <= 2) return launch_rows<T, In, 2>(a, stream);
  return launch_rows<T, In, 4>(a, stream);
}

}  // namespace

bool decode_linear_takes(ElementType type, int64_t rows, int64_t in_features) {
  return rows >= 1 && rows <= kDecodeLinearMaxRows && in_features > 0 && in_features % pack_elements(type) == 0;
}

const char* decode_linear(ElementType type, const DecodeLinearArgs& args, void* stream) {
  if (!decode_linear_takes(type, args.rows, args.in_features) || args.out_features <= 0)
    return "decode_linear: unsupported shape";
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, [&](auto tag) {
    using T = element_of<decltype(tag)>;
    switch (args.input) {
      case LinearInput::RmsNorm: return launch_input<T, LinearInput::RmsNorm>(args, s);
      case LinearInput::Swiglu: return launch_input<T, LinearInput::Swiglu>(args, s);
      case LinearInput::Plain: break;
    }
    return launch_input<T, LinearInput::Plain>(args, s);
  });
}

}  // namespace consa::kernels::cuda
