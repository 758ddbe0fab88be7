// Attention seam: the math backend against a brute-force per-(query, key) computation written
// independently from the spec (HF window semantics + sinks), forward and backward.
#include <limits>

#include "catch_compat.h"
#include "consa/attention/attention.h"
#include "consa/core/error.h"
#include "helpers.h"

using namespace consa;
using namespace consa_test;

namespace {

// Plain loops over q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D]; query row r is position Lk - Lq + r;
// it sees key j iff j <= i and (full, or i - j < W, or j < S).
at::Tensor brute_force_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 int64_t window, int64_t sinks, double scale) {
  const int64_t b = q.size(0), lq = q.size(1), hq = q.size(2), d = q.size(3);
  const int64_t lk = k.size(1), group = hq / k.size(2);
  std::vector<at::Tensor> rows;
  at::Tensor out = at::zeros({b, lq, hq, d}, q.options());
  std::vector<at::Tensor> batch_out;
  for (int64_t bi = 0; bi < b; ++bi) {
    std::vector<at::Tensor> positions;
    for (int64_t r = 0; r < lq; ++r) {
      const int64_t i = lk - lq + r;
      std::vector<at::Tensor> heads;
      for (int64_t h = 0; h < hq; ++h) {
        std::vector<int64_t> keys;
        for (int64_t j = 0; j <= i; ++j)
          if (window <= 0 || i - j < window || j < sinks) keys.push_back(j);
        at::Tensor idx = at::tensor(keys, at::kLong);
        at::Tensor kk = k[bi].index_select(0, idx).select(1, h / group);  // [n, D]
        at::Tensor vv = v[bi].index_select(0, idx).select(1, h / group);
        at::Tensor p = at::softmax(at::mv(kk, q[bi][r][h]) * scale, 0);
        heads.push_back(at::mv(vv.t(), p));
      }
      positions.push_back(at::stack(heads));
    }
    batch_out.push_back(at::stack(positions));
  }
  return at::stack(batch_out);
}

struct QKV {
  at::Tensor q, k, v;
};

QKV random_qkv(int64_t b, int64_t lq, int64_t lk, int64_t hq, int64_t hkv, int64_t d, uint64_t seed) {
  at::manual_seed(seed);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  return {at::randn({b, lq, hq, d}, opts) * 1.5, at::randn({b, lk, hkv, d}, opts) * 1.5,
          at::randn({b, lk, hkv, d}, opts)};
}

}  // namespace

TEST_CASE("key visibility follows Hugging Face window semantics plus sinks", "[attention]") {
  // The worked example from attention.h: window 3, sinks 1, query 5 sees 0, 3, 4, 5.
  AttentionSpan span = AttentionSpan::sliding(3, 1);
  std::vector<int64_t> seen;
  for (int64_t j = 0; j < 8; ++j)
    if (key_visible(5, j, span)) seen.push_back(j);
  CHECK(seen == std::vector<int64_t>{0, 3, 4, 5});
  CHECK(key_visible(5, 3, AttentionSpan::sliding(3)));
  CHECK(!key_visible(5, 2, AttentionSpan::sliding(3)));  // W keys including the current one
  CHECK(key_visible(5, 0, AttentionSpan::full()));
  CHECK(!key_visible(5, 6, AttentionSpan::full()));

  at::Tensor mask = visibility_mask(2, 6, span, at::kCPU);  // queries at positions 4 and 5
  CHECK(mask[1].to(at::kLong).equal(at::tensor({1, 0, 0, 1, 1, 1}, at::kLong)));
  CHECK(mask[0].to(at::kLong).equal(at::tensor({1, 0, 1, 1, 1, 0}, at::kLong)));
}

