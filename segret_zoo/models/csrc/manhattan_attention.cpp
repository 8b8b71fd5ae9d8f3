// Full-mode Manhattan retention on the CPU: softmax(q k^T * scale + bias) v, where the bias of query
// (i, j) and key (i', j') is bias_h[n, i, i'] + bias_w[n, j, j'] (row-major tokens, L = H * W).
//
// A flash-attention loop (query tiles x key tiles, online softmax) whose key tiles are whole rows of
// the map: inside a tile the bias of one query against one key row is the scalar bias_h[i, i'] plus
// the W-vector bias_w[j, :], both read from the 1-D tables, which stay in L1. So the L x L mask is
// never built nor read, which is what the decay costs SDPA's CPU kernel (an extra pass over every
// score tile with a load from a mask of N x L x L floats).
//
// Built on first use by segret_zoo.models.cpu_kernel (torch.utils.cpp_extension), forward only. The
// two matrix products per tile go to the BLAS sgemm inside libtorch_cpu, so they run in float32:
// bfloat16 and float16 inputs (autocast, or a model cast to either) are widened once per call (q, k
// and v are O(L d), the work is O(L^2 d)) and the result is rounded back to their dtype.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// column-major BLAS sgemm (LP64), from the BLAS that libtorch_cpu links (MKL exports both names);
// weak, so a build without one loads and reports it instead of failing to link
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
            const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void SGEMM(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
           const int*, const float*, const int*, const float*, float*, const int*) __attribute__((weak));
}

namespace {

using Vec = at::vec::Vectorized<float>;
using SgemmFn = decltype(&sgemm_);

constexpr int64_t kQueryTile = 256;  // queries per tile (as SDPA's CPU kernel for long sequences)
constexpr int64_t kKeyTile = 512;    // keys per tile, rounded down to whole rows of the map (>= 1 row)

SgemmFn blas_sgemm() {
  if (sgemm_ != nullptr) return &sgemm_;
  if (SGEMM != nullptr) return &SGEMM;
  return nullptr;
}

// C (m x n, column-major, ldc) = alpha * op(A) op(B) + beta * C
inline void gemm(SgemmFn fn, bool trans_a, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const char ta = trans_a ? 'T' : 'N', tb = 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  fn(&ta, &tb, &im, &in, &ik, &alpha, a, &ilda, b, &ildb, &beta, c, &ildc);
}

float reduce_max(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, v);
}

float reduce_sum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, v);
}

