// Fused CPU kernels for the selective scan and the causal depthwise conv, token-major
// layout [B, L, D] (last dim contiguous, any stride over B and L), float32.
//
// The scan is vectorised across D (one SIMD register holds W neighbouring channels),
// the state h[n] of those channels lives in registers, the time loop runs inside the
// kernel, and the work is split into (batch row, D-chunk) tasks that at::parallel_for's
// threads claim dynamically. Nothing of size [B, D, L, N] is ever materialised: the
// forward keeps h in registers, the backward recomputes h per time chunk from
// checkpoints the forward stored every `ckpt_every` steps. The readable oracle is
// reference.py; the tests hold this file to it.
//
// Built on first use by cpu_ext.py with -O3 -march=native; VMS_NS (the op namespace) is
// set per build so two builds (e.g. AVX-512 and AVX2 variants) can live in one process.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define VMS_X86 1
#endif

#ifndef VMS_NS
#define VMS_NS vmstream_scan
#endif

namespace {

constexpr float kLog2e = 1.4426950408889634f;
// 2^f on [-0.5, 0.5] with p(0) = 1 and p'(0) = ln 2 exact, the other four coefficients
// fitted for the least maximum relative error (1.1e-7 before float32 rounding). The two
// exact ones matter for the scan's decay: a long-memory channel has |Δ·A| small, so f is
// near 0 at every step, and any error there has the same sign each step and compounds
// over the memory (the earlier unconstrained fit had p(0) = 1 + 1.19e-7, which put the
// output 6x past mamba-ssm's fp32 tolerance at L = 4096; tests/models/test_ops_upstream.py).
constexpr float kP0 = 1.0f, kP1 = 6.931471806e-01f, kP2 = 2.402225896e-01f,
                kP3 = 5.550552468e-02f, kP4 = 9.671051678e-03f, kP5 = 1.330622285e-03f;

// ---------------------------------------------------------------- SIMD layer
// One small set of primitives per ISA; the kernels below are written once against them.
#if defined(__AVX512F__)
constexpr int W = 16;
const char* kIsa = "avx512";
using vf = __m512;
using vmask = __mmask16;
inline vmask lane_mask(int n) { return n >= W ? (vmask)0xFFFF : (vmask)((1u << n) - 1u); }
inline vf vload(const float* p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
inline void vstore(float* p, vf a, vmask m) { _mm512_mask_storeu_ps(p, m, a); }
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a*b
// max/min with the constant first: a NaN in `x` propagates (x86 returns the 2nd operand).
inline vf vmax_c(float c, vf x) { return _mm512_max_ps(vset(c), x); }
inline vf vmin_c(float c, vf x) { return _mm512_min_ps(vset(c), x); }
inline vf vabs(vf a) { return _mm512_abs_ps(a); }
inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
inline vf vexp2_core(vf w) {
  // w clamped below: 2^(-200) scales to exactly 0 (never NaN); scalef does the 2^k.
  w = vmax_c(-200.f, w);
  vf k = _mm512_roundscale_ps(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf f = vsub(w, k);
  vf p = vfma(vfma(vfma(vfma(vfma(vset(kP5), f, vset(kP4)), f, vset(kP3)), f, vset(kP2)), f,
                   vset(kP1)), f, vset(kP0));
  return _mm512_scalef_ps(p, k);
}
// Sums of each of 16 vectors, returned as one vector (lane j = sum of v[j]); a
// transpose-and-add tree, 4 levels instead of 16 separate horizontal reductions.
inline vf vsum16(const vf* v) {
  // The tree permutes lanes; feeding inputs in this (self-inverse) order undoes it.
  static constexpr int ord[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};
  vf a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i) {
    vf x = v[ord[i]], y = v[ord[i + 8]];
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE));
  }
  for (int i = 0; i < 4; ++i)
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 4], 0x88),
                         _mm512_shuffle_f32x4(a[i], a[i + 4], 0xDD));
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[i], b[i + 2], 0x44),
                         _mm512_shuffle_ps(b[i], b[i + 2], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int W = 8;
const char* kIsa = "avx2";
using vf = __m256;
using vmask = __m256i;
inline vmask lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vf vload(const float* p, vmask m) { return _mm256_maskload_ps(p, m); }
inline void vstore(float* p, vf a, vmask m) { _mm256_maskstore_ps(p, m, a); }
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
inline vf vmax_c(float c, vf x) { return _mm256_max_ps(vset(c), x); }
inline vf vmin_c(float c, vf x) { return _mm256_min_ps(vset(c), x); }
inline vf vabs(vf a) { return _mm256_andnot_ps(vset(-0.f), a); }
inline float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf vexp2_core(vf w) {
  // Clamped to [-127, 128]: k = -127 builds the bit pattern of +0, k = 128 that of +inf.
  w = vmin_c(128.f, vmax_c(-127.f, w));
  vf k = _mm256_round_ps(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf f = vsub(w, k);
  vf p = vfma(vfma(vfma(vfma(vfma(vset(kP5), f, vset(kP4)), f, vset(kP3)), f, vset(kP2)), f,
                   vset(kP1)), f, vset(kP0));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return vmul(p, _mm256_castsi256_ps(e));
}
#else
constexpr int W = 1;
const char* kIsa = "scalar";
using vf = float;
using vmask = int;
inline vmask lane_mask(int n) { return n > 0; }
inline vf vload(const float* p, vmask m) { return m ? *p : 0.f; }
inline void vstore(float* p, vf a, vmask m) {
  if (m) *p = a;
}
inline vf vset(float x) { return x; }
inline vf vzero() { return 0.f; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vdiv(vf a, vf b) { return a / b; }
inline vf vfma(vf a, vf b, vf c) { return std::fma(a, b, c); }
inline vf vfnma(vf a, vf b, vf c) { return std::fma(-a, b, c); }
inline vf vmax_c(float c, vf x) { return std::isnan(x) ? x : std::max(c, x); }
inline vf vmin_c(float c, vf x) { return std::isnan(x) ? x : std::min(c, x); }
inline vf vabs(vf a) { return std::fabs(a); }
inline float vsum(vf a) { return a; }
inline vf vexp2_core(vf w) { return std::exp2(w); }
#endif

const vmask kAll = lane_mask(W);

// exp(x) for the scan's decay: x = Δ·A is <= 0 in Mamba, but any finite x works and
// exp(-huge) is exactly 0.
inline vf vexp(vf x) { return vexp2_core(vmul(x, vset(kLog2e))); }
// exp(x) for arguments that may be +-inf (sigmoid/softplus inputs).
inline vf vexp_safe(vf x) { return vexp2_core(vmin_c(200.f, vmul(x, vset(kLog2e)))); }
inline vf vsigmoid(vf x) { return vdiv(vset(1.f), vadd(vset(1.f), vexp_safe(vsub(vzero(), x)))); }
inline vf vsilu(vf x) { return vmul(x, vsigmoid(x)); }
// softplus(x) = max(x, 0) + log1p(exp(-|x|)); log1p(e) on e in [0, 1] via
// 2·atanh(s), s = e / (2 + e) <= 1/3, series to s^13 (relative error < 2e-8).
// max(x, 0) + 2s·p: softplus from s = e / (2 + e) and the summed series p(s^2).
inline vf softplus_tail(vf x, vf s, vf p) {
#if defined(__AVX512F__)
  vf pos = _mm512_max_ps(x, vzero());
#elif defined(__AVX2__) && defined(__FMA__)
  vf pos = _mm256_max_ps(x, vzero());
#else
  vf pos = x > 0.f ? x : 0.f;
#endif
  return vadd(pos, vmul(vadd(s, s), p));  // NaN in x: s is NaN
}
inline vf vsoftplus(vf x) {
  vf e = vexp_safe(vsub(vzero(), vabs(x)));
  vf s = vdiv(e, vadd(e, vset(2.f)));
  vf s2 = vmul(s, s);
  vf p = vfma(vset(1.f / 13), s2, vset(1.f / 11));
  p = vfma(p, s2, vset(1.f / 9));
  p = vfma(p, s2, vset(1.f / 7));
  p = vfma(p, s2, vset(1.f / 5));
  p = vfma(p, s2, vset(1.f / 3));
  return softplus_tail(x, s, vfma(p, s2, vset(1.f)));
}

// Per-lane gathers/scatters for the small per-channel tensors ([D, N], [B, D, N], ...).
inline vf gather(const float* base, int64_t stride, int nl) {
  alignas(64) float tmp[W] = {};
  for (int i = 0; i < nl; ++i) tmp[i] = base[i * stride];
  return vload(tmp, kAll);
}
inline void scatter(float* base, int64_t stride, int nl, vf v) {
  alignas(64) float tmp[W];
  vstore(tmp, v, kAll);
  for (int i = 0; i < nl; ++i) base[i * stride] = tmp[i];
}
inline void scatter_add(float* base, int64_t stride, int nl, vf v) {
  alignas(64) float tmp[W];
  vstore(tmp, v, kAll);
  for (int i = 0; i < nl; ++i) base[i * stride] += tmp[i];
}
// row[n] += sum over lanes of v[n], n < N.
inline void add_lane_sums(float* row, const vf* v, int N) {
  int n = 0;
#if defined(__AVX512F__)
  for (; n + 16 <= N; n += 16) _mm512_storeu_ps(row + n, _mm512_add_ps(_mm512_loadu_ps(row + n), vsum16(v + n)));
#endif
  for (; n < N; ++n) row[n] += vsum(v[n]);
}

// Denormals from decayed states cost ~100x per op on x86; flush them (values < 1e-38).
struct FlushDenormals {
#if defined(VMS_X86)
  unsigned saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Run fn(worker, task) for every task on at::parallel_for's threads, each thread claiming
// the next task from a shared counter: when another process takes a core away from one
// thread (decoders share the machine in the pipeline), the others carry on with the
// remaining tasks instead of waiting for its fixed share. `worker` indexes per-thread
// scratch; reductions are per task, never per worker, so results do not depend on
// which thread ran what.
template <class F>
void run_tasks(int64_t ntasks, int64_t nworkers, const F& fn) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, nworkers, 1, [&](int64_t w0, int64_t w1) {
    FlushDenormals ftz;
    for (int64_t w = w0; w < w1; ++w)
      for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) fn(w, t);
  });
}

int64_t num_workers(int64_t ntasks) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntasks));
}

// Kernels that walk rows (tokens) process a group of neighbouring D-chunks per row, so
// each row gives several contiguous lines per tensor instead of one 64-byte line:
// per-chunk walks over [B, L, D] with L-stride 2D ran memory-bound. Groups are as large
// as kMaxGroupBytes allows while leaving at least two tasks per thread (balance when a
// thread loses its core). Measured on the scan backward (B=1, D=384, L=3137, 1 thread):
// 64 B 24.7 ms, 256 B 20.0, 512 B 18.5, 1536 B 17.5.
#ifndef VMS_GROUP_BYTES
#define VMS_GROUP_BYTES 1536
#endif
constexpr int kGroup = VMS_GROUP_BYTES / (4 * W) > 0 ? VMS_GROUP_BYTES / (4 * W) : 1;

