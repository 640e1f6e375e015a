// CPU path of the token-selected attention capture (see selected_text_softmax.h).
#include "selected_text_softmax.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace l2s {
namespace {

// The simd pragmas let the compiler vectorise these float reductions (reassociation), which
// it may not do on its own without -ffast-math.
inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// y += alpha * x
inline void axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// One query row of the backward: its log-sum-exp and its row term
// delta = sum_t P_t (dO . sel_t). Writes P (length T) into `prob` and dO . sel_t (length T) into
// `grad_prob`: those two per-thread rows are the only O(T) memory of the backward.
struct RowStats {
  float lse;
  float delta;
};

RowStats row_stats(const float* q_row, const float* k_head, const float* selector,
                   const float* grad_out_row, float scale, int64_t T, int64_t D, int64_t G,
                   float* prob, float* grad_prob) {
  float row_max = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < T; ++t) {
    prob[t] = scale * dot(q_row, k_head + t * D, D);  // logits for now
    row_max = std::max(row_max, prob[t]);
  }
  float denom = 0.0f;
  for (int64_t t = 0; t < T; ++t) denom += std::exp(prob[t] - row_max);
  const float lse = row_max + std::log(denom);
  float delta = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    grad_prob[t] = dot(grad_out_row, selector + t * G, G);
    prob[t] = std::exp(prob[t] - lse);
    delta += prob[t] * grad_prob[t];
  }
  return {lse, delta};
}

}  // namespace

void selected_text_softmax_forward_cpu(const SelectedTextSoftmaxShape& s, const float* q,
                                       const float* k, const float* selector, float scale,
                                       float* out) {
  const int64_t T = s.keys, D = s.head_dim, G = s.groups, N = s.queries;
  const int64_t rows = s.batch * s.heads * N;
#pragma omp parallel
  {
    std::vector<float> acc(static_cast<size_t>(G));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const float* q_row = q + row * D;
      const float* k_head = k + (row / N) * T * D;
      float* out_row = out + row * G;
      // Online softmax: running max m, running denominator l, running P @ selector in acc.
      float m = -std::numeric_limits<float>::infinity();
      float l = 0.0f;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t t = 0; t < T; ++t) {
        const float logit = scale * dot(q_row, k_head + t * D, D);
        if (logit == -std::numeric_limits<float>::infinity()) continue;  // p = 0; exp(-inf - -inf) is NaN
        if (logit > m) {
          const float rescale = std::exp(m - logit);  // 0 on the first key (m = -inf)
          l *= rescale;
          for (int64_t g = 0; g < G; ++g) acc[g] *= rescale;
          m = logit;
        }
        const float p = std::exp(logit - m);
        l += p;
        axpy(p, selector + t * G, acc.data(), G);
      }
      const float inv_l = 1.0f / l;
      for (int64_t g = 0; g < G; ++g) out_row[g] = acc[g] * inv_l;
    }
  }
}

void selected_text_softmax_backward_cpu(const SelectedTextSoftmaxShape& s, const float* grad_out,
                                        const float* q, const float* k, const float* selector,
                                        float scale, float* grad_q, float* grad_k) {
  const int64_t T = s.keys, D = s.head_dim, G = s.groups, N = s.queries;
  const int64_t heads = s.batch * s.heads;
  const int64_t rows = heads * N;
  // O(N) state shared by the two passes, as in the FlashAttention-2 backward.
  std::vector<float> lse(static_cast<size_t>(rows)), delta(static_cast<size_t>(rows));

  // Pass 1, parallel over query rows: per-row lse and delta, and dq (row-private, no races).
#pragma omp parallel
  {
    std::vector<float> prob(static_cast<size_t>(T)), grad_prob(static_cast<size_t>(T));
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const float* k_head = k + (row / N) * T * D;
      const RowStats st = row_stats(q + row * D, k_head, selector, grad_out + row * G, scale, T,
                                    D, G, prob.data(), grad_prob.data());
      lse[row] = st.lse;
      delta[row] = st.delta;
      float* dq = grad_q + row * D;
      std::fill(dq, dq + D, 0.0f);
      for (int64_t t = 0; t < T; ++t) {
        const float dlogit = prob[t] * (grad_prob[t] - st.delta);
        axpy(scale * dlogit, k_head + t * D, dq, D);
      }
    }
  }

  // Pass 2, parallel over key rows: dk_t = scale * sum_n dS_nt q_n with P recomputed from lse.
  // Each key row is owned by one thread, so no atomics and no (N,T) buffer.
  const int64_t key_rows = heads * T;
#pragma omp parallel for schedule(static)
  for (int64_t key_row = 0; key_row < key_rows; ++key_row) {
    const int64_t head = key_row / T;
    const int64_t t = key_row % T;
    const float* k_row = k + key_row * D;
    const float* sel_row = selector + t * G;
    float* dk = grad_k + key_row * D;
    std::fill(dk, dk + D, 0.0f);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = head * N + n;
      const float* q_row = q + row * D;
      const float p = std::exp(scale * dot(q_row, k_row, D) - lse[row]);
      const float dlogit = p * (dot(grad_out + row * G, sel_row, G) - delta[row]);
      axpy(scale * dlogit, q_row, dk, D);
    }
  }
}

bool cpu_built_with_openmp() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

int cpu_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace l2s