TEST_CASE("math attention equals brute force for full, windowed and sink spans", "[attention]") {
  auto backend = make_attention_backend(AttentionImpl::Math);
  const double scale = 0.37;
  struct Case {
    int64_t window, sinks, lq;
  };
  for (Case c : {Case{0, 0, 11}, Case{3, 0, 11}, Case{3, 2, 11}, Case{1, 0, 11}, Case{20, 0, 11},
                 Case{4, 1, 3} /* decode-style: 3 queries at the end of 11 keys */}) {
    QKV t = random_qkv(2, c.lq, 11, 4, 2, 8, 7 + c.window);
    at::Tensor got = backend->attend(t.q, t.k, t.v, AttentionSpan::sliding(c.window, c.sinks), scale);
    at::Tensor want = brute_force_attention(t.q, t.k, t.v, c.window, c.sinks, scale);
    INFO("window " << c.window << " sinks " << c.sinks << " lq " << c.lq);
    CHECK(max_abs_diff(got, want) < 1e-12);
  }
  // A window of 1 is attention to the current token only: the output is v itself.
  QKV t = random_qkv(1, 5, 5, 2, 2, 4, 3);
  CHECK(max_abs_diff(backend->attend(t.q, t.k, t.v, AttentionSpan::sliding(1), 1.0), t.v) < 1e-12);
}

TEST_CASE("math attention gradients equal brute-force gradients", "[attention]") {
  auto backend = make_attention_backend(AttentionImpl::Math);
  QKV a = random_qkv(1, 9, 9, 4, 2, 8, 11);
  QKV b{a.q.clone(), a.k.clone(), a.v.clone()};
  for (auto* t : {&a.q, &a.k, &a.v, &b.q, &b.k, &b.v}) t->requires_grad_(true);
  at::Tensor weights = at::randn({1, 9, 4, 8}, at::kDouble);
  (backend->attend(a.q, a.k, a.v, AttentionSpan::sliding(3, 1), 0.5) * weights).sum().backward();
  (brute_force_attention(b.q, b.k, b.v, 3, 1, 0.5) * weights).sum().backward();
  CHECK(max_abs_diff(a.q.grad(), b.q.grad()) < 1e-12);
  CHECK(max_abs_diff(a.k.grad(), b.k.grad()) < 1e-12);
  CHECK(max_abs_diff(a.v.grad(), b.v.grad()) < 1e-12);
}

TEST_CASE("blocked window attention equals brute force, outputs and gradients, for any block size", "[attention]") {
  struct Case {
    int64_t lq, lk, window, sinks, block;
  };
  // Blocks smaller and larger than the window, ragged last blocks, queries aligned to the end of
  // longer keys (decoding), sinks inside and outside the window, a window of one.
  for (const Case& c : {Case{37, 37, 5, 2, 4}, Case{37, 37, 5, 2, 7}, Case{37, 37, 16, 3, 64}, Case{37, 37, 1, 1, 5},
                        Case{6, 30, 4, 3, 4}, Case{20, 20, 8, 0, 3}, Case{20, 20, 3, 12, 6}}) {
    INFO("lq " << c.lq << " lk " << c.lk << " window " << c.window << " sinks " << c.sinks << " block " << c.block);
    QKV a = random_qkv(2, c.lq, c.lk, 4, 2, 8, 5);
    QKV b{a.q.clone(), a.k.clone(), a.v.clone()};
    for (auto* t : {&a.q, &a.k, &a.v, &b.q, &b.k, &b.v}) t->requires_grad_(true);
    at::Tensor weights = at::randn({2, c.lq, 4, 8}, at::kDouble);
    const AttentionSpan span = AttentionSpan::sliding(c.window, c.sinks);
    at::Tensor blocked = blocked_window_attention(a.q, a.k, a.v, span, 0.4, c.block);
    at::Tensor reference = brute_force_attention(b.q, b.k, b.v, c.window, c.sinks, 0.4);
    CHECK(max_abs_diff(blocked, reference) < 1e-12);
    (blocked * weights).sum().backward();
    (reference * weights).sum().backward();
    CHECK(max_abs_diff(a.q.grad(), b.q.grad()) < 1e-12);
    CHECK(max_abs_diff(a.k.grad(), b.k.grad()) < 1e-12);
    CHECK(max_abs_diff(a.v.grad(), b.v.grad()) < 1e-12);
  }
  QKV t = random_qkv(1, 4, 4, 2, 2, 8, 1);
  CHECK_THROWS_WITH(blocked_window_attention(t.q, t.k, t.v, AttentionSpan::full(), 1.0),
                    contains("needs a window and a block > 0"));
}