// D-chunks per task for nd chunks per batch row.
int64_t group_size(int64_t nd, int64_t Bsz) {
  const int64_t want_tasks = 2 * std::max<int64_t>(1, at::get_num_threads());
  const int64_t groups_per_row = std::min<int64_t>(nd, (want_tasks + Bsz - 1) / Bsz);
  return std::min<int64_t>(kGroup, (nd + groups_per_row - 1) / groups_per_row);
}

constexpr int kMaxN = 64;  // d_state bound of the compiled kernel (Mamba uses 16)

// ---------------------------------------------------------------- selective scan
struct Scan {
  int64_t Bsz, L, D, N;
  const float *u, *delta, *A, *Bm, *Cm, *Dv, *z, *bias;
  int64_t su_b, su_l, sd_b, sd_l, sz_b, sz_l, sB_b, sB_l, sB_n, sC_b, sC_l, sC_n;
  bool softplus, reverse;
  int64_t K, nck;  // checkpoint interval and count
  int64_t tok(int64_t i) const { return reverse ? L - 1 - i : i; }  // step -> token
};

constexpr int kBlock = 32;  // forward: steps whose Δ, Δu, gate are computed ahead

// Per-task lane constants: A·log2(e) and A, one vector per state index.
template <int NT>
struct LaneConsts {
  vf A2[NT > 0 ? NT : kMaxN];
  vf Ar[NT > 0 ? NT : kMaxN];
  vf Dv, bias;
  LaneConsts(const Scan& s, int64_t d0, int nl) {
    const int N = NT > 0 ? NT : (int)s.N;
    for (int n = 0; n < N; ++n) {
      Ar[n] = gather(s.A + d0 * N + n, N, nl);
      A2[n] = vmul(Ar[n], vset(kLog2e));
    }
    Dv = s.Dv ? gather(s.Dv + d0, 1, nl) : vzero();
    bias = s.bias ? gather(s.bias + d0, 1, nl) : vzero();
  }
};

