// Attention of one query per sequence over a KV cache (a decode step), split over the keys
// (flash-decoding): each block reads one split of one KV head's keys once for all G query heads
// of its group and keeps an online softmax in fp32; a second kernel merges the splits by their
// log-sum-exp. One launch serves a layer's full caches and its rings together. A split whose
// keys no query head of the group sees is never read, so the part of a cache allocated past the
// current position costs little more than its bias.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace consa::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 4;  // key passes loaded before any is used: bytes in flight per lane
// Splits per KV head: each at least kMinSplitKeys long (a block's fixed cost: its queries, the
// merge, the partial write), at most kMaxSplits (the merge's block holds one per thread).
constexpr int64_t kMinSplitKeys = 128, kMaxSplits = 256;
constexpr int kCombineThreads = 512;
static_assert(kMaxSplits <= kCombineThreads, "the merge loads one split per thread");

__device__ __forceinline__ float neg_inf() { return -INFINITY; }

// One running softmax: max score m, sum of exp(s - m) l, and the weighted values acc (one pack).
template <int V>
struct Running {
  float m, l, acc[V];
};

// kUnroll passes of one lane: its pack of kUnroll keys and values (kStride apart) and their
// biases for each query head of the group (-inf past `end`).
template <typename T, int MaxG>
struct Keys {
  Pack<T> k[kUnroll], v[kUnroll];
  float bias[kUnroll][MaxG];
};

template <typename T, int D, int MaxG>
__device__ __forceinline__ void load_keys(Keys<T, MaxG>& keys, const T* k_head, const T* v_head, const float* bias_head,
                                          int64_t bias_stride, int group, int64_t t0, int64_t end, int part) {
  constexpr int V = Pack<T>::kSize, kStride = kWarps * (32 / (D / V));
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t t = t0 + u * kStride;
    const bool inside = t < end;
#pragma unroll
    for (int g = 0; g < MaxG; ++g) keys.bias[u][g] = (g < group && inside) ? bias_head[g * bias_stride + t] : neg_inf();
    if (inside) {
      keys.k[u] = load_pack(k_head + t * D + part * V);
      keys.v[u] = load_pack(v_head + t * D + part * V);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) keys.k[u].v[i] = keys.v[u].v[i] = from_float<T>(0.0f);
    }
  }
}

