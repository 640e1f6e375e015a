// Checks the CUDA kernels of csrc/cuda/selected_softmax.cu, run under cuda_host_shim.h, against
// the CPU implementation (csrc/selected_text_softmax_cpu.cpp, itself tested against PyTorch).
// Prints one line per case; exit status 0 when every case is within tolerance.
#include <cstdio>
#include <random>
#include <vector>
#include "cuda_host_shim.h"
#include "selected_softmax.h"

using l2s::SelectedTextSoftmaxShape;

template <typename T> T cvt(float f);
template <> float cvt<float>(float f) { return f; }
template <> __half cvt<__half>(float f) { return __float2half_rn(f); }
template <> __nv_bfloat16 cvt<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }
float back(float f) { return f; }
float back(__half h) { return __half2float(h); }
float back(__nv_bfloat16 b) { return __bfloat162float(b); }

template <typename T>
bool run(SelectedTextSoftmaxShape s, l2s::CudaDType code, float tol, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  const int64_t nq = s.batch * s.heads * s.queries * s.head_dim, nk = s.batch * s.heads * s.keys * s.head_dim;
  const int64_t no = s.batch * s.heads * s.queries * s.groups;
  std::vector<T> q(nq), k(nk), go(no), out(no), gq(nq), gk(nk);
  std::vector<float> qf(nq), kf(nk), gof(no), sel(s.keys * s.groups);
  for (int64_t i = 0; i < nq; ++i) { q[i] = cvt<T>(normal(rng)); qf[i] = back(q[i]); }
  for (int64_t i = 0; i < nk; ++i) { k[i] = cvt<T>(normal(rng)); kf[i] = back(k[i]); }
  for (int64_t i = 0; i < no; ++i) { go[i] = cvt<T>(normal(rng)); gof[i] = back(go[i]); }
  for (auto& v : sel) v = uni(rng);
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  std::vector<float> out_ref(no), gq_ref(nq), gk_ref(nk);
  l2s::selected_text_softmax_forward_cpu(s, qf.data(), kf.data(), sel.data(), scale, out_ref.data());
  l2s::selected_text_softmax_backward_cpu(s, gof.data(), qf.data(), kf.data(), sel.data(), scale, gq_ref.data(), gk_ref.data());
  std::vector<float> lse(s.batch * s.heads * s.queries), delta(lse.size());
  for (auto& v : out) v = cvt<T>(std::nanf(""));
  for (auto& v : gq) v = cvt<T>(std::nanf(""));
  for (auto& v : gk) v = cvt<T>(std::nanf(""));
  l2s::selected_text_softmax_forward_cuda(s, code, q.data(), k.data(), sel.data(), scale, out.data(), nullptr);
  l2s::selected_text_softmax_backward_cuda(s, code, go.data(), q.data(), k.data(), sel.data(), scale, lse.data(), delta.data(), gq.data(), gk.data(), nullptr);
  auto maxerr = [](const std::vector<T>& a, const std::vector<float>& b) {
    double e = 0, m = 0;
    for (size_t i = 0; i < b.size(); ++i) { double d = std::fabs(double(back(a[i])) - b[i]); if (!(d <= e)) e = d; m = std::max(m, std::fabs(double(b[i]))); }
    return e / std::max(1.0, m);
  };
  const double eo = maxerr(out, out_ref), eq = maxerr(gq, gq_ref), ek = maxerr(gk, gk_ref);
  const bool ok = eo <= tol && eq <= tol && ek <= tol;
  std::printf("%s dtype=%d B%lld H%lld N%lld T%lld D%lld G%lld  out %.2e  dq %.2e  dk %.2e\n", ok ? "ok  " : "FAIL",
              int(code), (long long)s.batch, (long long)s.heads, (long long)s.queries, (long long)s.keys,
              (long long)s.head_dim, (long long)s.groups, eo, eq, ek);
  return ok;
}

int main() {
  std::mt19937 rng(0);
  bool ok = true;
  const SelectedTextSoftmaxShape shapes[] = {
      {1, 1, 1, 1, 4, 1}, {2, 3, 17, 9, 8, 3}, {1, 2, 33, 77, 16, 4}, {1, 1, 9, 40, 72, 17},
      {1, 1, 10, 33, 130, 8}, {1, 1, 12, 70, 256, 32}, {2, 1, 5, 1, 4, 2}, {1, 1, 0, 5, 8, 2},
  };
  for (const auto& s : shapes) ok &= run<float>(s, l2s::CudaDType::kFloat32, 2e-5f, rng);
  ok &= run<__half>({1, 2, 20, 45, 64, 3}, l2s::CudaDType::kFloat16, 2e-2f, rng);
  ok &= run<__nv_bfloat16>({1, 2, 20, 45, 64, 3}, l2s::CudaDType::kBFloat16, 3e-2f, rng);
  std::printf("%s (%zu launches)\n", ok ? "ALL OK" : "SOME FAILED", g_launches);
  return ok ? 0 : 1;
}