inline vf vsoftplus_bf16(vf x);
// Δ + delta_bias (the pre-activation) for one step.
inline vf step_pre(const Scan& s, const float* db, int64_t t, vmask m, vf bias) {
  vf raw = vload(db + t * s.sd_l, m);
  return s.bias ? vadd(raw, bias) : raw;
}
// Δ itself. Clamped to +-1e30 so Δ·A stays finite for any |A| < 1e8 and the exp needs no
// clamp per state index (exp(Δ·A) of a huge finite Δ·A is exactly 0 or inf; NaN stays NaN).
template <bool BF16 = false>
inline vf step_delta(const Scan& s, vf pre) {
  vf dt = s.softplus ? (BF16 ? vsoftplus_bf16(pre) : vsoftplus(pre)) : pre;
  return vmin_c(1e30f, vmax_c(-1e30f, dt));
}
// exp(dt·A) from A2 = A·log2(e), the hot path (B·D·L·N of them): the exp2 core is
// <= 2.7 ulp; pre-scaling A by log2(e) in float32 adds |dt·A|·6e-8 relative error, the
// size of the rounding of the float32 product dt·A that the reference takes too.
// No clamp on AVX-512: dt is finite, so w is, and once |w| >= 2^23 it is an integer
// (f = 0) and scalef gives exactly 0 (or inf); NaN stays NaN. (A 32-entry table with a
// degree-2 polynomial measured the same speed; compiled with -ffp-contract=off, as a
// fused dt·A2 - k would be the product's rounding error, ~1e23 for huge w.)
inline vf decay(vf dt, vf A2) {
  vf w = vmul(dt, A2);
#if defined(__AVX512F__)
  vf k = _mm512_roundscale_ps(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf f = vsub(w, k);
  vf p = vfma(vfma(vfma(vfma(vfma(vset(kP5), f, vset(kP4)), f, vset(kP3)), f, vset(kP2)), f,
                   vset(kP1)), f, vset(kP0));
  return _mm512_scalef_ps(p, k);
#else
  return vexp2_core(w);
#endif
}

// The bf16 mode's decay (the fused mixer's bf16 mode, see mixer_fwd): 2^w with a
// degree-3 polynomial, relative error <= 1.3e-4, where that mode's own rounding of xz
// already moves Δ, and so Δ·A, by up to 2^-9 relative. p(0) = 1 and p'(0) = ln 2 exactly,
// so a channel whose per-step decay is close to 1 (long memory, |Δ·A| small, k = 0) keeps
// its decay rate to first order: its error is O(f^2) per step and cannot add up to another
// time constant; the 1e-4 only appears where |f| is large, i.e. where the state forgets
// within a few steps. Every instruction set computes the same polynomial
// (reference.exp_bf16_mode_ref); tests/models/test_precision.py measures the drift.
constexpr float kQ1 = 6.931471806e-01f, kQ2 = 2.421200256e-01f, kQ3 = 5.549127520e-02f;
inline vf poly3_exp2(vf f) { return vfma(vfma(vfma(vset(kQ3), f, vset(kQ2)), f, vset(kQ1)), f, vset(1.f)); }
inline vf vexp2_bf16(vf w) {
#if defined(__AVX512F__)
  vf k = _mm512_roundscale_ps(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_scalef_ps(poly3_exp2(vsub(w, k)), k);
#elif defined(__AVX2__) && defined(__FMA__)
  w = vmin_c(128.f, vmax_c(-127.f, w));
  vf k = _mm256_round_ps(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return vmul(poly3_exp2(vsub(w, k)), _mm256_castsi256_ps(e));
#else
  if (std::isnan(w)) return w;
  w = std::min(200.f, std::max(-200.f, w));
  const float k = std::nearbyint(w);
  return std::ldexp(poly3_exp2(w - k), (int)k);
#endif
}
inline vf decay_bf16(vf dt, vf A2) { return vexp2_bf16(vmul(dt, A2)); }
// The bf16 mode's SiLU and softplus: the same formulas as vsilu/vsoftplus with that
// exponential, and log1p by the series to s^7 (relative error <= 2e-5, s <= 1/3)
// (reference.silu_bf16_mode_ref, softplus_bf16_mode_ref).
inline vf vexp_safe_bf16(vf x) { return vexp2_bf16(vmax_c(-200.f, vmin_c(200.f, vmul(x, vset(kLog2e))))); }
inline vf vsilu_bf16(vf x) {
  return vmul(x, vdiv(vset(1.f), vadd(vset(1.f), vexp_safe_bf16(vsub(vzero(), x)))));
}
inline vf vsoftplus_bf16(vf x) {
  vf e = vexp_safe_bf16(vsub(vzero(), vabs(x)));
  vf s = vdiv(e, vadd(e, vset(2.f)));
  vf s2 = vmul(s, s);
  vf p = vfma(vfma(vset(1.f / 7), s2, vset(1.f / 5)), s2, vset(1.f / 3));
  return softplus_tail(x, s, vfma(p, s2, vset(1.f)));
}

// The forward's time loop for one D-chunk (lanes d0..d0+W) of batch row b, from the state
// in hio (N vectors) and back into it; the lane constants come from the caller, so a caller
// that runs many short pieces of the sequence (the fused mixer) builds them once.
template <int NT, bool BF16 = false>
void scan_fwd_steps(const Scan& s, int64_t b, int64_t d0, const LaneConsts<NT>& c, vf* hio, float* out,
                    int64_t so_b, int64_t so_l, bool accumulate, float* ckpt) {
  const int N = NT > 0 ? NT : (int)s.N;
  const int nl = (int)std::min<int64_t>(W, s.D - d0);
  const vmask m = lane_mask(nl);
  // h must stay in registers: every loop over its index is fully unrolled (a loop
  // that is not makes GCC keep the array in memory and store it every step).
  vf h[NT > 0 ? NT : kMaxN];
#pragma GCC unroll 16
  for (int n = 0; n < N; ++n) h[n] = hio[n];
  const float* ub = s.u + b * s.su_b + d0;
  const float* db = s.delta + b * s.sd_b + d0;
  const float* zb = s.z ? s.z + b * s.sz_b + d0 : nullptr;
  const float* Bb = s.Bm + b * s.sB_b;
  const float* Cb = s.Cm + b * s.sC_b;
  float* ob = out + b * so_b + d0;
  vf dtb[kBlock], dub[kBlock], yb[kBlock], gate[kBlock];
  for (int64_t i0 = 0; i0 < s.L; i0 += kBlock) {
    const int cnt = (int)std::min<int64_t>(kBlock, s.L - i0);
    // Independent per-step work first (softplus, silu): throughput, not latency.
    for (int j = 0; j < cnt; ++j) {
      const int64_t t = s.tok(i0 + j);
      vf dt = step_delta<BF16>(s, step_pre(s, db, t, m, c.bias));
      vf uv = vload(ub + t * s.su_l, m);
      dtb[j] = dt;
      dub[j] = vmul(dt, uv);
      yb[j] = s.Dv ? vmul(c.Dv, uv) : vzero();
      if (zb) gate[j] = vsilu(vload(zb + t * s.sz_l, m));  // (the fused mixer gates the sum instead)
    }
    for (int j = 0; j < cnt; ++j) {
      const int64_t i = i0 + j, t = s.tok(i);
      if (ckpt && i % s.K == 0) {
        float* cp = ckpt + ((b * s.nck + i / s.K) * N) * s.D + d0;
#pragma GCC unroll 16
        for (int n = 0; n < N; ++n) vstore(cp + n * s.D, h[n], m);
      }
      const vf dt = dtb[j], du = dub[j];
      const float* Bt = Bb + t * s.sB_l;
      const float* Ct = Cb + t * s.sC_l;
      // y in two chains (even and odd n): one chain of N dependent FMAs per step was
      // the loop's longest latency path.
      vf y = yb[j], y1 = vzero();
#pragma GCC unroll 16
      for (int n = 0; n < N; ++n) {
        h[n] = vfma(BF16 ? decay_bf16(dt, c.A2[n]) : decay(dt, c.A2[n]), h[n], vmul(du, vset(Bt[n * s.sB_n])));
        if (n % 2 == 0)
          y = vfma(h[n], vset(Ct[n * s.sC_n]), y);
        else
          y1 = vfma(h[n], vset(Ct[n * s.sC_n]), y1);
      }
      y = vadd(y, y1);
      if (zb) y = vmul(y, gate[j]);
      float* o = ob + t * so_l;
      if (accumulate) y = vadd(y, vload(o, m));
      vstore(o, y, m);
    }
  }
#pragma GCC unroll 16
  for (int n = 0; n < N; ++n) hio[n] = h[n];
}

template <int NT>
void scan_fwd_task(const Scan& s, int64_t b, int64_t d0, float* out, int64_t so_b, int64_t so_l,
                   bool accumulate, const float* h0, float* last, float* ckpt) {
  const int N = NT > 0 ? NT : (int)s.N;
  const int nl = (int)std::min<int64_t>(W, s.D - d0);
  LaneConsts<NT> c(s, d0, nl);
  vf h[NT > 0 ? NT : kMaxN];
  for (int n = 0; n < N; ++n) h[n] = h0 ? gather(h0 + (b * s.D + d0) * N + n, N, nl) : vzero();
  scan_fwd_steps<NT>(s, b, d0, c, h, out, so_b, so_l, accumulate, ckpt);
  if (last)
    for (int n = 0; n < N; ++n) scatter(last + (b * s.D + d0) * N + n, N, nl, h[n]);
}

// 64-byte aligned float storage viewed as vectors. `skew` cache lines of offset keep
// buffers that are walked in lockstep from sharing address bits mod 4096: a load whose
// address matches a pending store's low 12 bits waits for it (4K aliasing), which made
// the backward 2x slower when K*N*64 bytes was a multiple of 4096.
struct VecBuf {
  std::vector<float> raw;
  vf* p = nullptr;
  void resize(int64_t nvec, int skew = 0) {
    raw.assign((size_t)(nvec * W + 16 * (skew + 1)), 0.f);
    auto addr = reinterpret_cast<uintptr_t>(raw.data());
    p = reinterpret_cast<vf*>(((addr + 63) & ~uintptr_t(63)) + 64 * skew);
  }
};

// Per-worker scratch (one time chunk of one D-chunk) and reduction buffers.
struct ScanWork {
  VecBuf H, G;                      // per step and state index: h, then a / dLoss/dh; K * N
  VecBuf pre, dt, dtu, dy;          // per step: Δ before/after softplus, Δ·u, dLoss/dy
  VecBuf gcarry, dAsum, dDb;        // per D-chunk of a task: dLoss/dh carried across time
                                    // chunks (N), dA sums (N), D and delta_bias sums (2)
};

// Inputs and outputs of the backward (besides the forward's Scan). dB/dC point at the
// running task's [L, N] partial sums, dA/dD/dbias at its batch row's [D*N] / [D] ones.
struct ScanGrads {
  const float *ckpt, *dout, *dlast;
  int64_t sg_b, sg_l;
  float *du, *ddelta, *dz, *dh0;
  float *dB, *dC, *dA, *dD, *dbias;
};

// The backward of one time chunk k of one D-chunk (lanes d0..d0+W) of batch row b.
// gc: dLoss/dh carried from chunk k+1 (N vectors), dAs: dA partial sums (N), dDb: the
// D and delta_bias partial sums (2). They live in memory between chunks and passes, in
// registers within a pass: keeping them in registers throughout spills everything.
template <int NT>
void scan_bwd_chunk(const Scan& s, const ScanGrads& io, int64_t b, int64_t d0, int64_t k,
                    vf* gc, vf* dAs, vf* dDb, ScanWork& w) {
  const int N = NT > 0 ? NT : (int)s.N;
  const int nl = (int)std::min<int64_t>(W, s.D - d0);
  const vmask m = lane_mask(nl);
  const int64_t L = s.L, D = s.D;
  const float* ckpt = io.ckpt;
  const int64_t sg_l = io.sg_l;
  float *du_o = io.du, *dd_o = io.ddelta, *dz_o = io.dz;
  LaneConsts<NT> c(s, d0, nl);
  vf dDacc = dDb[0], dbacc = dDb[1];
  const float* ub = s.u + b * s.su_b + d0;
  const float* db = s.delta + b * s.sd_b + d0;
  const float* zb = s.z ? s.z + b * s.sz_b + d0 : nullptr;
  const float* gb = io.dout + b * io.sg_b + d0;
  const float* Bb = s.Bm + b * s.sB_b;
  const float* Cb = s.Cm + b * s.sC_b;
  float* dB0 = io.dB;  // this task's [L, N] partial sums
  float* dC0 = io.dC;
  vf *H = w.H.p, *G = w.G.p;
  vf *pre = w.pre.p, *dtb = w.dt.p, *dtu = w.dtu.p, *dyb = w.dy.p;
  {
    const int64_t i0 = k * s.K;
    const int cnt = (int)std::min(s.K, L - i0);
    // A. Recompute the chunk from its checkpoint. H[j] = state after step j (H[-1] is
    // the checkpoint, kept in hprev); G[j] temporarily holds the decay of step j.
    {
      vf h[NT > 0 ? NT : kMaxN];
      const float* cp = ckpt + ((b * s.nck + k) * N) * D + d0;
      for (int n = 0; n < N; ++n) h[n] = vload(cp + n * D, m);
      for (int j = 0; j < cnt; ++j) {
        const int64_t t = s.tok(i0 + j);
        pre[j] = step_pre(s, db, t, m, c.bias);
        dtb[j] = step_delta(s, pre[j]);
        dtu[j] = vmul(dtb[j], vload(ub + t * s.su_l, m));
      }
      for (int j = 0; j < cnt; ++j) {
        const int64_t t = s.tok(i0 + j);
        const float* Bt = Bb + t * s.sB_l;
        const float* Ct = Cb + t * s.sC_l;
        vf *hn = H + j * N, *an = G + j * N;
        vf y = vzero();
#pragma GCC unroll 16
        for (int n = 0; n < N; ++n) {
          const vf a = decay(dtb[j], c.A2[n]);
          h[n] = vfma(a, h[n], vmul(dtu[j], vset(Bt[n * s.sB_n])));
          an[n] = a;
          hn[n] = h[n];
          if (zb) y = vfma(h[n], vset(Ct[n * s.sC_n]), y);
        }
        vf go = vload(gb + t * sg_l, m);
        if (zb) {
          const vf uv = vload(ub + t * s.su_l, m);
          if (s.Dv) y = vfma(c.Dv, uv, y);
          const vf zv = vload(zb + t * s.sz_l, m);
          const vf sg = vsigmoid(zv);
          // d silu/dz = sg * (1 + z * (1 - sg))
          const vf dsilu = vmul(sg, vfma(zv, vsub(vset(1.f), sg), vset(1.f)));
          vstore(dz_o + (b * L + t) * D + d0, vmul(vmul(go, y), dsilu), m);
          go = vmul(go, vmul(zv, sg));
        }
        dyb[j] = go;
      }
    }
    // B. The only true recurrence: g_j = dLoss/dh_j = C_j dy_j + a_{j+1} g_{j+1}.
    // G[j] (the decay a_j) is replaced by g_j.
    {
      vf g[NT > 0 ? NT : kMaxN];
      for (int n = 0; n < N; ++n) g[n] = gc[n];
      for (int j = cnt - 1; j >= 0; --j) {
        const float* Ct = Cb + s.tok(i0 + j) * s.sC_l;
        vf* Gj = G + j * N;
#pragma GCC unroll 16
        for (int n = 0; n < N; ++n) {
          g[n] = vfma(vset(Ct[n * s.sC_n]), dyb[j], g[n]);
          const vf a = Gj[n];
          Gj[n] = g[n];
          g[n] = vmul(a, g[n]);
        }
      }
      for (int n = 0; n < N; ++n) gc[n] = g[n];
    }
    // C. Per-step gradients, independent across steps. a_j h_{j-1} = h_j - Δu B_j,
    // so the decays need not be kept. G[j] and H[j] are overwritten by the dB and dC
    // terms before their lane sums.
    {
      vf dAacc[NT > 0 ? NT : kMaxN];
      for (int n = 0; n < N; ++n) dAacc[n] = dAs[n];
      for (int j = cnt - 1; j >= 0; --j) {
        const int64_t t = s.tok(i0 + j);
        const float* Bt = Bb + t * s.sB_l;
        const vf uv = vload(ub + t * s.su_l, m);
        const vf dt = dtb[j], du = dtu[j], dy = dyb[j];
        vf* Hj = H + j * N;
        vf* Gj = G + j * N;
        vf sgB = vzero(), sdA = vzero();
#pragma GCC unroll 16
        for (int n = 0; n < N; ++n) {
          const vf Gn = Gj[n], Bn = vset(Bt[n * s.sB_n]);
          sgB = vfma(Gn, Bn, sgB);
          const vf t1 = vmul(Gn, vfnma(du, Bn, Hj[n]));  // g · a · h_prev
          sdA = vfma(t1, c.Ar[n], sdA);
          dAacc[n] = vfma(t1, dt, dAacc[n]);
          Gj[n] = vmul(Gn, du);     // dB terms
          Hj[n] = vmul(Hj[n], dy);  // dC terms
        }
        add_lane_sums(dB0 + t * N, Gj, N);
        add_lane_sums(dC0 + t * N, Hj, N);
        vf duv = vfma(dt, sgB, s.Dv ? vmul(dy, c.Dv) : vzero());
        if (s.Dv) dDacc = vfma(dy, uv, dDacc);
        vf ddt = vfma(uv, sgB, sdA);
        if (s.softplus) ddt = vmul(ddt, vsigmoid(pre[j]));
        dbacc = vadd(dbacc, ddt);
        vstore(du_o + (b * L + t) * D + d0, duv, m);
        vstore(dd_o + (b * L + t) * D + d0, ddt, m);
      }
      for (int n = 0; n < N; ++n) dAs[n] = dAacc[n];
    }
  }
  dDb[0] = dDacc;
  dDb[1] = dbacc;
}

// Batch row b, D-chunks c0..c1 (contiguous), all time chunks from the last to the first.
// Walking every D-chunk of the group through one time chunk before the next one keeps
// that chunk's rows of u, delta, z, dout (and the dB/dC rows) in cache.
template <int NT>
void scan_bwd_task(const Scan& s, const ScanGrads& io, int64_t b, int64_t c0, int64_t c1,
                   ScanWork& w) {
  const int N = NT > 0 ? NT : (int)s.N;
  const int64_t D = s.D;
  vf *gcs = w.gcarry.p, *dAs = w.dAsum.p, *dDb = w.dDb.p;
  for (int64_t ci = c0; ci < c1; ++ci) {
    const int64_t d0 = ci * W, o = ci - c0;
    const int nl = (int)std::min<int64_t>(W, D - d0);
    for (int n = 0; n < N; ++n) {
      gcs[o * N + n] = io.dlast ? gather(io.dlast + (b * D + d0) * N + n, N, nl) : vzero();
      dAs[o * N + n] = vzero();
    }
    dDb[2 * o] = dDb[2 * o + 1] = vzero();
  }
  for (int64_t k = s.nck - 1; k >= 0; --k)
    for (int64_t ci = c0; ci < c1; ++ci) {
      const int64_t o = ci - c0;
      scan_bwd_chunk<NT>(s, io, b, ci * W, k, gcs + o * N, dAs + o * N, dDb + 2 * o, w);
    }
  for (int64_t ci = c0; ci < c1; ++ci) {
    const int64_t d0 = ci * W, o = ci - c0;
    const int nl = (int)std::min<int64_t>(W, D - d0);
    if (io.dh0)
      for (int n = 0; n < N; ++n) scatter(io.dh0 + (b * D + d0) * N + n, N, nl, gcs[o * N + n]);
    for (int n = 0; n < N; ++n) scatter(io.dA + d0 * N + n, N, nl, dAs[o * N + n]);
    scatter(io.dD + d0, 1, nl, dDb[2 * o]);
    scatter(io.dbias + d0, 1, nl, dDb[2 * o + 1]);
  }
}

// ---------------------------------------------------------------- argument checks
void check_tokens(const at::Tensor& t, const char* name, int64_t Bsz, int64_t L, int64_t D) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == Bsz && t.size(1) == L && t.size(2) == D, name,
              " must have shape [", Bsz, ", ", L, ", ", D, "], got ", t.sizes());
  TORCH_CHECK(t.stride(2) == 1 || D == 1, name, " must have a contiguous last dim, strides ",
              t.strides());
}
void check_small(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}
const float* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->data_ptr<float>() : nullptr;
}