TEST_CASE("backend selection", "[attention]") {
  CHECK(parse_attention_impl("math") == AttentionImpl::Math);
  CHECK_THROWS_WITH(parse_attention_impl("sdpa"), contains("unknown attention backend 'sdpa'; supported: auto, math, flash"));
  QKV t = random_qkv(1, 4, 4, 2, 2, 8, 1);
  // On the CPU, flash is refused with the reason; auto falls back to math.
  CHECK_THROWS_WITH(make_attention_backend(AttentionImpl::Flash)->attend(t.q, t.k, t.v, AttentionSpan::full(), 1.0),
                    contains("attention backend flash cannot run here"));
  at::Tensor viaAuto = make_attention_backend(AttentionImpl::Auto)->attend(t.q, t.k, t.v, AttentionSpan::sliding(2), 1.0);
  CHECK(max_abs_diff(viaAuto, brute_force_attention(t.q, t.k, t.v, 2, 0, 1.0)) < 1e-12);
  CHECK(!flash_attention_unsupported_reason(t.q).empty());
}

TEST_CASE("packed documents: each attends only inside itself, with its own sinks", "[attention]") {
  // Row 0 packs documents of 5, 1 and 6 tokens, row 1 one document of 12: the reference runs
  // the brute force on each document alone.
  const std::vector<std::vector<int64_t>> lengths = {{5, 1, 6}, {12}};
  QKV t = random_qkv(2, 12, 12, 4, 2, 8, 7);
  std::vector<int64_t> ids;
  for (const auto& row : lengths)
    for (int64_t d = 0; d < static_cast<int64_t>(row.size()); ++d) ids.insert(ids.end(), row[d], 10 * d + 3);
  const at::Tensor id_tensor = at::tensor(ids, at::kLong).view({2, 12});
  const PackedDocuments docs = PackedDocuments::from_ids(id_tensor, at::kCPU);
  CHECK(docs.max_length == 12);
  CHECK(docs.starts.numel() == 5);  // four documents

  const auto math = make_attention_backend(AttentionImpl::Math);
  for (const AttentionSpan& span : {AttentionSpan::full(), AttentionSpan::sliding(3), AttentionSpan::sliding(3, 2)}) {
    at::Tensor got = math->attend(t.q, t.k, t.v, span, 0.3, docs);
    at::Tensor want = at::empty_like(got);
    for (int64_t r = 0; r < 2; ++r) {
      int64_t start = 0;
      for (int64_t n : lengths[r]) {
        auto part = [&](const at::Tensor& x) { return x.narrow(0, r, 1).narrow(1, start, n); };
        want.narrow(0, r, 1).narrow(1, start, n)
            .copy_(brute_force_attention(part(t.q), part(t.k), part(t.v), span.window, span.sinks, 0.3));
        start += n;
      }
    }
    INFO(span.describe());
    CHECK(max_abs_diff(got, want) < 1e-12);
    // The row with one document equals attention without documents.
    CHECK(max_abs_diff(got[1], math->attend(t.q, t.k, t.v, span, 0.3)[1]) < 1e-12);
  }
}

TEST_CASE("packed documents: ids must be consecutive runs on the CPU, queries as many as keys", "[attention]") {
  CHECK_THROWS_WITH(PackedDocuments::from_ids(at::tensor({0, 1, 0}, at::kLong).view({1, 3}), at::kCPU),
                    contains("row 0 goes back from document 1 to 0 at position 2"));
  CHECK_THROWS_WITH(PackedDocuments::from_ids(at::zeros({3}, at::kLong), at::kCPU),
                    contains("integer [batch, length]"));
  QKV t = random_qkv(1, 2, 4, 2, 1, 8, 1);
  const PackedDocuments docs = PackedDocuments::from_ids(at::zeros({1, 4}, at::kLong), at::kCPU);
  CHECK_THROWS_WITH(make_attention_backend(AttentionImpl::Math)->attend(t.q, t.k, t.v, AttentionSpan::full(), 1, docs),
                    contains("as many queries as keys"));
}