// Grid: one block per split of each KV head, source 0's (the full caches, n0 heads, s0 splits
// each) first, then source 1's (the rings): B (n0 s0 + n1 s1) blocks, none idle, so a layer's
// long and short blocks all start in the first wave. The query heads of KV head j are adjacent
// in q [B, (n0 + n1) G, D]. A source's bias rows [n G] have `bias_stride` (0: one row for all).
// A source with one split writes `out` [B, (n0 + n1) G, D] directly; otherwise o_part
// [rows, stride_splits, D] (normalised) and lse_part [rows, stride_splits].
template <typename T, int D, int MaxG>
__global__ void __launch_bounds__(kThreads)
    decode_partial_kernel(const T* __restrict__ q, DecodeSource s0, DecodeSource s1, T* __restrict__ out,
                          float* __restrict__ o_part, float* __restrict__ lse_part, int64_t batch, int group,
                          int stride_splits, float scale) {
  constexpr int V = Pack<T>::kSize;
  constexpr int kLanes = D / V;          // lanes that hold one key
  constexpr int kKeysPerWarp = 32 / kLanes;
  constexpr int kGroupsPerBlock = kWarps * kKeysPerWarp;  // running softmaxes per query head
  static_assert(kLanes >= 1 && kLanes <= 32 && 32 % kLanes == 0, "head_dim must be 1 to 32 packs");

  int64_t index = blockIdx.x;
  const int64_t blocks0 = batch * s0.kv_heads * s0.splits;
  const bool ring = index >= blocks0;
  if (ring) index -= blocks0;
  const DecodeSource src = ring ? s1 : s0;  // a copy: a reference to either parameter would live in local memory
  const int splits = static_cast<int>(src.splits), split = static_cast<int>(index % splits);
  const int64_t b = index / splits / src.kv_heads, h = index / splits % src.kv_heads;
  const int64_t bh = b * (s0.kv_heads + s1.kv_heads) + (ring ? s0.kv_heads : 0) + h;  // query rows bh * group + g
  const int64_t keys = src.keys, chunk = (keys + splits - 1) / splits;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int sub = lane / kLanes, part = lane % kLanes;  // which key of the warp's pass; which pack of it
  const int64_t begin = min(keys, split * chunk), end = min(keys, begin + chunk);

  // The group's queries, pre-scaled, in fp32 registers (this lane's pack of each).
  float qv[MaxG][V];
#pragma unroll
  for (int g = 0; g < MaxG; ++g) {
    if (g < group) {
      const Pack<T> p = load_pack(q + ((bh * group + g) * D) + part * V);
#pragma unroll
      for (int i = 0; i < V; ++i) qv[g][i] = to_float(p.v[i]) * scale;
    }
  }
  Running<V> run[MaxG];
#pragma unroll
  for (int g = 0; g < MaxG; ++g) {
    run[g].m = neg_inf();
    run[g].l = 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) run[g].acc[i] = 0.0f;
  }

  const int64_t kv_row = b * src.kv_heads + h;
  const T* k_head = static_cast<const T*>(src.k) + kv_row * keys * D;
  const T* v_head = static_cast<const T*>(src.v) + kv_row * keys * D;
  const int64_t bias_stride = src.bias_stride;
  const float* bias_head = src.bias + static_cast<int64_t>(h) * group * bias_stride;
  constexpr int kStride = kGroupsPerBlock;  // keys one pass of the block covers
  constexpr int64_t kStep = kStride * kUnroll;  // keys one iteration of the block covers
  // A split whose keys no query head sees (a cache allocated past the position) reads no key:
  // its bias alone (1/64 of the key and value bytes at head_dim 128) says so.
  bool any_seen = false;
  for (int64_t t = begin + threadIdx.x; t < end && !any_seen; t += kThreads)
    for (int g = 0; g < group; ++g) any_seen = any_seen || bias_head[g * bias_stride + t] != neg_inf();
  const bool split_seen = __syncthreads_or(any_seen);

  // The loop bound is the warp's first key, the same in every lane: the lane sums below need
  // the whole warp at every step. Keys, values and biases are loaded together, kUnroll passes
  // ahead of their use, so one memory latency covers them all. (Loading the next iteration's
  // before this one's math measured slower: the extra registers cost a block per multiprocessor.)
  for (int64_t w0 = split_seen ? begin + warp * kKeysPerWarp : end; w0 < end; w0 += kStep) {
    Keys<T, MaxG> cur;
    load_keys<T, D, MaxG>(cur, k_head, v_head, bias_head, bias_stride, group, w0 + sub, end, part);
    // All kUnroll keys' scores first (their lane sums are independent, so they overlap), then
    // one rescale of each running softmax for the kUnroll keys together.
    float sc[kUnroll][MaxG];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float kf[V];
#pragma unroll
      for (int i = 0; i < V; ++i) kf[i] = to_float(cur.k[u].v[i]);
#pragma unroll
      for (int g = 0; g < MaxG; ++g) {
        float dot = 0.0f;
        if (g < group) {
#pragma unroll
          for (int i = 0; i < V; ++i) dot += qv[g][i] * kf[i];
        }
        sc[u][g] = dot;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int g = 0; g < MaxG; ++g)
        if (g < group) sc[u][g] = sum_over_lanes<kLanes>(sc[u][g]);
#pragma unroll
    for (int g = 0; g < MaxG; ++g) {
      if (g >= group) continue;
      float m = run[g].m;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        sc[u][g] = cur.bias[u][g] == neg_inf() ? neg_inf() : sc[u][g] + cur.bias[u][g];
        m = fmaxf(m, sc[u][g]);
      }
      if (m == neg_inf()) continue;  // nothing seen yet
      const float keep = __expf(run[g].m - m);  // run.m = -inf gives keep = 0
      run[g].l *= keep;
#pragma unroll
      for (int i = 0; i < V; ++i) run[g].acc[i] *= keep;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const float p = __expf(sc[u][g] - m);  // a masked key: exp(-inf) = 0
        run[g].l += p;
#pragma unroll
        for (int i = 0; i < V; ++i) run[g].acc[i] += p * to_float(cur.v[u].v[i]);
      }
      run[g].m = m;
    }
  }

  // Merge the block's kGroupsPerBlock running softmaxes of each query head in shared memory.
  __shared__ float m_shared[kGroupsPerBlock][MaxG], l_shared[kGroupsPerBlock][MaxG];
  __shared__ float acc_shared[kGroupsPerBlock][MaxG][D];
  const int slot = warp * kKeysPerWarp + sub;
