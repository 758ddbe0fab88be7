#include "consa/attention/attention.h"

#include <ATen/core/grad_mode.h>

#include <limits>

#include "consa/core/dtype.h"
#include "consa/core/enum_names.h"
#include "consa/core/error.h"
#include "consa/core/torch_compat.h"

namespace consa {

std::string AttentionSpan::describe() const {
  if (is_full()) return "full";
  std::string s = "swa(W=" + std::to_string(window);
  if (sinks > 0) s += ",S=" + std::to_string(sinks);
  return s + ")";
}

bool key_visible(int64_t i, int64_t j, const AttentionSpan& span) {
  if (j > i) return false;
  if (span.is_full()) return true;
  return j > i - span.window || j < span.sinks;
}

namespace {

// key_visible over broadcast tensors of query positions i and key positions j.
at::Tensor visible_keys(const at::Tensor& i, const at::Tensor& j, const AttentionSpan& span) {
  at::Tensor visible = j <= i;
  if (!span.is_full()) visible = visible & ((j > i - span.window) | (j < span.sinks));
  return visible;
}

}  // namespace

at::Tensor visibility_mask(int64_t lq, int64_t lk, const AttentionSpan& span, at::Device device) {
  auto opts = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor i = at::arange(lk - lq, lk, opts).unsqueeze(1);  // query positions
  at::Tensor j = at::arange(0, lk, opts).unsqueeze(0);        // key positions
  return visible_keys(i, j, span);
}

PackedDocuments PackedDocuments::from_ids(const at::Tensor& ids, at::Device device) {
  CONSA_CHECK(ids.dim() == 2 && !at::isFloatingType(ids.scalar_type()) && ids.device().is_cpu(),
              "document ids: expected an integer [batch, length] tensor on the CPU, got ", ids.sizes(), " ",
              c10::toString(ids.scalar_type()), " on ", ids.device().str());
  const at::Tensor id = ids.to(at::kLong).contiguous();
  const int64_t b = id.size(0), l = id.size(1);
  at::Tensor offsets = at::empty({b, l}, at::kLong);
  const int64_t* in = id.data_ptr<int64_t>();
  int64_t* offset = offsets.data_ptr<int64_t>();
  std::vector<int64_t> starts;
  PackedDocuments docs;
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t t = 0; t < l; ++t) {
      const int64_t i = r * l + t;
      CONSA_CHECK(t == 0 || in[i] >= in[i - 1], "document ids: row ", r, " goes back from document ", in[i - 1],
                  " to ", in[i], " at position ", t, "; documents must be consecutive runs");
      const bool start = t == 0 || in[i] != in[i - 1];
      if (start) {
        if (!starts.empty()) docs.max_length = std::max(docs.max_length, i - starts.back());
        starts.push_back(i);
      }
      offset[i] = start ? 0 : offset[i - 1] + 1;
    }
  }
  if (!starts.empty()) docs.max_length = std::max(docs.max_length, b * l - starts.back());
  starts.push_back(b * l);
  docs.ids = id.to(device);
  docs.offsets = offsets.to(device);
  docs.starts = at::tensor(starts, at::kLong);
  docs.cu_lengths = docs.starts.to(at::kInt).to(device);
  return docs;
}

at::Tensor document_visibility_mask(const PackedDocuments& documents, const AttentionSpan& span) {
  const at::Tensor& ids = documents.ids;
  const at::Tensor& offset = documents.offsets;  // [B, L]
  at::Tensor same = ids.unsqueeze(2) == ids.unsqueeze(1);  // [B, Lq, Lk]
  // Within a document, positions differ as their offsets do.
  return same & visible_keys(offset.unsqueeze(2), offset.unsqueeze(1), span);
}