Scan make_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
               const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& Dv,
               const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
               bool softplus, bool reverse, int64_t K) {
  Scan s{};
  s.Bsz = u.size(0);
  s.L = u.size(1);
  s.D = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == s.D, "A must have shape [D, N] with D=", s.D);
  s.N = A.size(1);
  TORCH_CHECK(s.N >= 1 && s.N <= kMaxN, "d_state N=", s.N, " outside 1..", kMaxN);
  TORCH_CHECK(K >= 1, "checkpoint interval must be >= 1");
  check_tokens(u, "u", s.Bsz, s.L, s.D);
  check_tokens(delta, "delta", s.Bsz, s.L, s.D);
  check_small(A, "A", {s.D, s.N});
  for (auto* bc : {&B, &C}) {
    TORCH_CHECK(bc->device().is_cpu() && bc->scalar_type() == at::kFloat && bc->dim() == 3 &&
                    bc->size(0) == s.Bsz && bc->size(1) == s.L && bc->size(2) == s.N,
                "B and C must be float32 CPU tensors of shape [", s.Bsz, ", ", s.L, ", ", s.N, "]");
  }
  if (Dv) check_small(*Dv, "D", {s.D});
  if (bias) check_small(*bias, "delta_bias", {s.D});
  if (z) check_tokens(*z, "z", s.Bsz, s.L, s.D);
  s.u = u.data_ptr<float>();
  s.delta = delta.data_ptr<float>();
  s.A = A.data_ptr<float>();
  s.Bm = B.data_ptr<float>();
  s.Cm = C.data_ptr<float>();
  s.Dv = opt_ptr(Dv);
  s.z = opt_ptr(z);
  s.bias = opt_ptr(bias);
  s.su_b = u.stride(0), s.su_l = u.stride(1);
  s.sd_b = delta.stride(0), s.sd_l = delta.stride(1);
  if (s.z) s.sz_b = z->stride(0), s.sz_l = z->stride(1);
  s.sB_b = B.stride(0), s.sB_l = B.stride(1), s.sB_n = B.stride(2);
  s.sC_b = C.stride(0), s.sC_l = C.stride(1), s.sC_n = C.stride(2);
  s.softplus = softplus;
  s.reverse = reverse;
  s.K = K;
  s.nck = (s.L + K - 1) / K;
  return s;
}

// parts viewed as [outer, nparts, size] -> [outer, size] summed over nparts in order
// (deterministic, whatever thread computed which part).
at::Tensor sum_parts(const at::Tensor& parts, int64_t outer, int64_t nparts, int64_t size,
                     at::IntArrayRef shape) {
  at::Tensor out = at::zeros(shape, parts.options());
  const float* p = parts.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t a = 0; a < outer; ++a)
    for (int64_t k = 0; k < nparts; ++k) {
      const float* src = p + (a * nparts + k) * size;
      float* dst = o + a * size;
      for (int64_t i = 0; i < size; ++i) dst[i] += src[i];
    }
  return out;
}