#pragma unroll
  for (int g = 0; g < MaxG; ++g) {
    if (g >= group) continue;
    if (part == 0) {
      m_shared[slot][g] = run[g].m;
      l_shared[slot][g] = run[g].l;
    }
#pragma unroll
    for (int i = 0; i < V; ++i) acc_shared[slot][g][part * V + i] = run[g].acc[i];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < group * D; e += kThreads) {
    const int g = e / D, d = e % D;
    float m = neg_inf();
    for (int s = 0; s < kGroupsPerBlock; ++s) m = fmaxf(m, m_shared[s][g]);
    float l = 0.0f, acc = 0.0f;
    if (m != neg_inf()) {
      for (int s = 0; s < kGroupsPerBlock; ++s) {
        const float w = __expf(m_shared[s][g] - m);
        l += l_shared[s][g] * w;
        acc += acc_shared[s][g][d] * w;
      }
    }
    const int64_t row = bh * group + g;
    const float o = l > 0.0f ? acc / l : 0.0f;  // no visible key: 0, not NaN
    if (splits == 1) {
      out[row * D + d] = from_float<T>(o);
    } else {
      o_part[(row * stride_splits + split) * D + d] = o;
      if (d == 0) lse_part[row * stride_splits + split] = l > 0.0f ? m + __logf(l) : neg_inf();
    }
  }
}

// Reduces one value per thread over the block (kCombineThreads) with `op`; every thread gets it.
template <typename Op>
__device__ __forceinline__ float over_block(float x, Op op) {
  __shared__ float warps[kCombineThreads / 32];
  x = over_lanes<32>(x, op);
  __syncthreads();  // `warps` may still be read from a previous call
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = x;
  __syncthreads();
  x = warps[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; ++w) x = op(x, warps[w]);
  return x;
}

// One block of kCombineThreads per query row [B n G] of a source with several splits:
// out = sum_s w_s o_s / sum_s w_s, w_s = exp(lse_s - max lse). Each thread loads one split's
// lse, so the weights take two block reductions; then each thread sums four dimensions over
// every kSlices-th split, and the slices are added in shared memory. No thread walks all the
// splits in turn: the merge is a few memory latencies long, however many splits there are.
template <typename T, int D>
__global__ void __launch_bounds__(kCombineThreads)
    decode_combine_kernel(const float* __restrict__ o_part, const float* __restrict__ lse_part, T* __restrict__ out,
                          int stride_splits, int splits0, int splits1, int heads0, int heads, int group) {
  constexpr int kQuads = D / 4, kSlices = kCombineThreads / kQuads;
  static_assert(D % 4 == 0 && kCombineThreads % kQuads == 0, "head_dim must be a multiple of 4 dividing the block");
  const int64_t row = blockIdx.x;
  const int splits = (row / group) % heads < heads0 ? splits0 : splits1;
  if (splits <= 1) return;  // the partial kernel wrote this row
  __shared__ float weight[kMaxSplits];
  const float lse = static_cast<int>(threadIdx.x) < splits ? lse_part[row * stride_splits + threadIdx.x] : neg_inf();
  const float m = over_block(lse, [](float a, float b) { return fmaxf(a, b); });
  const float w = m == neg_inf() ? 0.0f : __expf(lse - m);  // lse = -inf: 0
  if (threadIdx.x < kMaxSplits) weight[threadIdx.x] = w;
  const float total = over_block(w, [](float a, float b) { return a + b; });  // its barriers publish `weight`
  const int quad = threadIdx.x % kQuads, slice = threadIdx.x / kQuads;
  const float4* o = reinterpret_cast<const float4*>(o_part + row * stride_splits * D);
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int s = slice; s < splits; s += kSlices) {
    const float ws = weight[s];
    const float4 x = o[s * kQuads + quad];
    acc.x += ws * x.x;
    acc.y += ws * x.y;
    acc.z += ws * x.z;
    acc.w += ws * x.w;
  }
  __shared__ float4 slices[kCombineThreads];
  slices[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < kQuads) {
    float4 sum = slices[quad];
    for (int sl = 1; sl < kSlices; ++sl) {
      const float4 x = slices[sl * kQuads + quad];
      sum.x += x.x;
      sum.y += x.y;
      sum.z += x.z;
      sum.w += x.w;
    }
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;  // nothing visible: 0
    T* dst = out + row * D + quad * 4;
    dst[0] = from_float<T>(sum.x * inv);
    dst[1] = from_float<T>(sum.y * inv);
    dst[2] = from_float<T>(sum.z * inv);
    dst[3] = from_float<T>(sum.w * inv);
  }
}

template <typename T, int D, int MaxG>
const char* launch_decode(const DecodeAttentionArgs& a, cudaStream_t stream) {
  const int64_t heads = a.sources[0].kv_heads + a.sources[1].kv_heads;
  const int64_t blocks = a.batch * (a.sources[0].kv_heads * a.sources[0].splits +
                                    a.sources[1].kv_heads * a.sources[1].splits);
  auto* out = static_cast<T*>(a.out);
  decode_partial_kernel<T, D, MaxG><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(a.q), a.sources[0], a.sources[1], out, a.o_part, a.lse_part, a.batch,
      static_cast<int>(a.group), static_cast<int>(a.splits), a.scale);
  if (a.splits > 1)
    decode_combine_kernel<T, D><<<static_cast<unsigned>(a.batch * heads * a.group), kCombineThreads, 0, stream>>>(
        a.o_part, a.lse_part, out, static_cast<int>(a.splits), static_cast<int>(a.sources[0].splits),
        static_cast<int>(a.sources[1].splits), static_cast<int>(a.sources[0].kv_heads), static_cast<int>(heads),
        static_cast<int>(a.group));
  return launch_status();
}