namespace {

void check_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  CONSA_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "attention: expected q, k, v of shape [B, L, H, D]");
  CONSA_CHECK(k.sizes() == v.sizes(), "attention: k and v shapes differ");
  CONSA_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3) && q.size(1) <= k.size(1),
              "attention: q ", q.sizes(), " does not match k ", k.sizes());
  CONSA_CHECK(q.size(2) % k.size(2) == 0, "attention: ", q.size(2),
              " query heads are not a multiple of ", k.size(2), " KV heads");
}

// Scores of q [B, Lq, Hq, D] against k [B, Lk, Hkv, D], grouped so KV heads are not copied:
// returns [B, Hkv, rep, Lq, Lk].
at::Tensor grouped_scores(const at::Tensor& q, const at::Tensor& k, double scale) {
  const int64_t b = q.size(0), lq = q.size(1), hq = q.size(2), d = q.size(3);
  const int64_t hkv = k.size(2);
  at::Tensor qg = q.transpose(1, 2).reshape({b, hkv, hq / hkv, lq, d});
  at::Tensor kg = k.transpose(1, 2).unsqueeze(2);  // [B, Hkv, 1, Lk, D]
  return at::matmul(qg, kg.transpose(-1, -2)) * scale;
}

// probs [B, Hkv, rep, Lq, Lk] x v [B, Lk, Hkv, D] -> [B, Lq, Hq, D]
at::Tensor grouped_output(const at::Tensor& probs, const at::Tensor& v) {
  const int64_t b = probs.size(0), hkv = probs.size(1), rep = probs.size(2), lq = probs.size(3);
  at::Tensor out = at::matmul(probs, v.transpose(1, 2).unsqueeze(2));  // [B, Hkv, rep, Lq, D]
  return out.reshape({b, hkv * rep, lq, v.size(3)}).transpose(1, 2);
}

void check_documents(const at::Tensor& q, const at::Tensor& k, const PackedDocuments& documents) {
  if (!documents.defined()) return;
  CONSA_CHECK(q.size(1) == k.size(1), "attention: packed documents need as many queries as keys, got ", q.size(1),
              " and ", k.size(1));
  CONSA_CHECK(documents.ids.size(0) == q.size(0) && documents.ids.size(1) == q.size(1),
              "attention: document ids ", documents.ids.sizes(), " do not match q ", q.sizes());
}

// Runs `attend_one` on each document of the packed rows alone and puts the outputs back in place:
// exact for any span (each document's sinks are its own first tokens), one call per document.
template <typename AttendOne>
at::Tensor attend_per_document(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const PackedDocuments& documents, AttendOne attend_one) {
  const int64_t b = q.size(0), l = q.size(1);
  at::Tensor qf = q.reshape({1, b * l, q.size(2), q.size(3)});
  at::Tensor kf = k.reshape({1, b * l, k.size(2), k.size(3)}), vf = v.reshape({1, b * l, v.size(2), v.size(3)});
  const int64_t* start = documents.starts.data_ptr<int64_t>();
  std::vector<at::Tensor> outputs;
  for (int64_t d = 0; d + 1 < documents.starts.numel(); ++d) {
    const int64_t s = start[d], n = start[d + 1] - start[d];
    outputs.push_back(attend_one(qf.narrow(1, s, n), kf.narrow(1, s, n), vf.narrow(1, s, n)));
  }
  return at::cat(outputs, 1).view({b, l, q.size(2), q.size(3)});
}

// Softmax attention of q against k/v where `visible` [Lq, Lk] allows it; softmax in (at least)
// fp32, as Hugging Face's eager attention does.
at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& visible,
                            double scale) {
  at::Tensor scores = grouped_scores(q, k, scale);
  // [Lq, Lk] for every row, or [B, Lq, Lk] per row (packed documents)
  const at::Tensor mask = visible.dim() == 3 ? visible.unsqueeze(1).unsqueeze(1) : visible;
  scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  const at::ScalarType softmax_dtype = accumulation_dtype(q.scalar_type());
  at::Tensor probs = at::softmax(scores, -1, softmax_dtype).to(q.scalar_type());
  return grouped_output(probs, v);
}

