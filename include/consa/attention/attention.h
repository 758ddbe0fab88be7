#pragma once
// The attention seam. Every attention unit (a layer, a KV group or a head) has an AttentionSpan
// saying which keys its queries see; an AttentionBackend computes attention for one span. Two
// backends share the interface and are chosen at run time:
//   math  - portable matmul + softmax with an explicit visibility mask (any device, any dtype);
//   flash - fused kernels (LibTorch >= 2.4, CUDA, fp16/bf16), never an L x L mask: windows through
//           at::_flash_attention_forward's window_size_left; full causal attention over a whole
//           sequence through SDPA's dispatcher (cuDNN on Hopper, about twice flash's speed);
//           sinks merged by log-sum-exp in inference, blocked_window_attention in training.
#include <ATen/ATen.h>

#include <memory>
#include <string>

namespace consa {

// Which keys a query sees. Window semantics follow Hugging Face: a query at position i sees key
// j iff j <= i and j > i - window, i.e. `window` keys including itself (flash: window_size =
// (window - 1, 0)). The first `sinks` positions stay visible to every later query too.
struct AttentionSpan {
  int64_t window = 0;  // 0: full causal attention
  int64_t sinks = 0;   // attention-sink tokens, only meaningful with a window

  static AttentionSpan full() { return {}; }
  static AttentionSpan sliding(int64_t window, int64_t sinks = 0) { return {window, sinks}; }
  bool is_full() const { return window <= 0; }
  bool operator==(const AttentionSpan& o) const { return window == o.window && sinks == o.sinks; }
  bool operator!=(const AttentionSpan& o) const { return !(*this == o); }
  std::string describe() const;  // "full" or "swa(W=1024,S=4)"
};

// Whether query position i sees key position j under `span`. Worked example, window 3, sinks 1,
// query i = 5: keys 3, 4, 5 (the window) and key 0 (the sink) are visible; 1, 2 and 6+ are not.
bool key_visible(int64_t i, int64_t j, const AttentionSpan& span);

// Boolean [Lq, Lk] mask of key_visible, with queries aligned to the last Lq key positions
// (query row r is position Lk - Lq + r), as in incremental decoding.
at::Tensor visibility_mask(int64_t lq, int64_t lk, const AttentionSpan& span, at::Device device);

struct PackedDocuments;
// Boolean [B, L, L] mask of packed rows: key_visible within each document (positions counted
// from the document's start), nothing across documents.
at::Tensor document_visibility_mask(const PackedDocuments& documents, const AttentionSpan& span);

// Documents packed end to end into the rows of a batch (data.document_mask). Attention stays
// inside each document and a span's sinks are each document's first tokens, so a packed row
// computes what each of its documents computes alone: RoPE scores depend only on the distance
// between two positions, so positions need not restart at each document.
struct PackedDocuments {
  // `ids` [B, L] integer, on the CPU: each position's document, non-decreasing along a row (a
  // document is a run of equal ids). Throws naming what is wrong otherwise.
  static PackedDocuments from_ids(const at::Tensor& ids, at::Device device);
  bool defined() const { return ids.defined(); }

  at::Tensor ids;              // [B, L] int64 on the device
  at::Tensor offsets;          // [B, L] int64 on the device: each position's index in its document
  at::Tensor starts;           // [N + 1] int64 on the CPU: document starts in the B x L positions, then B x L
  at::Tensor cu_lengths;       // `starts` as int32 on the device (flash's varlen kernels)
  int64_t max_length = 0;      // the longest document
};

class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual std::string name() const = 0;
  // q [B, Lq, Hq, D], k and v [B, Lk, Hkv, D] with Hq a multiple of Hkv (query head h uses KV
  // head h / (Hq / Hkv)); queries are the last Lq positions. Returns [B, Lq, Hq, D]. With
  // `documents` (Lq == Lk only), no query sees a key of another document.
  virtual at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionSpan& span, double scale,
                            const PackedDocuments& documents = {}) const = 0;
};

// Sliding-window attention (with sinks) by blocks of `block` queries: each block attends to the
// sink keys left of its window and to the keys its window reaches, so memory grows with
// L x (S + block + W), never L x L. Ordinary differentiable operators, any device; the flash
// backend trains with sinks through it, since flash cannot differentiate the merge of the sinks.
at::Tensor blocked_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const AttentionSpan& span, double scale, int64_t block = 1024);

enum class AttentionImpl { Auto, Math, Flash };

// "auto" | "math" | "flash"; throws listing the choices otherwise.
AttentionImpl parse_attention_impl(const std::string& name);

// auto: flash where it can run (see flash_attention_unsupported_reason), math elsewhere.
std::shared_ptr<const AttentionBackend> make_attention_backend(AttentionImpl impl);

// Empty when the flash backend can run on these tensors, otherwise why not.
std::string flash_attention_unsupported_reason(const at::Tensor& q);

}  // namespace consa