// Returns (out, last_state, checkpoints); empty tensors stand for "not requested". When
// `out` is given the result is written (or added, `accumulate`) there and the first
// return value is empty.
std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& Dv, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& h0, bool softplus,
    bool reverse, const std::optional<at::Tensor>& out_opt, bool accumulate,
    bool return_last, int64_t ckpt_every) {
  Scan s = make_scan(u, delta, A, B, C, Dv, z, bias, softplus, reverse,
                     ckpt_every > 0 ? ckpt_every : 64);
  auto opts = u.options().dtype(at::kFloat);
  if (h0) check_small(*h0, "initial_state", {s.Bsz, s.D, s.N});
  at::Tensor ret, out;
  if (out_opt && out_opt->defined()) {
    out = *out_opt;
    check_tokens(out, "out", s.Bsz, s.L, s.D);
  } else {
    TORCH_CHECK(!accumulate, "accumulate needs an out tensor");
    ret = out = at::empty({s.Bsz, s.L, s.D}, opts);
  }
  at::Tensor last = return_last ? at::empty({s.Bsz, s.D, s.N}, opts) : at::empty({0}, opts);
  at::Tensor ckpt = ckpt_every > 0 ? at::empty({s.Bsz, s.nck, s.N, s.D}, opts) : at::empty({0}, opts);
  const int64_t nd = (s.D + W - 1) / W, ntasks = s.Bsz * nd;
  float* op = out.data_ptr<float>();
  const int64_t so_b = out.stride(0), so_l = out.stride(1);
  const float* h0p = opt_ptr(h0);
  float* lp = return_last ? last.data_ptr<float>() : nullptr;
  float* cp = ckpt_every > 0 ? ckpt.data_ptr<float>() : nullptr;
  run_tasks(ntasks, num_workers(ntasks), [&](int64_t, int64_t task) {
    const int64_t b = task / nd, d0 = (task % nd) * W;
    if (s.N == 16)
      scan_fwd_task<16>(s, b, d0, op, so_b, so_l, accumulate, h0p, lp, cp);
    else
      scan_fwd_task<0>(s, b, d0, op, so_b, so_l, accumulate, h0p, lp, cp);
  });
  if (!ret.defined()) ret = at::empty({0}, opts);
  return {ret, last, ckpt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor, at::Tensor>
selective_scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                   const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& Dv,
                   const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& bias,
                   const at::Tensor& ckpt, const at::Tensor& dout,
                   const std::optional<at::Tensor>& dlast, bool softplus, bool reverse,
                   int64_t ckpt_every, bool need_dh0) {
  Scan s = make_scan(u, delta, A, B, C, Dv, z, bias, softplus, reverse, ckpt_every);
  check_small(ckpt, "checkpoints", {s.Bsz, s.nck, s.N, s.D});
  check_tokens(dout, "dout", s.Bsz, s.L, s.D);
  if (dlast) check_small(*dlast, "dlast", {s.Bsz, s.D, s.N});
  auto opts = u.options().dtype(at::kFloat);
  const int64_t Bsz = s.Bsz, L = s.L, D = s.D, N = s.N;
  at::Tensor du = at::empty({Bsz, L, D}, opts), dd = at::empty({Bsz, L, D}, opts);
  at::Tensor dz = z ? at::empty({Bsz, L, D}, opts) : at::empty({0}, opts);
  at::Tensor dh0 = need_dh0 ? at::empty({Bsz, D, N}, opts) : at::empty({0}, opts);
  // Tasks: (batch row, group of neighbouring D-chunks), see group_size.
  const int64_t nd = (D + W - 1) / W, per = group_size(nd, Bsz), groups = (nd + per - 1) / per;
  const int64_t ntasks = Bsz * groups, nw = num_workers(ntasks);
  std::vector<ScanWork> work(nw);
  for (auto& w : work) {
    w.H.resize(s.K * N, 0);
    w.G.resize(s.K * N, 5);
    int skew = 10;
    for (VecBuf* v : {&w.pre, &w.dt, &w.dtu, &w.dy}) v->resize(s.K, skew += 3);
    w.gcarry.resize(per * N);
    w.dAsum.resize(per * N);
    w.dDb.resize(2 * per);
  }
  // Partial sums: dB/dC per task (a task's channels are one group of one batch row),
  // dA/dD/dbias per batch row; summed below in a fixed order.
  at::Tensor dBp = at::zeros({ntasks, L, N}, opts), dCp = at::zeros({ntasks, L, N}, opts);
  at::Tensor dAp = at::empty({Bsz, D, N}, opts), dDp = at::empty({Bsz, D}, opts);
  at::Tensor dbp = at::empty({Bsz, D}, opts);
  ScanGrads io0{ckpt.data_ptr<float>(), dout.data_ptr<float>(), opt_ptr(dlast), dout.stride(0),
                dout.stride(1), du.data_ptr<float>(), dd.data_ptr<float>(),
                z ? dz.data_ptr<float>() : nullptr, need_dh0 ? dh0.data_ptr<float>() : nullptr,
                nullptr, nullptr, nullptr, nullptr, nullptr};
  run_tasks(ntasks, nw, [&](int64_t wi, int64_t task) {
    const int64_t b = task / groups, c0 = (task % groups) * per, c1 = std::min(nd, c0 + per);
    ScanGrads io = io0;
    io.dB = dBp.data_ptr<float>() + task * L * N;
    io.dC = dCp.data_ptr<float>() + task * L * N;
    io.dA = dAp.data_ptr<float>() + b * D * N;
    io.dD = dDp.data_ptr<float>() + b * D;
    io.dbias = dbp.data_ptr<float>() + b * D;
    if (N == 16)
      scan_bwd_task<16>(s, io, b, c0, c1, work[wi]);
    else
      scan_bwd_task<0>(s, io, b, c0, c1, work[wi]);
  });
  at::Tensor dA = sum_parts(dAp, 1, Bsz, D * N, {D, N}), dD = sum_parts(dDp, 1, Bsz, D, {D});
  at::Tensor db = sum_parts(dbp, 1, Bsz, D, {D});
  at::Tensor dB = sum_parts(dBp, Bsz, groups, L * N, {Bsz, L, N});
  at::Tensor dC = sum_parts(dCp, Bsz, groups, L * N, {Bsz, L, N});
  return {du, dd, dA, dB, dC, dD, dz, db, dh0};
}

// ---------------------------------------------------------------- causal depthwise conv
// The sequence as the conv sees it, in processing order (t = L-1 .. 0 when reversed):
// win = [tail_0 .. tail_{K-2}, x_{t(0)}, x_{t(1)}, ...];  out_i = bias + sum_k w_k win_{i+k}.
// The final tail is the last K-1 entries of win.
struct Conv {
  int64_t Bsz, L, D, K;
  const float *x, *w, *bias, *tail;
  int64_t sx_b, sx_l;
  bool silu, reverse;
  bool bf16 = false;  // the fused mixer's bf16 mode: its SiLU (vsilu_bf16)
};
constexpr int kMaxK = 16;

// One batch row, D-chunks c0..c1, token by token (row-major: each row's chunks
// are neighbours in memory). win[g][k] is chunk g's sliding window.
template <int KT>
void conv_fwd_group(const Conv& c, int64_t b, int64_t c0, int64_t c1, float* out,
                    float* final_tail) {
  const int K = KT > 0 ? KT : (int)c.K;
  const int G = (int)(c1 - c0);
  vf wv[kGroup][KT > 0 ? KT : kMaxK], win[kGroup][KT > 0 ? KT : kMaxK], bv[kGroup];
  vmask m[kGroup];
  for (int g = 0; g < G; ++g) {
    const int64_t d0 = (c0 + g) * W;
    const int nl = (int)std::min<int64_t>(W, c.D - d0);
    m[g] = lane_mask(nl);
    for (int k = 0; k < K; ++k) wv[g][k] = gather(c.w + d0 * K + k, K, nl);
    for (int k = 0; k + 1 < K; ++k)
      win[g][k] = c.tail ? gather(c.tail + (b * c.D + d0) * (K - 1) + k, K - 1, nl) : vzero();
    bv[g] = c.bias ? gather(c.bias + d0, 1, nl) : vzero();
  }
  const float* xb = c.x + b * c.sx_b + c0 * W;
  float* ob = out + b * c.L * c.D + c0 * W;
  for (int64_t i = 0; i < c.L; ++i) {
    const int64_t t = c.reverse ? c.L - 1 - i : i;
    for (int g = 0; g < G; ++g) {
      win[g][K - 1] = vload(xb + t * c.sx_l + g * W, m[g]);
      vf acc = bv[g];
      for (int k = 0; k < K; ++k) acc = vfma(wv[g][k], win[g][k], acc);
      if (c.silu) acc = c.bf16 ? vsilu_bf16(acc) : vsilu(acc);
      vstore(ob + t * c.D + g * W, acc, m[g]);
      for (int k = 0; k + 1 < K; ++k) win[g][k] = win[g][k + 1];
    }
  }
  if (final_tail)
    for (int g = 0; g < G; ++g) {
      const int64_t d0 = (c0 + g) * W;
      const int nl = (int)std::min<int64_t>(W, c.D - d0);
      for (int k = 0; k + 1 < K; ++k)
        scatter(final_tail + (b * c.D + d0) * (K - 1) + k, K - 1, nl, win[g][k]);
    }
}

// The backward of conv_fwd_group. Window index j runs over the K-1 tail entries and then
// the tokens in processing order; dwin_j = sum_k w_k dact_{j-k} (+ the final tail's
// gradient for the last K-1 entries). dact[g][K-1] is the newest output gradient.
// dw/dbias: this batch row's partial sums (written, not added).
template <int KT>
void conv_bwd_group(const Conv& c, int64_t b, int64_t c0, int64_t c1, const float* dout,
                    int64_t sg_b, int64_t sg_l, const float* dfinal, float* dx, float* dtail,
                    float* dw_part, float* db_part) {
  const int K = KT > 0 ? KT : (int)c.K;
  const int G = (int)(c1 - c0);
  const int64_t L = c.L, D = c.D;
  vf wv[kGroup][KT > 0 ? KT : kMaxK], win[kGroup][KT > 0 ? KT : kMaxK];
  vf dact[kGroup][KT > 0 ? KT : kMaxK], dw[kGroup][KT > 0 ? KT : kMaxK], bv[kGroup], dbacc[kGroup];
  vmask m[kGroup];
  int nls[kGroup];
  for (int g = 0; g < G; ++g) {
    const int64_t d0 = (c0 + g) * W;
    const int nl = nls[g] = (int)std::min<int64_t>(W, D - d0);
    m[g] = lane_mask(nl);
    for (int k = 0; k < K; ++k) {
      wv[g][k] = gather(c.w + d0 * K + k, K, nl);
      dact[g][k] = vzero();
      dw[g][k] = vzero();
    }
    for (int k = 0; k + 1 < K; ++k)
      win[g][k] = c.tail ? gather(c.tail + (b * D + d0) * (K - 1) + k, K - 1, nl) : vzero();
    bv[g] = c.bias ? gather(c.bias + d0, 1, nl) : vzero();
    dbacc[g] = vzero();
  }
  const float* xb = c.x + b * c.sx_b + c0 * W;
  const float* gb = dout + b * sg_b + c0 * W;
  for (int64_t j = 0; j < L + K - 1; ++j) {
    const int64_t t = j < L ? (c.reverse ? L - 1 - j : j) : 0;
    const int64_t i = j - (K - 1);  // processing step whose input is window entry j
    const int64_t ti = i >= 0 ? (c.reverse ? L - 1 - i : i) : 0;
    for (int g = 0; g < G; ++g) {
      const int64_t d0 = (c0 + g) * W;
      vf a = vzero();
      if (j < L) {
        win[g][K - 1] = vload(xb + t * c.sx_l + g * W, m[g]);
        a = vload(gb + t * sg_l + g * W, m[g]);
        if (c.silu) {
          vf pre = bv[g];
          for (int k = 0; k < K; ++k) pre = vfma(wv[g][k], win[g][k], pre);
          const vf sg = vsigmoid(pre);
          a = vmul(a, vmul(sg, vfma(pre, vsub(vset(1.f), sg), vset(1.f))));
        }
        for (int k = 0; k < K; ++k) dw[g][k] = vfma(a, win[g][k], dw[g][k]);
        dbacc[g] = vadd(dbacc[g], a);
        for (int k = 0; k + 1 < K; ++k) win[g][k] = win[g][k + 1];
      }
      for (int k = 0; k + 1 < K; ++k) dact[g][k] = dact[g][k + 1];
      dact[g][K - 1] = a;
      vf dwin = vzero();
      for (int k = 0; k < K; ++k) dwin = vfma(wv[g][k], dact[g][K - 1 - k], dwin);
      if (j >= L && dfinal)
        dwin = vadd(dwin, gather(dfinal + (b * D + d0) * (K - 1) + (j - L), K - 1, nls[g]));
      if (i < 0) {
        if (dtail) scatter(dtail + (b * D + d0) * (K - 1) + j, K - 1, nls[g], dwin);
      } else {
        vstore(dx + (b * L + ti) * D + d0, dwin, m[g]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    const int64_t d0 = (c0 + g) * W;
    for (int k = 0; k < K; ++k) scatter(dw_part + d0 * K + k, K, nls[g], dw[g][k]);
    scatter(db_part + d0, 1, nls[g], dbacc[g]);
  }
}

Conv make_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               const std::optional<at::Tensor>& tail, bool silu, bool reverse) {
  Conv c{};
  TORCH_CHECK(x.dim() == 3, "x must be [B, L, D], got ", x.sizes());
  c.Bsz = x.size(0), c.L = x.size(1), c.D = x.size(2);
  check_tokens(x, "x", c.Bsz, c.L, c.D);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == c.D, "weight must be [D, K] with D=", c.D);
  c.K = weight.size(1);
  TORCH_CHECK(c.K >= 2 && c.K <= kMaxK, "conv width K=", c.K, " outside 2..", kMaxK);
  check_small(weight, "weight", {c.D, c.K});
  if (bias) check_small(*bias, "bias", {c.D});
  if (tail) check_small(*tail, "initial_tail", {c.Bsz, c.D, c.K - 1});
  c.x = x.data_ptr<float>();
  c.w = weight.data_ptr<float>();
  c.bias = opt_ptr(bias);
  c.tail = opt_ptr(tail);
  c.sx_b = x.stride(0), c.sx_l = x.stride(1);
  c.silu = silu;
  c.reverse = reverse;
  return c;
}

std::tuple<at::Tensor, at::Tensor> causal_conv1d_fwd(const at::Tensor& x, const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& tail,
                                                     bool silu, bool reverse, bool return_tail) {
  Conv c = make_conv(x, weight, bias, tail, silu, reverse);
  auto opts = x.options();
  at::Tensor out = at::empty({c.Bsz, c.L, c.D}, opts);
  at::Tensor ft = return_tail ? at::empty({c.Bsz, c.D, c.K - 1}, opts) : at::empty({0}, opts);
  const int64_t nd = (c.D + W - 1) / W, per = group_size(nd, c.Bsz);
  const int64_t groups = (nd + per - 1) / per, ntasks = c.Bsz * groups;
  float* op = out.data_ptr<float>();
  float* fp = return_tail ? ft.data_ptr<float>() : nullptr;
  run_tasks(ntasks, num_workers(ntasks), [&](int64_t, int64_t task) {
    const int64_t b = task / groups, c0 = (task % groups) * per, c1 = std::min(nd, c0 + per);
    if (c.K == 4)
      conv_fwd_group<4>(c, b, c0, c1, op, fp);
    else
      conv_fwd_group<0>(c, b, c0, c1, op, fp);
  });
  return {out, ft};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_bwd(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& tail, const at::Tensor& dout,
    const std::optional<at::Tensor>& dfinal, bool silu, bool reverse, bool need_dtail) {
  Conv c = make_conv(x, weight, bias, tail, silu, reverse);
  check_tokens(dout, "dout", c.Bsz, c.L, c.D);
  if (dfinal) check_small(*dfinal, "dfinal_tail", {c.Bsz, c.D, c.K - 1});
  auto opts = x.options();
  at::Tensor dx = at::empty({c.Bsz, c.L, c.D}, opts);
  at::Tensor dtail = need_dtail ? at::empty({c.Bsz, c.D, c.K - 1}, opts) : at::empty({0}, opts);
  const int64_t nd = (c.D + W - 1) / W, per = group_size(nd, c.Bsz);
  const int64_t groups = (nd + per - 1) / per, ntasks = c.Bsz * groups;
  at::Tensor dwp = at::empty({c.Bsz, c.D, c.K}, opts), dbp = at::empty({c.Bsz, c.D}, opts);
  const float* gp = dout.data_ptr<float>();
  const float* dfp = opt_ptr(dfinal);
  float* dxp = dx.data_ptr<float>();
  float* dtp = need_dtail ? dtail.data_ptr<float>() : nullptr;
  const int64_t sg_b = dout.stride(0), sg_l = dout.stride(1);
  run_tasks(ntasks, num_workers(ntasks), [&](int64_t, int64_t task) {
    const int64_t b = task / groups, c0 = (task % groups) * per, c1 = std::min(nd, c0 + per);
    float* dwb = dwp.data_ptr<float>() + b * c.D * c.K;
    float* dbb = dbp.data_ptr<float>() + b * c.D;
    if (c.K == 4)
      conv_bwd_group<4>(c, b, c0, c1, gp, sg_b, sg_l, dfp, dxp, dtp, dwb, dbb);
    else
      conv_bwd_group<0>(c, b, c0, c1, gp, sg_b, sg_l, dfp, dxp, dtp, dwb, dbb);
  });
  at::Tensor dw = sum_parts(dwp, 1, c.Bsz, c.D * c.K, {c.D, c.K});
  at::Tensor db = sum_parts(dbp, 1, c.Bsz, c.D, {c.D});
  return {dx, dw, db, dtail};
}

// ---------------------------------------------------------------- fused bidirectional mixer
// Inference only: one Mamba layer's directions from in_proj's output xz [B, L, 2D] (x, z
// halves; float32 or bfloat16) to the sum of their gated scan outputs [B, L, D]. The
// unfused ops pass every intermediate ([B, L, D] conv output, x_proj output, Δ, each
// direction's y: ~40 MB per direction at Ti-16) through memory; here a task (batch row,
// direction) walks the sequence in chunks of `Tc` tokens whose intermediates stay in L2:
// conv+SiLU -> x_proj -> dt_proj (at::mm on the chunk) -> scan with D and the z gate ->
// its y. Conv tail and scan state carry from chunk to chunk in small per-task buffers.
// The two directions of a batch row run on different threads; whichever finishes a chunk
// last sums both directions' rows of it (y_f + y_b, the order the unfused model adds in;
// a sum of two floats does not depend on which thread computes it) into the output.

struct MixerDirPtrs {
  const float *conv_w, *conv_b, *xw, *dtw, *dt_bias, *A, *Dv;
};

// x_proj on a chunk: out[j, e] (row stride E) = sum_d xc[j, d] WT[d, e], WT the weight
// transposed and zero-padded to Ep columns (a multiple of 3 vectors). Eight tokens times
// three vectors of outputs per pass: 24 accumulators hide the FMA latency and each weight
// vector loaded serves eight tokens. The chunk sizes are far below where a BLAS call pays
// for itself (and a BLAS call inside a task would start its own threads when the caller runs
// single-threaded). xc has >= 7 spare rows.
constexpr int kXprojTokens = 8;
__attribute__((noinline)) void xproj_chunk(const float* xc, int64_t cnt, int64_t D, const float* WT,
                                           int64_t Ep, int64_t E, float* out) {
  constexpr int TJ = kXprojTokens;
  for (int64_t j0 = 0; j0 < cnt; j0 += TJ) {
    const int tj = (int)std::min<int64_t>(TJ, cnt - j0);
    for (int64_t e0 = 0; e0 < Ep; e0 += 3 * W) {
      vf a0[TJ], a1[TJ], a2[TJ];
#pragma GCC unroll 8
      for (int t = 0; t < TJ; ++t) a0[t] = a1[t] = a2[t] = vzero();
      const float* x = xc + j0 * D;
      for (int64_t d = 0; d < D; ++d) {
        const float* wr = WT + d * Ep + e0;
        const vf w0 = vload(wr, kAll), w1 = vload(wr + W, kAll), w2 = vload(wr + 2 * W, kAll);
#pragma GCC unroll 8
        for (int t = 0; t < TJ; ++t) {
          const vf xv = vset(x[t * D + d]);
          a0[t] = vfma(xv, w0, a0[t]);
          a1[t] = vfma(xv, w1, a1[t]);
          a2[t] = vfma(xv, w2, a2[t]);
        }
      }
      // (No pointers into the accumulator arrays: GCC then keeps them in memory.)
      const vmask m0 = lane_mask((int)std::clamp<int64_t>(E - e0, 0, W));
      const vmask m1 = lane_mask((int)std::clamp<int64_t>(E - e0 - W, 0, W));
      const vmask m2 = lane_mask((int)std::clamp<int64_t>(E - e0 - 2 * W, 0, W));
#pragma GCC unroll 8
      for (int t = 0; t < TJ; ++t) {
        if (t < tj) {
          float* o = out + (j0 + t) * E + e0;
          vstore(o, a0[t], m0);
          vstore(o + W, a1[t], m1);
          vstore(o + 2 * W, a2[t], m2);
        }
      }
    }
  }
}

// dt_proj on a chunk: dt[j, d] = sum_r xdbl[j, r] WdT[r, d] (r < R, xdbl row stride E),
// eight output vectors per pass.
__attribute__((noinline)) void dtproj_chunk(const float* xdbl, int64_t cnt, int64_t E, int64_t R, const float* WdT, int64_t D,
                  float* dt) {
  constexpr int TV = 8;
  const int64_t nd = (D + W - 1) / W;
  for (int64_t j = 0; j < cnt; ++j) {
    const float* xr = xdbl + j * E;
    for (int64_t v0 = 0; v0 < nd; v0 += TV) {
      const int tv = (int)std::min<int64_t>(TV, nd - v0);
      vf acc[TV];
      vmask m[TV];
#pragma GCC unroll 8
      for (int k = 0; k < TV; ++k) {
        acc[k] = vzero();
        m[k] = lane_mask(k < tv ? (int)std::min<int64_t>(W, D - (v0 + k) * W) : 0);
      }
      for (int64_t r = 0; r < R; ++r) {
        const vf xv = vset(xr[r]);
        const float* wr = WdT + r * D + v0 * W;
#pragma GCC unroll 8
        for (int k = 0; k < TV; ++k) acc[k] = vfma(xv, vload(wr + k * W, m[k]), acc[k]);
      }
#pragma GCC unroll 8
      for (int k = 0; k < TV; ++k) vstore(dt + j * D + (v0 + k) * W, acc[k], m[k]);  // m[k] = 0 past tv
    }
  }
}

struct Mixer {
  int64_t Bsz, L, D, N, R, K, Tc, nchunks, ndir;
  const void* xz;
  bool xz_bf16, bf16;  // bf16: the bf16 mode (bfloat16 y, bf16 projections, decay_bf16)
  int64_t sxz_b, sxz_l;
  std::vector<MixerDirPtrs> dirs;
  int64_t Ep;                 // x_proj's output columns padded to a multiple of 3 vectors
  std::vector<float> xwT[2], dtwT[2];  // x_proj weight as [D, Ep], dt_proj weight as [R, D]
  // The bf16 mode (bfloat16 y; see mixer_fwd): the same weights rounded to bfloat16, as
  // tile pairs (amx: xwTp [Kx/2][Ep], dtwTp [Kr/2][Dq]) or, without AMX, in xwT/dtwT.
  bool amx;
  int64_t Kx, Kr, Dq;  // with amx: D and R padded to 32 (summed), D padded to 48 (dt's columns)
  int64_t xs, ds;      // row strides of a chunk's x_proj output and of its dt
  std::vector<uint32_t> xwTp[2], dtwTp[2];
  const float *tail0, *h0;
  float *tail_out, *h_out, *scratch;
  void* out;
  std::atomic<int>* done;  // per (batch row, chunk): directions finished
};

inline float bf16_to_f32(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even, NaN -> quiet NaN: c10::BFloat16's conversion, bit for bit.
inline uint16_t f32_to_bf16(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Rows of bfloat16 widened to float32 (exact), and float32 (optionally the sum of two rows)
// rounded to bfloat16 as f32_to_bf16 does; 16 lanes at a time where AVX-512 is there.
void bf16_to_f32_n(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
#endif
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}
void f32_to_bf16_n(const float* a, const float* b, uint16_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512i bias = _mm512_set1_epi32(0x7FFF), one = _mm512_set1_epi32(1);
  for (; i + 16 <= n; i += 16) {
    __m512 f = _mm512_loadu_ps(a + i);
    if (b) f = _mm512_add_ps(f, _mm512_loadu_ps(b + i));
    __m512i u = _mm512_castps_si512(f);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
    r = _mm512_srli_epi32(r, 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
  }
#endif
  for (; i < n; ++i) dst[i] = f32_to_bf16(b ? a[i] + b[i] : a[i]);
}

// ---- the bf16 mode's projections
// x_proj and dt_proj in the bf16 mode: operands rounded to bfloat16 (to nearest even, as
// torch's .bfloat16()), products and sums in float32, a float32 result: what the mode's
// other matmuls (in_proj, out_proj through oneDNN) compute. With AMX (Sapphire Rapids and
// later) they run on the tile unit, 16 tokens x 16 outputs x 32 summed terms per
// instruction: x_proj and dt_proj were 16 % of the fused layer in the bf16 mode, and the
// AVX512-BF16 dot product (vdpbf16ps) measured no faster than the float32 FMA loops here.
// Elsewhere, or where the OS refuses the tile state, the rounded operands (held as
// float32, exactly) go through the float32 loops: the same products, summed in another order.
// Operands for the tiles are bf16 rows padded with zeros to multiples of 32 along the
// summed index, and weights as pairs of neighbours along it (the tiles' B layout).
constexpr int kAmxK = 32;  // bf16 terms per tile row (64 bytes)
constexpr int kAmxM = 16;  // rows per tile
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
// The kernel lends the tile state (8 KB per thread) only to a process that asks for it.
bool amx_permitted() {
  static const bool ok = [] {
    constexpr long kReqPerm = 0x1023, kXtileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kReqPerm, kXtileData) == 0;
  }();
  return ok;
}
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) colsb[i] = 64, rows[i] = kAmxM;  // every tile 16 x 64 bytes
  }
};
// Loads the configuration for the scope and releases the tiles after it (a thread that
// keeps tile state makes every later context switch of it save 8 KB more).
struct TileScope {
  TileScope() {
    static const TileConfig cfg;
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
};
// out[j, e] (row stride so) = sum_k a[j, k] b[k, e] for j < Mp (a multiple of 16), e < Ep
// (a multiple of 48), k < Kp (a multiple of 32): a bf16 rows of stride sa elements, b as
// pairs [Kp/2][Ep]. Three 16x16 outputs per pass over k.
void amx_matmul_bf16(const uint16_t* a, int64_t sa, int64_t Mp, int64_t Kp, const uint32_t* bp, int64_t Ep,
                     float* out, int64_t so) {
  for (int64_t j0 = 0; j0 < Mp; j0 += kAmxM) {
    for (int64_t e0 = 0; e0 < Ep; e0 += 48) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      for (int64_t k0 = 0; k0 < Kp; k0 += kAmxK) {
        _tile_loadd(3, a + j0 * sa + k0, sa * 2);
        const uint32_t* br = bp + (k0 / 2) * Ep + e0;
        _tile_loadd(4, br, Ep * 4);
        _tile_loadd(5, br + 16, Ep * 4);
        _tile_loadd(6, br + 32, Ep * 4);
        _tile_dpbf16ps(0, 3, 4);
        _tile_dpbf16ps(1, 3, 5);
        _tile_dpbf16ps(2, 3, 6);
      }
      float* o = out + j0 * so + e0;
      _tile_stored(0, o, so * 4);
      _tile_stored(1, o + 16, so * 4);
      _tile_stored(2, o + 32, so * 4);
    }
  }
}
#else
bool amx_permitted() { return false; }
struct TileScope {};
void amx_matmul_bf16(const uint16_t*, int64_t, int64_t, int64_t, const uint32_t*, int64_t, float*, int64_t) {}
#endif
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Pairs of bfloat16 along a summed index: dst[i][c] = (bf16(src(2i, c)), bf16(src(2i+1, c)))
// as one 32-bit word, low half first (the tiles' B layout), zeros where 2i+1 or c run past
// `rows` or `cols`; `pair_rows` x `dst_cols` words. src(k, c) = src[k * sk + c * sc].
inline float bf16_round(float f) { return bf16_to_f32(f32_to_bf16(f)); }
std::vector<uint32_t> pack_pairs(const float* src, int64_t rows, int64_t cols, int64_t sk, int64_t sc,
                                 int64_t pair_rows, int64_t dst_cols) {
  std::vector<uint32_t> out(pair_rows * dst_cols, 0u);
  for (int64_t i = 0; 2 * i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t lo = f32_to_bf16(src[2 * i * sk + c * sc]);
      const uint32_t hi = 2 * i + 1 < rows ? f32_to_bf16(src[(2 * i + 1) * sk + c * sc]) : 0u;
      out[i * dst_cols + c] = lo | (hi << 16);
    }
  return out;
}

// One chunk's y rows of every direction summed and gated into the output:
// out = (y_f + y_b) * silu(z). The gate is the same for both directions, so it is applied
// once to the sum instead of to each direction's rows (half the SiLUs; the unfused model's
// y_f*g + y_b*g, reassociated).
__attribute__((noinline)) void mixer_sum_rows(const Mixer& mx, int64_t b, int64_t t0, int64_t cnt) {
  const int64_t D = mx.D, plane = mx.Bsz * mx.L * D;
  thread_local std::vector<float> zrow, orow;
  zrow.resize(D);
  orow.resize(D);
  for (int64_t j = 0; j < cnt; ++j) {
    const int64_t t = t0 + j;
    const float* y0 = mx.scratch + (b * mx.L + t) * D;
    const float* y1 = mx.ndir == 2 ? y0 + plane : nullptr;
    const float* z;
    if (mx.xz_bf16) {
      bf16_to_f32_n(static_cast<const uint16_t*>(mx.xz) + b * mx.sxz_b + t * mx.sxz_l + D, zrow.data(), D);
      z = zrow.data();
    } else {
      z = static_cast<const float*>(mx.xz) + b * mx.sxz_b + t * mx.sxz_l + D;
    }
    float* o = mx.bf16 ? orow.data() : static_cast<float*>(mx.out) + (b * mx.L + t) * D;
    for (int64_t i = 0; i < D; i += W) {
      const vmask m = lane_mask((int)std::min<int64_t>(W, D - i));
      vf y = vload(y0 + i, m);
      if (y1) y = vadd(y, vload(y1 + i, m));
      const vf zv = vload(z + i, m);
      vstore(o + i, vmul(y, mx.bf16 ? vsilu_bf16(zv) : vsilu(zv)), m);
    }
    if (mx.bf16) f32_to_bf16_n(o, nullptr, static_cast<uint16_t*>(mx.out) + (b * mx.L + t) * D, D);
  }
}

struct MixerWork {
  std::vector<float> xin, xc, xdbl, dt, tail;
  std::vector<float> xcr, xdblr;    // the bf16 mode without AMX: rounded operands
  std::vector<uint16_t> xcb, xdblb;  // with AMX: operands as bfloat16 rows (padded)
};

// x_proj and dt_proj of one chunk in the bf16 mode (see "the bf16 mode's projections").
void mixer_projections_bf16(const Mixer& mx, int dir, int64_t cnt, MixerWork& w) {
  const int64_t D = mx.D, R = mx.R, E = R + 2 * mx.N;
  if (mx.amx) {
    const int64_t Mp = round_up(cnt, kAmxM);
    for (int64_t j = 0; j < cnt; ++j) f32_to_bf16_n(w.xc.data() + j * D, nullptr, w.xcb.data() + j * mx.Kx, D);
    TileScope tiles;
    amx_matmul_bf16(w.xcb.data(), mx.Kx, Mp, mx.Kx, mx.xwTp[dir].data(), mx.Ep, w.xdbl.data(), mx.xs);
    for (int64_t j = 0; j < cnt; ++j) f32_to_bf16_n(w.xdbl.data() + j * mx.xs, nullptr, w.xdblb.data() + j * mx.Kr, R);
    amx_matmul_bf16(w.xdblb.data(), mx.Kr, Mp, mx.Kr, mx.dtwTp[dir].data(), mx.Dq, w.dt.data(), mx.ds);
  } else {
    for (int64_t i = 0; i < cnt * D; ++i) w.xcr[i] = bf16_round(w.xc[i]);
    xproj_chunk(w.xcr.data(), cnt, D, mx.xwT[dir].data(), mx.Ep, E, w.xdbl.data());
    for (int64_t j = 0; j < cnt; ++j)
      for (int64_t r = 0; r < R; ++r) w.xdblr[j * E + r] = bf16_round(w.xdbl[j * E + r]);
    dtproj_chunk(w.xdblr.data(), cnt, E, R, mx.dtwT[dir].data(), D, w.dt.data());
  }
}

// Chunk c of batch row b in direction dir: conv, projections, scan into scratch. consts:
// the direction's lane constants per D-chunk; hv: its scan state, N vectors per D-chunk.
template <int NT>
void mixer_chunk(const Mixer& mx, int64_t b, int dir, int64_t c, MixerWork& w,
                 const std::vector<LaneConsts<NT>>& consts, vf* hv) {
  const int64_t D = mx.D, N = mx.N, R = mx.R, E = R + 2 * N;
  const int64_t t0 = c * mx.Tc, cnt = std::min(mx.Tc, mx.L - t0);
  const bool rev = dir == 1;
  const MixerDirPtrs& p = mx.dirs[dir];
  const float* xsrc;
  int64_t sx_l;
  if (mx.xz_bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(mx.xz) + b * mx.sxz_b + t0 * mx.sxz_l;
    for (int64_t j = 0; j < cnt; ++j) bf16_to_f32_n(src + j * mx.sxz_l, w.xin.data() + j * D, D);  // x only
    xsrc = w.xin.data();
    sx_l = D;
  } else {
    xsrc = static_cast<const float*>(mx.xz) + b * mx.sxz_b + t0 * mx.sxz_l;
    sx_l = mx.sxz_l;
  }
  float* y = mx.scratch + ((dir * mx.Bsz + b) * mx.L + t0) * D;
  // The scan walks each D-chunk down the chunk's rows of y (stride D floats): one 64-byte
  // line per row and page, which the hardware prefetchers do not follow. Fetch those rows
  // into L2 now; the conv and the projections run meanwhile.
#if defined(VMS_X86)
  for (int64_t j = 0; j < cnt; ++j) {
    char* yr = reinterpret_cast<char*>(y + j * D);
    for (int64_t o = 0; o < D * 4; o += 64) _mm_prefetch(yr + o, _MM_HINT_T1);
  }
#endif
  Conv cv{1, cnt, D, mx.K, xsrc, p.conv_w, p.conv_b, w.tail.data(), 0, sx_l, true, rev, mx.bf16};
  const int64_t nd = (D + W - 1) / W;
  for (int64_t c0 = 0; c0 < nd; c0 += kGroup) {
    const int64_t c1 = std::min(nd, c0 + kGroup);
    if (mx.K == 4)
      conv_fwd_group<4>(cv, 0, c0, c1, w.xc.data(), w.tail.data());
    else
      conv_fwd_group<0>(cv, 0, c0, c1, w.xc.data(), w.tail.data());
  }
  if (!mx.bf16) {
    xproj_chunk(w.xc.data(), cnt, D, mx.xwT[dir].data(), mx.Ep, E, w.xdbl.data());
    dtproj_chunk(w.xdbl.data(), cnt, E, R, mx.dtwT[dir].data(), D, w.dt.data());
  } else {
    mixer_projections_bf16(mx, dir, cnt, w);
  }
  Scan s{};
  s.Bsz = 1, s.L = cnt, s.D = D, s.N = N;
  s.u = w.xc.data(), s.su_l = D;
  s.delta = w.dt.data(), s.sd_l = mx.ds;
  s.A = p.A, s.Dv = p.Dv, s.bias = p.dt_bias;
  s.Bm = w.xdbl.data() + R, s.sB_l = mx.xs, s.sB_n = 1;
  s.Cm = w.xdbl.data() + R + N, s.sC_l = mx.xs, s.sC_n = 1;
  s.z = nullptr;  // the gate is applied to the directions' sum (mixer_sum_rows)
  s.softplus = true, s.reverse = rev, s.K = 1, s.nck = 0;
  for (int64_t ci = 0; ci < nd; ++ci) {
    if (mx.bf16)
      scan_fwd_steps<NT, true>(s, 0, ci * W, consts[ci], hv + ci * N, y, 0, D, false, nullptr);
    else
      scan_fwd_steps<NT>(s, 0, ci * W, consts[ci], hv + ci * N, y, 0, D, false, nullptr);
  }
  if (mx.done[b * mx.nchunks + c].fetch_add(1, std::memory_order_acq_rel) == mx.ndir - 1)
    mixer_sum_rows(mx, b, t0, cnt);
}

template <int NT>
void mixer_task_n(const Mixer& mx, int64_t b, int dir, MixerWork& w) {
  const int64_t D = mx.D, N = mx.N, K = mx.K, nd = (D + W - 1) / W;
  const MixerDirPtrs& p = mx.dirs[dir];
  w.tail.assign(D * (K - 1), 0.f);
  if (dir == 0 && mx.tail0) std::memcpy(w.tail.data(), mx.tail0 + b * D * (K - 1), D * (K - 1) * 4);
  Scan s{};
  s.D = D, s.N = N, s.A = p.A, s.Dv = p.Dv, s.bias = p.dt_bias;
  std::vector<LaneConsts<NT>> consts;
  consts.reserve(nd);
  VecBuf hv;
  hv.resize(nd * N);
  const float* h0 = dir == 0 ? mx.h0 : nullptr;
  for (int64_t ci = 0; ci < nd; ++ci) {
    const int64_t d0 = ci * W;
    const int nl = (int)std::min<int64_t>(W, D - d0);
    consts.emplace_back(s, d0, nl);
    for (int64_t n = 0; n < N; ++n) hv.p[ci * N + n] = h0 ? gather(h0 + (b * D + d0) * N + n, N, nl) : vzero();
  }
  for (int64_t i = 0; i < mx.nchunks; ++i)
    mixer_chunk<NT>(mx, b, dir, dir == 1 ? mx.nchunks - 1 - i : i, w, consts, hv.p);
  if (dir == 0 && mx.tail_out) std::memcpy(mx.tail_out + b * D * (K - 1), w.tail.data(), D * (K - 1) * 4);
  if (dir == 0 && mx.h_out)
    for (int64_t ci = 0; ci < nd; ++ci)
      for (int64_t n = 0; n < N; ++n)
        scatter(mx.h_out + (b * D + ci * W) * N + n, N, (int)std::min<int64_t>(W, D - ci * W), hv.p[ci * N + n]);
}

void mixer_task(const Mixer& mx, int64_t b, int dir, MixerWork& w) {
  if (mx.N == 16)
    mixer_task_n<16>(mx, b, dir, w);
  else
    mixer_task_n<0>(mx, b, dir, w);
}

// params: per direction (conv weight [D, K], conv bias [D], x_proj weight [R+2N, D],
// dt_proj weight [D, R], dt bias [D], A [D, N], D [D]); one direction or two (the second
// scans from the last token, from a zero state). Returns (out, final conv tail, last state)
// of the first direction; empty tensors when not requested.
std::tuple<at::Tensor, at::Tensor, at::Tensor> mixer_fwd(
    const at::Tensor& xz, at::TensorList params, const std::optional<at::Tensor>& tail0,
    const std::optional<at::Tensor>& h0, bool return_state, int64_t chunk, bool bf16) {
  TORCH_CHECK(xz.dim() == 3 && xz.size(2) % 2 == 0 && xz.device().is_cpu() && xz.stride(2) == 1 &&
                  (xz.scalar_type() == at::kFloat || xz.scalar_type() == at::kBFloat16),
              "xz must be a float32 or bfloat16 CPU tensor [B, L, 2D] with a contiguous last dim, got ",
              xz.scalar_type(), " ", xz.sizes());
  TORCH_CHECK(params.size() == 7 || params.size() == 14, "params: 7 tensors per direction, got ",
              params.size());
  TORCH_CHECK(chunk >= 1, "chunk must be >= 1");
  Mixer mx{};
  mx.Bsz = xz.size(0), mx.L = xz.size(1), mx.D = xz.size(2) / 2;
  const int64_t D = mx.D;
  TORCH_CHECK(mx.L >= 1, "xz has no tokens");
  mx.ndir = (int64_t)params.size() / 7;
  mx.K = params[0].size(-1);
  mx.N = params[5].size(-1);
  mx.R = params[3].size(-1);
  const int64_t K = mx.K, N = mx.N, R = mx.R;
  TORCH_CHECK(K >= 2 && K <= kMaxK && N >= 1 && N <= kMaxN && R >= 1, "mixer: K, N or R out of range");
  mx.Ep = (R + 2 * N + 3 * W - 1) / (3 * W) * (3 * W);
  mx.amx = bf16 && amx_permitted();
  mx.Kx = round_up(D, kAmxK), mx.Kr = round_up(R, kAmxK), mx.Dq = round_up(D, 48);
  mx.xs = mx.amx ? mx.Ep : R + 2 * N;
  mx.ds = mx.amx ? mx.Dq : D;
  for (int64_t d = 0; d < mx.ndir; ++d) {
    const at::Tensor* q = &params[d * 7];
    check_small(q[0], "conv weight", {D, K});
    check_small(q[1], "conv bias", {D});
    check_small(q[2], "x_proj weight", {R + 2 * N, D});
    check_small(q[3], "dt_proj weight", {D, R});
    check_small(q[4], "dt bias", {D});
    check_small(q[5], "A", {D, N});
    check_small(q[6], "D", {D});
    mx.dirs.push_back({q[0].data_ptr<float>(), q[1].data_ptr<float>(), q[2].data_ptr<float>(),
                       q[3].data_ptr<float>(), q[4].data_ptr<float>(), q[5].data_ptr<float>(),
                       q[6].data_ptr<float>()});
    const float *xw = q[2].data_ptr<float>(), *dtw = q[3].data_ptr<float>();
    if (mx.amx) {
      mx.xwTp[d] = pack_pairs(xw, D, R + 2 * N, 1, D, mx.Kx / 2, mx.Ep);  // (d, e) = xw[e * D + d]
      mx.dtwTp[d] = pack_pairs(dtw, R, D, 1, R, mx.Kr / 2, mx.Dq);      // (r, d) = dtw[d * R + r]
      continue;
    }
    mx.xwT[d].assign(D * mx.Ep, 0.f);
    for (int64_t e = 0; e < R + 2 * N; ++e)
      for (int64_t i = 0; i < D; ++i) mx.xwT[d][i * mx.Ep + e] = xw[e * D + i];
    mx.dtwT[d].resize(R * D);
    for (int64_t i = 0; i < D; ++i)
      for (int64_t r = 0; r < R; ++r) mx.dtwT[d][r * D + i] = dtw[i * R + r];
    if (bf16) {
      for (auto& v : mx.xwT[d]) v = bf16_round(v);
      for (auto& v : mx.dtwT[d]) v = bf16_round(v);
    }
  }
  if (tail0) check_small(*tail0, "initial_tail", {mx.Bsz, D, K - 1});
  if (h0) check_small(*h0, "initial_state", {mx.Bsz, D, N});
  mx.Tc = std::min(chunk, mx.L);
  mx.nchunks = (mx.L + mx.Tc - 1) / mx.Tc;
  mx.xz = xz.data_ptr();
  mx.xz_bf16 = xz.scalar_type() == at::kBFloat16;
  mx.bf16 = bf16;
  mx.sxz_b = xz.stride(0), mx.sxz_l = xz.stride(1);
  mx.tail0 = opt_ptr(tail0);
  mx.h0 = opt_ptr(h0);
  auto fopt = xz.options().dtype(at::kFloat);
  at::Tensor out = at::empty({mx.Bsz, mx.L, D}, fopt.dtype(bf16 ? at::kBFloat16 : at::kFloat));
  at::Tensor tail = return_state ? at::empty({mx.Bsz, D, K - 1}, fopt) : at::empty({0}, fopt);
  at::Tensor last = return_state ? at::empty({mx.Bsz, D, N}, fopt) : at::empty({0}, fopt);
  // Reused across calls (per calling thread): a fresh multi-MB buffer every layer is fresh
  // pages from the OS, and their page faults showed in the profile.
  thread_local std::vector<float> scratch;
  if ((int64_t)scratch.size() < mx.ndir * mx.Bsz * mx.L * D) scratch.resize(mx.ndir * mx.Bsz * mx.L * D);
  mx.out = out.data_ptr();
  mx.scratch = scratch.data();
  mx.tail_out = return_state ? tail.data_ptr<float>() : nullptr;
  mx.h_out = return_state ? last.data_ptr<float>() : nullptr;
  std::vector<std::atomic<int>> done(mx.Bsz * mx.nchunks);
  for (auto& d : done) d.store(0);
  mx.done = done.data();
  const int64_t ntasks = mx.Bsz * mx.ndir, nw = num_workers(ntasks);
  // Per calling thread, like scratch: fresh buffers every layer were page faults in the profile.
  // (A reference: inside the parallel region the name would be each worker's own copy.)
  thread_local std::vector<MixerWork> work_tls;
  std::vector<MixerWork>& work = work_tls;
  if ((int64_t)work.size() < nw) work.resize(nw);
  for (int64_t wi = 0; wi < nw; ++wi) {
    MixerWork& w = work[wi];
    if (mx.xz_bf16) w.xin.resize(mx.Tc * D);
    w.xc.resize((mx.Tc + kXprojTokens - 1) * D);  // xproj_chunk reads rows past the chunk
    // The tiles read and write whole 16-row blocks: rows past the chunk are zeros in, ignored out.
    const int64_t rows = round_up(mx.Tc, kAmxM);
    w.xdbl.resize(rows * mx.xs);
    w.dt.resize(rows * mx.ds);
    if (mx.amx) {
      w.xcb.assign(rows * mx.Kx, 0);
      w.xdblb.assign(rows * mx.Kr, 0);
    } else if (bf16) {
      w.xcr.assign((mx.Tc + kXprojTokens - 1) * D, 0.f);
      w.xdblr.assign(mx.Tc * (R + 2 * N), 0.f);
    }
  }
  run_tasks(ntasks, nw, [&](int64_t wi, int64_t task) {
    mixer_task(mx, task / mx.ndir, (int)(task % mx.ndir), work[wi]);
  });
  return {out, tail, last};
}

// ---------------------------------------------------------------- residual add + RMSNorm
// residual_out = residual + hidden (float32; hidden may be bfloat16 or float32, residual
// may be absent), normed = residual_out * rsqrt(mean(residual_out^2) + eps) * weight, in one
// pass over the rows instead of the add and the norm's five elementwise passes. Inference only.
std::tuple<at::Tensor, at::Tensor> add_rms_norm(const at::Tensor& hidden,
                                                const std::optional<at::Tensor>& residual,
                                                const at::Tensor& weight, double eps, bool out_bf16) {
  TORCH_CHECK(hidden.device().is_cpu() && hidden.is_contiguous() &&
                  (hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kBFloat16),
              "hidden must be a contiguous float32 or bfloat16 CPU tensor");
  const int64_t C = hidden.size(-1), rows = C ? hidden.numel() / C : 0;
  check_small(weight, "weight", {C});
  if (residual) {
    TORCH_CHECK(residual->sizes() == hidden.sizes(), "residual must have hidden's shape ", hidden.sizes());
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->is_contiguous(),
                "residual must be a contiguous float32 tensor");
  }
  auto fopt = hidden.options().dtype(at::kFloat);
  at::Tensor res = at::empty(hidden.sizes(), fopt);
  at::Tensor out = at::empty(hidden.sizes(), fopt.dtype(out_bf16 ? at::kBFloat16 : at::kFloat));
  const bool hb = hidden.scalar_type() == at::kBFloat16;
  const void* hp = hidden.data_ptr();
  const float* rp = opt_ptr(residual);
  const float* wp = weight.data_ptr<float>();
  float* op = res.data_ptr<float>();
  void* np = out.data_ptr();
  // One segment's rows (Ti-16: 3137 x 192) are ~0.2 ms of work on one thread: a parallel
  // region would save half of that on a quiet machine, but costs a scheduler slice or more
  // whenever another process holds one of the cores (its join waits for the thread that
  // lost its core). Batches of streams, 8x that size and more, do split.
  const int64_t grain = rows * C >= (int64_t)1 << 22 ? 256 : rows;
  at::parallel_for(0, rows, std::max<int64_t>(grain, 1), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* x = op + r * C;
      if (hb)
        bf16_to_f32_n(static_cast<const uint16_t*>(hp) + r * C, x, C);
      else
        std::memcpy(x, static_cast<const float*>(hp) + r * C, C * sizeof(float));
      if (rp)
        for (int64_t i = 0; i < C; ++i) x[i] = rp[r * C + i] + x[i];
      vf acc = vzero();
      int64_t i = 0;
      for (; i + W <= C; i += W) {
        const vf v = vload(x + i, kAll);
        acc = vfma(v, v, acc);
      }
      float ss = vsum(acc);
      for (; i < C; ++i) ss += x[i] * x[i];
      const float scale = 1.f / std::sqrt(ss / (float)C + (float)eps);
      if (out_bf16) {
        float tmp[1024];
        uint16_t* o = static_cast<uint16_t*>(np) + r * C;
        for (int64_t k0 = 0; k0 < C; k0 += 1024) {
          const int64_t m = std::min<int64_t>(1024, C - k0);
          for (int64_t k = 0; k < m; ++k) tmp[k] = x[k0 + k] * scale * wp[k0 + k];
          f32_to_bf16_n(tmp, nullptr, o + k0, m);
        }
      } else {
        float* o = static_cast<float*>(np) + r * C;
        for (int64_t k = 0; k < C; ++k) o[k] = x[k] * scale * wp[k];
      }
    }
  });
  return {out, res};
}