class MathAttention : public AttentionBackend {
 public:
  std::string name() const override { return "math"; }
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionSpan& span,
                    double scale, const PackedDocuments& documents) const override {
    check_shapes(q, k, v);
    check_documents(q, k, documents);
    const at::Tensor visible = documents.defined() ? document_visibility_mask(documents, span)
                                                   : visibility_mask(q.size(1), k.size(1), span, q.device());
    return masked_attention(q, k, v, visible, scale);
  }
};

class FlashAttention : public AttentionBackend {
 public:
  std::string name() const override { return "flash"; }
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionSpan& span,
                    double scale, const PackedDocuments& documents) const override {
    check_shapes(q, k, v);
    check_documents(q, k, documents);
    const std::string why = flash_attention_unsupported_reason(q);
    CONSA_CHECK(why.empty(), "attention backend flash cannot run here: ", why);
    if (documents.defined()) {
      // Sinks: each document alone (their merge is per document); otherwise one varlen kernel
      // over every document of every row.
      if (!span.is_full() && span.sinks > 0)
        return attend_per_document(q, k, v, documents, [&](const at::Tensor& qd, const at::Tensor& kd,
                                                           const at::Tensor& vd) { return attend(qd, kd, vd, span, scale, PackedDocuments{}); });
      const int64_t b = q.size(0), l = q.size(1);
      at::Tensor out = compat::flash_attention_varlen(
          q.reshape({b * l, q.size(2), q.size(3)}).contiguous(), k.reshape({b * l, k.size(2), k.size(3)}).contiguous(),
          v.reshape({b * l, v.size(2), v.size(3)}).contiguous(), documents.cu_lengths, documents.max_length, scale,
          span.is_full() ? -1 : span.window - 1);
      return out.view({b, l, q.size(2), q.size(3)});
    }
    // Full causal attention over a whole sequence goes to SDPA's pick (cuDNN on Hopper is about
    // twice flash's speed); windows and decoding (fewer queries than keys) stay on flash.
    if (span.is_full() && q.size(1) == k.size(1) && compat::fused_causal_attention_compiled())
      return compat::fused_causal_attention(q, k, v, scale);
    if (!span.is_full() && span.sinks > 0 && at::GradMode::is_enabled() &&
        (q.requires_grad() || k.requires_grad() || v.requires_grad()))
      return blocked_window_attention(q, k, v, span, scale);  // flash cannot differentiate the sinks' merge
    const int64_t window_left = span.is_full() ? -1 : span.window - 1;
    auto [out, lse] =
        compat::flash_attention(q.contiguous(), k.contiguous(), v.contiguous(), scale, window_left);
    if (span.is_full() || span.sinks == 0) return out;
    return merge_sinks(q, k, v, span, scale, out, lse);
  }

 private:
  // Adds the sink keys that lie left of the window: a [Lq, S] softmax block merged with the
  // window's output through their log-sum-exps. Flash does not differentiate its log-sum-exp,
  // so this path is forward-only; training goes through blocked_window_attention.
  static at::Tensor merge_sinks(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const AttentionSpan& span, double scale, const at::Tensor& out,
                                const at::Tensor& lse) {
    const int64_t lq = q.size(1), lk = k.size(1), s = std::min(span.sinks, lk);
    at::Tensor ks = k.narrow(1, 0, s), vs = v.narrow(1, 0, s);
    at::Tensor scores = grouped_scores(q.to(at::kFloat), ks.to(at::kFloat), scale);
    auto opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor i = at::arange(lk - lq, lk, opts).unsqueeze(1);
    at::Tensor j = at::arange(0, s, opts).unsqueeze(0);
    at::Tensor outside_window = j <= i - span.window;  // sinks inside the window are in `out`
    scores = scores.masked_fill(outside_window.logical_not(), -std::numeric_limits<float>::infinity());
    const int64_t b = q.size(0), hq = q.size(2), hkv = k.size(2);
    at::Tensor window_lse =
        lse.narrow(-1, 0, lq).to(at::kFloat).reshape({b, hkv, hq / hkv, lq, 1});
    at::Tensor total = at::logaddexp(window_lse, at::logsumexp(scores, -1, true));
    at::Tensor sink_part = grouped_output(at::exp(scores - total), vs.to(at::kFloat));
    at::Tensor window_weight =
        at::exp(window_lse - total).reshape({b, hq, lq, 1}).transpose(1, 2);  // [B, Lq, Hq, 1]
    return (out.to(at::kFloat) * window_weight + sink_part).to(q.scalar_type());
  }
};