// q, k, v: B x N x L x d float32 (any strides, unit last); bias_h: N x H x H; bias_w: N x W x W.
// Returns B x N x L x d, stored token-major (B x L x N x d), as a transposed view.
at::Tensor attention_f32(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& bias_h, const at::Tensor& bias_w, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
              "manhattan_attention: q, k and v must all be B x N x L x d");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "manhattan_attention: q, k and v need a unit last stride");
  const int64_t B = q.size(0), N = q.size(1), L = q.size(2), D = q.size(3);
  TORCH_CHECK(bias_h.dim() == 3 && bias_w.dim() == 3 && bias_h.size(0) == N && bias_w.size(0) == N,
              "manhattan_attention: bias_h must be N x H x H and bias_w N x W x W");
  const int64_t H = bias_h.size(1), W = bias_w.size(1);
  TORCH_CHECK(bias_h.size(2) == H && bias_w.size(2) == W && H * W == L,
              "manhattan_attention: the tables are for ", H, " x ", W, " tokens, the inputs have ", L);
  const SgemmFn sgemm = blas_sgemm();
  TORCH_CHECK(sgemm != nullptr, "manhattan_attention: this torch build exports no BLAS sgemm");

  const at::Tensor bh = bias_h.contiguous(), bw = bias_w.contiguous();
  at::Tensor out = at::empty({B, L, N, D}, q.options());
  if (out.numel() == 0) return out.transpose(1, 2);

  const int64_t q_tile = std::min(kQueryTile, L);
  const int64_t k_tile = std::min(std::max<int64_t>(1, kKeyTile / W) * W, L);
  const int64_t q_tiles = (L + q_tile - 1) / q_tile;
  const float alpha = static_cast<float>(scale);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  const float* q_data = q.const_data_ptr<float>();
  const float* k_data = k.const_data_ptr<float>();
  const float* v_data = v.const_data_ptr<float>();
  const float* bh_data = bh.const_data_ptr<float>();
  const float* bw_data = bw.const_data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  const int64_t qsB = q.stride(0), qsN = q.stride(1), qsL = q.stride(2);
  const int64_t ksB = k.stride(0), ksN = k.stride(1), ksL = k.stride(2);
  const int64_t vsB = v.stride(0), vsN = v.stride(1), vsL = v.stride(2);

  at::parallel_for(0, B * N * q_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(q_tile * k_tile), acc(q_tile * D), row_max(q_tile), row_sum(q_tile);
    float* S = scores.data();
    float* O = acc.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (N * q_tiles), n = (task / q_tiles) % N, q0 = (task % q_tiles) * q_tile;
      const int64_t mq = std::min(q_tile, L - q0);
      const float* qp = q_data + b * qsB + n * qsN + q0 * qsL;
      const float* kp = k_data + b * ksB + n * ksN;
      const float* vp = v_data + b * vsB + n * vsN;
      const float* bh_n = bh_data + n * H * H;
      const float* bw_n = bw_data + n * W * W;
      std::fill(row_max.begin(), row_max.end(), neg_inf);
      std::fill(row_sum.begin(), row_sum.end(), 0.f);
      for (int64_t k0 = 0; k0 < L; k0 += k_tile) {
        const int64_t nk = std::min(k_tile, L - k0), key_row0 = k0 / W, key_rows = nk / W;
        // S (mq x nk, row-major) = scale * Q K^T
        gemm(sgemm, true, nk, mq, D, alpha, kp + k0 * ksL, ksL, qp, qsL, 0.f, S, k_tile);
        for (int64_t i = 0; i < mq; ++i) {
          const int64_t token = q0 + i;
          const float* bh_row = bh_n + (token / W) * H + key_row0;
          const float* bw_row = bw_n + (token % W) * W;
          float* s = S + i * k_tile;
          // s += bias, and its max
          Vec vmax(neg_inf);
          float tail_max = neg_inf;
          for (int64_t r = 0; r < key_rows; ++r) {
            const float row_bias = bh_row[r];
            const Vec vrow(row_bias);
            float* seg = s + r * W;
            int64_t j = 0;
            for (; j + Vec::size() <= W; j += Vec::size()) {
              const Vec x = Vec::loadu(seg + j) + (vrow + Vec::loadu(bw_row + j));
              x.store(seg + j);
              vmax = at::vec::maximum(vmax, x);
            }
            for (; j < W; ++j) {
              seg[j] += row_bias + bw_row[j];
              tail_max = std::max(tail_max, seg[j]);
            }
          }
          const float m_new = std::max({row_max[i], reduce_max(vmax), tail_max});
          // s <- exp(s - max), its sum; rescale what was accumulated under the previous max
          const Vec vm(m_new);
          Vec vsum(0.f);
          int64_t j = 0;
          for (; j + Vec::size() <= nk; j += Vec::size()) {
            const Vec e = (Vec::loadu(s + j) - vm).exp_u20();
            e.store(s + j);
            vsum += e;
          }
          float sum = reduce_sum(vsum);
          for (; j < nk; ++j) {
            s[j] = std::exp(s[j] - m_new);
            sum += s[j];
          }
          const float factor = std::exp(row_max[i] - m_new);  // 0 for the first key tile
          row_sum[i] = row_sum[i] * factor + sum;
          row_max[i] = m_new;
          if (k0 > 0 && factor != 1.f) {
            float* o = O + i * D;
            at::vec::map<float>([factor](Vec x) { return x * Vec(factor); }, o, o, D);
          }
        }
        // O (mq x D, row-major) (+)= P V
        gemm(sgemm, false, D, mq, nk, 1.f, vp + k0 * vsL, vsL, S, k_tile, k0 > 0 ? 1.f : 0.f, O, D);
      }
      for (int64_t i = 0; i < mq; ++i) {
        const float inv = 1.f / row_sum[i];
        float* dst = out_data + ((b * L + q0 + i) * N + n) * D;
        at::vec::map<float>([inv](Vec x) { return x * Vec(inv); }, dst, O + i * D, D);
      }
    }
  });
  return out.transpose(1, 2);
}

bool widened(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// The op: float32, or bfloat16 / float16 computed in float32 (see the top of this file).
at::Tensor manhattan_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& bias_h, const at::Tensor& bias_w, double scale) {
  const at::ScalarType dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || widened(dtype),
              "manhattan_attention: float32, bfloat16 or float16 inputs only, got ", dtype);
  for (const at::Tensor* t : {&q, &k, &v, &bias_h, &bias_w}) {
    TORCH_CHECK(t->device().is_cpu(), "manhattan_attention: CPU tensors only");
  }
  TORCH_CHECK(k.scalar_type() == dtype && v.scalar_type() == dtype,
              "manhattan_attention: q, k and v must have one dtype");
  for (const at::Tensor* t : {&bias_h, &bias_w}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat || widened(t->scalar_type()),
                "manhattan_attention: the decay tables must be float32, bfloat16 or float16");
  }
  const at::Tensor bh = bias_h.to(at::kFloat), bw = bias_w.to(at::kFloat);
  if (dtype == at::kFloat) return attention_f32(q, k, v, bh, bw, scale);
  // B x N x L x d views of token-major float32 copies (unit last stride, as the kernel needs)
  auto widen = [](const at::Tensor& t) { return t.transpose(1, 2).to(at::kFloat).transpose(1, 2); };
  const at::Tensor out = attention_f32(widen(q), widen(k), widen(v), bh, bw, scale);
  return out.transpose(1, 2).to(dtype).transpose(1, 2);  // token-major, like the float32 result
}

}  // namespace

TORCH_LIBRARY(segret_zoo, m) {
  m.def("manhattan_attention(Tensor q, Tensor k, Tensor v, Tensor bias_h, Tensor bias_w, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(segret_zoo, CPU, m) {
  m.impl("manhattan_attention", &manhattan_attention);
}