std::string isa() { return std::string(kIsa) + "/" + std::to_string(W); }

}  // namespace

TORCH_LIBRARY(VMS_NS, m) {
  m.def("isa() -> str", &isa);
  m.def("selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? z, Tensor? delta_bias, Tensor? initial_state, bool softplus, bool reverse, "
        "Tensor(a!)? out, bool accumulate, bool return_last, int ckpt_every) "
        "-> (Tensor, Tensor, Tensor)",
        &selective_scan_fwd);
  m.def("selective_scan_bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
        "Tensor? z, Tensor? delta_bias, Tensor ckpt, Tensor dout, Tensor? dlast, bool softplus, "
        "bool reverse, int ckpt_every, bool need_dh0) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        &selective_scan_bwd);
  m.def("causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_tail, "
        "bool silu, bool reverse, bool return_tail) -> (Tensor, Tensor)",
        &causal_conv1d_fwd);
  m.def("causal_conv1d_bwd(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_tail, "
        "Tensor dout, Tensor? dfinal_tail, bool silu, bool reverse, bool need_dtail) "
        "-> (Tensor, Tensor, Tensor, Tensor)",
        &causal_conv1d_bwd);
  m.def("mixer_fwd(Tensor xz, Tensor[] params, Tensor? initial_tail, Tensor? initial_state, "
        "bool return_state, int chunk, bool bf16) -> (Tensor, Tensor, Tensor)",
        &mixer_fwd);
  m.def("add_rms_norm(Tensor hidden, Tensor? residual, Tensor weight, float eps, bool out_bf16) "
        "-> (Tensor, Tensor)",
        &add_rms_norm);
}