class AutoAttention : public AttentionBackend {
 public:
  std::string name() const override { return "auto"; }
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionSpan& span,
                    double scale, const PackedDocuments& documents) const override {
    const bool flash_ok = flash_attention_unsupported_reason(q).empty();
    return flash_ok ? flash_.attend(q, k, v, span, scale, documents) : math_.attend(q, k, v, span, scale, documents);
  }

 private:
  FlashAttention flash_;
  MathAttention math_;
};

}  // namespace

at::Tensor blocked_window_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const AttentionSpan& span, double scale, int64_t block) {
  check_shapes(q, k, v);
  CONSA_CHECK(!span.is_full() && block > 0, "blocked_window_attention: needs a window and a block > 0");
  const int64_t lq = q.size(1), lk = k.size(1), offset = lk - lq;
  auto positions = at::TensorOptions().dtype(at::kLong).device(q.device());
  std::vector<at::Tensor> outputs;
  for (int64_t start = 0; start < lq; start += block) {
    const int64_t n = std::min(block, lq - start);
    const int64_t first = offset + start, end = first + n;  // query positions [first, end)
    const int64_t window_begin = std::max<int64_t>(0, first - span.window + 1);
    const int64_t sinks = std::min(span.sinks, window_begin);  // sinks inside the range come with it
    at::Tensor keys = at::cat({k.narrow(1, 0, sinks), k.narrow(1, window_begin, end - window_begin)}, 1);
    at::Tensor values = at::cat({v.narrow(1, 0, sinks), v.narrow(1, window_begin, end - window_begin)}, 1);
    at::Tensor j = at::cat({at::arange(0, sinks, positions), at::arange(window_begin, end, positions)}).unsqueeze(0);
    at::Tensor i = at::arange(first, end, positions).unsqueeze(1);
    at::Tensor visible = visible_keys(i, j, span);
    outputs.push_back(masked_attention(q.narrow(1, start, n), keys, values, visible, scale));
  }
  return outputs.size() == 1 ? outputs[0] : at::cat(outputs, 1);
}

std::string flash_attention_unsupported_reason(const at::Tensor& q) {
  if (!compat::flash_attention_compiled())
    return "LibTorch " + compat::torch_version() + " has no windowed flash attention (needs >= 2.4)";
  if (!q.is_cuda()) return "tensors are on " + q.device().str() + ", flash needs CUDA";
  if (q.scalar_type() != at::kHalf && q.scalar_type() != at::kBFloat16)
    return std::string("dtype ") + c10::toString(q.scalar_type()) + ", flash needs float16 or bfloat16";
  if (q.size(3) % 8 != 0 || q.size(3) > 256)
    return "head_dim " + std::to_string(q.size(3)) + ", flash needs a multiple of 8 up to 256";
  return "";
}

AttentionImpl parse_attention_impl(const std::string& name) {
  static constexpr EnumName<AttentionImpl> kImpls[] = {
      {AttentionImpl::Auto, "auto"}, {AttentionImpl::Math, "math"}, {AttentionImpl::Flash, "flash"}};
  return parse_enum(kImpls, name, "attention backend");
}

std::shared_ptr<const AttentionBackend> make_attention_backend(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::Math: return std::make_shared<MathAttention>();
    case AttentionImpl::Flash: return std::make_shared<FlashAttention>();
    case AttentionImpl::Auto: break;
  }
  return std::make_shared<AutoAttention>();
}

}  // namespace consa