// The query heads per KV head, rounded up to a compiled bucket: registers scale with it.
template <typename T, int D>
const char* launch_for_group(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (a.group <= 2) return launch_decode<T, D, 2>(a, stream);
  if (a.group <= 4) return launch_decode<T, D, 4>(a, stream);
  return launch_decode<T, D, 8>(a, stream);
}

}  // namespace

bool decode_attention_takes(ElementType type, int64_t head_dim, int64_t group) {
  return group >= 1 && group <= kDecodeMaxGroup && (head_dim == 64 || head_dim == 128 || head_dim == 256) &&
         head_dim / pack_elements(type) <= 32;
}

namespace {

// Blocks of this kernel instance the whole GPU holds at once (once per instance and process).
template <typename T, int D, int MaxG>
int64_t resident_blocks() {
  static const int64_t blocks = [] {
    int per_multiprocessor = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_multiprocessor, decode_partial_kernel<T, D, MaxG>, kThreads, 0);
    return static_cast<int64_t>(multiprocessor_count()) * std::max(1, per_multiprocessor);
  }();
  return blocks;
}

template <typename T, int D>
int64_t resident_blocks_for_group(int64_t group) {
  if (group <= 2) return resident_blocks<T, D, 2>();
  if (group <= 4) return resident_blocks<T, D, 4>();
  return resident_blocks<T, D, 8>();
}

}  // namespace

void plan_decode_splits(ElementType type, DecodeAttentionArgs& a) {
  for (DecodeSource& s : a.sources) s.splits = s.kv_heads == 0 ? 0 : 1;
  a.splits = 1;
  if (!decode_attention_takes(type, a.head_dim, a.group)) return;
  int64_t resident = 1;
  dispatch(type, [&](auto* tag) -> const char* {
    using T = element_of<decltype(tag)>;
    constexpr int V = Pack<T>::kSize;
    if (a.head_dim == 64) resident = resident_blocks_for_group<T, 64>(a.group);
    else if (a.head_dim == 128) resident = resident_blocks_for_group<T, 128>(a.group);
    else if constexpr (256 / V <= 32) resident = resident_blocks_for_group<T, 256>(a.group);
    return nullptr;
  });
  // Blocks of about equal length over both sources (a long full cache in many splits, a short
  // ring in few), as many as the GPU holds in one wave: a block of a second, partial wave would
  // add its whole length to the step. Splits are at least kMinSplitKeys long and at most
  // kMaxSplits per head.
  const auto splits_at = [](int64_t keys, int64_t chunk) {
    return std::clamp<int64_t>((keys + chunk - 1) / chunk, 1, kMaxSplits);
  };
  int64_t work = 0, longest = 0;
  for (const DecodeSource& s : a.sources) {
    work += a.batch * s.kv_heads * s.keys;
    if (s.kv_heads > 0) longest = std::max(longest, s.keys);
  }
  int64_t chunk = std::max<int64_t>(kMinSplitKeys, (work + resident - 1) / resident);
  for (;;) {
    int64_t blocks = 0;
    for (const DecodeSource& s : a.sources) blocks += a.batch * s.kv_heads * splits_at(s.keys, chunk);
    if (blocks <= resident || chunk >= longest) break;
    chunk += chunk / 16 + 1;
  }
  for (DecodeSource& s : a.sources) {
    if (s.kv_heads == 0) continue;
    s.splits = splits_at(s.keys, chunk);
    a.splits = std::max(a.splits, s.splits);
  }
}

const char* decode_attention(ElementType type, const DecodeAttentionArgs& a, void* stream) {
  if (!decode_attention_takes(type, a.head_dim, a.group)) return "decode_attention: unsupported head_dim or group";
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch(type, [&](auto* tag) -> const char* {
    using T = element_of<decltype(tag)>;
    constexpr int V = Pack<T>::kSize;
    switch (a.head_dim) {
      case 64: return launch_for_group<T, 64>(a, s);
      case 128: return launch_for_group<T, 128>(a, s);
      default:
        if constexpr (256 / V <= 32) return launch_for_group<T, 256>(a, s);
        return "decode_attention: head_dim 256 needs 16-bit elements";
    }
  });
}

}  // namespace consa::kernels::cuda
