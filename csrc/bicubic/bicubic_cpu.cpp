// CPU kernels of the bicubic-modulation ops: W_eff = W * up(M), with up = F.interpolate(mode="bicubic") of
// M [m1, m2] to W's [out, in] (reference: cltk/ops/bicubic.py, bicubic_modulate_ref).
//
// up is separable, up(M) = A M B^T with A [out, m1] and B [in, m2] holding four taps per row. The forward
// first forms U = M B^T [m1, in] (the grid upsampled along the width only: m1 * in elements, tiny next to W
// for the usual m1 << out), then each output row is W[i] * sum_k a_ik U[r_ik], four contiguous rows of U
// combined per row of W. That is one pass reading W and writing W_eff: 2 * sizeof(T) bytes per element
// (U stays in cache). The column-then-row order of the sums is PyTorch's own.
//
// Backward: grad_W = G * up(M) in the same pass (only when W requires grad); grad_M = A^T (G * W) B, as a
// deterministic two-level reduction without atomics: rows are cut into fixed chunks (independent of the thread
// count), each chunk writes its own partial sums, and the partials are summed in chunk order. For grids of at most
// kDenseMaxM2 columns (the usual 4x4) and rows of up to a few thousand elements the reduction is column-first:
// each row of G * W is reduced against B's dense columns in registers, in one streaming pass like a dot product,
// and chunk c accumulates A_c^T (G W B)_c ([rows of M it touches, m2]). Other shapes go row-first: chunk c
// accumulates A_c^T (G * W)_c (partial rows of width `in`, consecutive rows with equal taps up to four at a time),
// and the sum of the partials is multiplied by B. Minimum traffic: read G and W (+ write grad_W): 2 (3) *
// sizeof(T) bytes per element. Large forwards into out= buffers use streaming stores.
// Where the time goes, with measurements: docs/bicubic_kernels.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "bicubic/bicubic_check.h"
#include "bicubic/bicubic_taps.h"

namespace {

using namespace cltk_bicubic;

constexpr int64_t kRowsPerChunk = 256;   // backward row chunk: fixed, so the sum order never depends on threads
constexpr int64_t kRowsPerBlock = 16;    // forward work item
// Backward column tile: four partial rows of it (128 KiB in fp32) stay in L2, and each of the eight input
// streams of a row group reads 32 KiB in a row, long enough for the hardware prefetcher. With 1024 columns each
// row segment was one 4 KiB page and the prefetcher restarted on every page (standalone 4096^2 fp32 backward:
// 10.6 ms row by row with 1024 columns, 9.2 ms in groups of four rows with 4096, 8.4 ms for a plain read of G, W).
constexpr int64_t kColTile = 8192;
// Rows at most this wide (in elements) are read linearly per row group in the backward (see backward_chunk).
constexpr int64_t kLinearMaxIn = 1024;
static_assert(kLinearMaxIn <= kColTile, "a narrow row is one column tile");
// Grids at most this wide (m2) take the column-first backward (backward_chunk_dense): each row of G * W is reduced
// against the dense columns of B in registers, one streaming pass over G and W like a dot product. Only while
// those columns (m2 * in values) stay in L1 beside the streams: at 4096x4096 the column-first backward took 11.6 ms
// with (4, 4) and 14.4 ms with (8, 8) grids (64 and 128 KiB of columns, read from L2 for every row), the row-first
// one 10.1 and 10.6 ms.
constexpr int64_t kDenseMaxM2 = 8;
constexpr int64_t kDenseMaxColumnBytes = 24 << 10;
// A forward into caller-provided buffers (the out= variants) whose outputs total at least this many bytes (4x a
// core's L2) writes them with non-temporal (streaming) stores: they skip the read-for-ownership of every output line
// (a quarter less memory traffic: 9.0 against 11.2 ms for 4096^2 fp32) and leave the caches to the inputs (the
// backward's G and W); the first outputs of such a call would have left L2 before the layers read them anyway.
// Smaller calls keep their outputs cached. Fresh outputs are normal stores: their pages were just faulted in and
// zeroed by the kernel, so their lines are in cache already (streaming there measured 54 against 48 ms at 4096^2).
// Only outputs whose rows are whole aligned vectors stream (streams_whole_rows): a row of a depthwise 3x3 weight is 9
// values, and a line written partly by streaming and partly by ordinary stores (the row's unaligned head and tail)
// cost more than its read-for-ownership would have. The forward of MobileNetV2's 53 weights into out= buffers took
// 2.76-2.84 ms streaming every row and 2.38-2.50 ms with its 17 depthwise weights and the stem (rows of 9 and 27)
// stored normally (cold caches, 1 thread, the two builds alternating in one process).
constexpr int64_t kStreamMinBytes = int64_t(8) << 20;

// The forward and the column-first backward prefetch their streamed inputs this far ahead (one line of each per 64
// bytes read), into L2 (prefetcht1), not L1. Their loops have a few more instructions per element than torch.mul or a
// dot product, so fewer loads are in flight (AVX2, cold caches, 1 thread): with a prefetch the backward of the 34 1x1
// weights of MobileNetV2 went from 1.3-1.4x to 1.0-1.1x the time of torch.dot over the same G and W (without it the
// column-first pass was no faster than the row-first one), the forward of all 53 weights from 0.99-1.04x to
// 0.89-0.96x torch.mul(out=), and the 4096x4096 forward from 8.6-10.0 to 8.0-8.2 ms. That was 2 KiB ahead into L1
// (prefetcht0). On a Zen 4 (AVX-512) the L1 prefetch gained nothing: the column-first loop over the 53 weights ran at
// 1.4-1.5x a dot product's time cold with it and without it, and at the dot product's rate with prefetcht1 4-8 KiB
// ahead (2 KiB: 1.1x, 1 KiB: 1.25x; a standalone loop, median of 31); the backward of the op went from 1.14-1.36x to
// 0.87-1.07x torch.dot's time, the engine-seeded call from 5.3-5.5 to 4.5-4.7 ms (alternating processes). In the
// row-first backward (eight interleaved streams) the L1 prefetch made the 4096x4096 backward slower (12.2 vs 10.1 ms).
constexpr int64_t kPrefetchBytes = 4096;
// A hint only (never faults), so it may point past the end of the tensor. Locality 2: prefetcht1, into L2; probably
// the lines prefetched into L1 pushed out the column planes and U's rows, which the loops reread from L1.
inline void prefetch_ahead(const void* p) {
  __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + kPrefetchBytes), 0, 2);
}
// Whether a vector loop at element j (a multiple of the vector size) starts a 64-byte line: the loops prefetch once
// per line, every second vector with AVX2 and every vector with AVX-512.
template <typename scalar_t>
constexpr bool line_start(int64_t j) {
  return (j & (64 / static_cast<int64_t>(sizeof(scalar_t)) - 1)) == 0;
}

// Non-temporal store of one vector at an address aligned to its size (false: not available in this build).
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kHaveStream = true;
inline void stream_store(float* p, const at::vec::Vectorized<float>& v) { _mm512_stream_ps(p, v); }
inline void stream_store(double* p, const at::vec::Vectorized<double>& v) { _mm512_stream_pd(p, v); }
inline void stream_fence() { _mm_sfence(); }
#elif defined(CPU_CAPABILITY_AVX2)
constexpr bool kHaveStream = true;
inline void stream_store(float* p, const at::vec::Vectorized<float>& v) { _mm256_stream_ps(p, v); }
inline void stream_store(double* p, const at::vec::Vectorized<double>& v) { _mm256_stream_pd(p, v); }
inline void stream_fence() { _mm_sfence(); }
#else
constexpr bool kHaveStream = false;
template <typename scalar_t>
inline void stream_store(scalar_t* p, const at::vec::Vectorized<scalar_t>& v) { v.store(p); }
inline void stream_fence() {}
#endif

// One weight of a (multi-)call. Pointers are to contiguous storage.
template <typename scalar_t>
struct Job {
  const scalar_t* w = nullptr;     // [out, in]
  const scalar_t* grad = nullptr;  // [out, in] (backward)
  const scalar_t* mod = nullptr;   // [m1, m2]
  scalar_t* dst = nullptr;         // [out, in]: W_eff (forward) or grad_W (backward, may be null)
  scalar_t* gmod = nullptr;        // [m1, m2] (backward, may be null)
  int64_t out = 0, in = 0, m1 = 0, m2 = 0;
  std::vector<scalar_t> U;         // [m1, in]
  std::vector<scalar_t> colw;      // [m2, in]: B^T as dense planes (backward, grids at most kDenseMaxM2 wide)
  // Output columns [0, first_col_end) have grid column 0 among their taps, [last_col_begin, in) column m2 - 1
  // (column_weights).
  int64_t first_col_end = 0, last_col_begin = 0;
};

// Taps of destination samples [d0, d0 + n), n <= kTapBlock: idx[4 * l + k] and w[4 * l + k] for sample d0 + l,
// exactly bicubic_taps' values. For float, Vectorized<float>::size() samples at a time with the same operations
// in the same order (one fused multiply-add for the source position, as std::fma; floor; separate multiplies and
// adds for the cubic coefficients), exact while the indices are exact in float; a backbone has tens of thousands
// of rows and columns, and the scalar taps cost about 7 ns each.
constexpr int64_t kTapBlock = 256;
static_assert(kRowsPerChunk <= kTapBlock && kRowsPerBlock <= kTapBlock, "row taps are computed in one block");

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// Eight samples' taps from their lanes (base: the unclamped floor, exact integers; w0..w3: the weights) into the
// interleaved layout idx[4 * v + k], w[4 * v + k]: the clamped indices in int32 lanes, then two 4x4 transposes per
// 128-bit half. Replaces a scalar loop of eight clamps and stores per sample (a quarter of the taps' time).
inline void store_taps_avx2(__m256 base, __m256 w0, __m256 w1, __m256 w2, __m256 w3, int64_t in, int64_t* idx,
                            float* w) {
  const __m256i b = _mm256_cvttps_epi32(base);
  const __m256i lo = _mm256_setzero_si256(), hi = _mm256_set1_epi32(static_cast<int>(in - 1));
  const auto tap = [&](int k) {
    return _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(k - 1)), lo), hi);
  };
  const __m256i i0 = tap(0), i1 = tap(1), i2 = tap(2), i3 = tap(3);
  const __m256i ia = _mm256_unpacklo_epi32(i0, i1), ic = _mm256_unpackhi_epi32(i0, i1);
  const __m256i id = _mm256_unpacklo_epi32(i2, i3), ie = _mm256_unpackhi_epi32(i2, i3);
  // it[v]: sample v's four indices in the low half, sample v + 4's in the high half
  const __m256i it[4] = {_mm256_unpacklo_epi64(ia, id), _mm256_unpackhi_epi64(ia, id), _mm256_unpacklo_epi64(ic, ie),
                         _mm256_unpackhi_epi64(ic, ie)};
  const __m256 wa = _mm256_unpacklo_ps(w0, w1), wc = _mm256_unpackhi_ps(w0, w1);
  const __m256 wd = _mm256_unpacklo_ps(w2, w3), we = _mm256_unpackhi_ps(w2, w3);
  const auto lo64 = [](__m256 x, __m256 y) {
    return _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(x), _mm256_castps_pd(y)));
  };
  const auto hi64 = [](__m256 x, __m256 y) {
    return _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(x), _mm256_castps_pd(y)));
  };
  const __m256 wt[4] = {lo64(wa, wd), hi64(wa, wd), lo64(wc, we), hi64(wc, we)};
  for (int v = 0; v < 4; ++v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + 4 * v), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(it[v])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + 4 * (v + 4)),
                        _mm256_cvtepi32_epi64(_mm256_extracti128_si256(it[v], 1)));
    _mm_storeu_ps(w + 4 * v, _mm256_castps256_ps128(wt[v]));
    _mm_storeu_ps(w + 4 * (v + 4), _mm256_extractf128_ps(wt[v], 1));
  }
}
#endif

template <typename scalar_t>
void taps_block(scalar_t scale, int64_t d0, int64_t n, int64_t in, bool align_corners, int64_t* idx, scalar_t* w) {
  int64_t l = 0;
  if constexpr (std::is_same<scalar_t, float>::value) {
    using Vec = at::vec::Vectorized<float>;
    constexpr int64_t V = Vec::size();
    if (d0 + n < (int64_t(1) << 22) && in < (int64_t(1) << 22)) {
      const Vec A(-0.75f), one(1.f), a2(-0.75f + 2.f), a3(-0.75f + 3.f), a5(5.f * -0.75f), a8(8.f * -0.75f),
          a4(4.f * -0.75f), vscale(scale), last(static_cast<float>(in - 1)), zero(0.f), half(0.5f);
      const auto conv1 = [&](const Vec& x) { return (a2 * x - a3) * x * x + one; };
      const auto conv2 = [&](const Vec& x) { return ((A * x - a5) * x + a8) * x - a4; };
      for (; l + V <= n; l += V) {
        const Vec dst = Vec::arange(static_cast<float>(d0 + l), 1.f);
        const Vec real = align_corners ? vscale * dst : at::vec::fmadd(vscale, dst + half, Vec(-0.5f));
        const Vec base = at::vec::minimum(real.floor(), last);
        const Vec t = at::vec::minimum(at::vec::maximum(real - base, zero), one);
        const Vec omt = one - t;
#if defined(CPU_CAPABILITY_AVX2)
        store_taps_avx2(base, conv2(t + one), conv1(t), conv1(omt), conv2(omt + one), in, idx + 4 * l, w + 4 * l);
        continue;
#elif defined(CPU_CAPABILITY_AVX512)
        {  // the sixteen lanes as two halves of eight
          const __m512 lanes[5] = {base, conv2(t + one), conv1(t), conv1(omt), conv2(omt + one)};
          __m256 h[2][5];
          for (int q = 0; q < 5; ++q) {
            h[0][q] = _mm512_castps512_ps256(lanes[q]);
            h[1][q] = _mm512_extractf32x8_ps(lanes[q], 1);
          }
          for (int half = 0; half < 2; ++half)
            store_taps_avx2(h[half][0], h[half][1], h[half][2], h[half][3], h[half][4], in, idx + 4 * (l + 8 * half),
                            w + 4 * (l + 8 * half));
        }
        continue;
#endif
        float b[V], w0[V], w1[V], w2[V], w3[V];
        base.store(b);
        conv2(t + one).store(w0);
        conv1(t).store(w1);
        conv1(omt).store(w2);
        conv2(omt + one).store(w3);
        for (int64_t v = 0; v < V; ++v) {
          const int64_t bi = static_cast<int64_t>(b[v]);
          int64_t* id = idx + 4 * (l + v);
          for (int k = 0; k < 4; ++k) id[k] = clamp_index(bi - 1 + k, in);
          scalar_t* wv = w + 4 * (l + v);
          wv[0] = w0[v];
          wv[1] = w1[v];
          wv[2] = w2[v];
          wv[3] = w3[v];
        }
      }
    }
  }
  for (; l < n; ++l) bicubic_taps<scalar_t>(scale, d0 + l, in, align_corners, idx + 4 * l, w + 4 * l);
}

// U = M B^T: the grid upsampled along the width only.
template <typename scalar_t>
void width_upsample(Job<scalar_t>& job, bool align_corners) {
  using opmath_t = scalar_t;
  job.U.assign(static_cast<size_t>(job.m1 * job.in), scalar_t(0));
  const opmath_t sx = source_scale<opmath_t>(job.m2, job.in, align_corners);
  int64_t idx[kTapBlock * 4];
  opmath_t w[kTapBlock * 4];
  for (int64_t j0 = 0; j0 < job.in; j0 += kTapBlock) {
    const int64_t n = std::min(kTapBlock, job.in - j0);
    taps_block<opmath_t>(sx, j0, n, job.m2, align_corners, idx, w);
    for (int64_t r = 0; r < job.m1; ++r) {
      const scalar_t* row = job.mod + r * job.m2;
      scalar_t* u = job.U.data() + r * job.in + j0;
      for (int64_t l = 0; l < n; ++l) {
        const int64_t* id = idx + 4 * l;
        const opmath_t* wl = w + 4 * l;
        opmath_t acc = row[id[0]] * wl[0];
        acc += row[id[1]] * wl[1];
        acc += row[id[2]] * wl[2];
        acc += row[id[3]] * wl[3];
        u[l] = acc;
      }
    }
  }
}

// Partial vectors (at::vec's loadu(p, count) / store(p, count)) are masked instructions with AVX-512; otherwise
// they go through a copy on the stack, slower than a scalar loop over the few tail elements (17 depthwise 3x3
// weights of MobileNetV2, AVX2: forward 0.145 ms with partial vectors, 0.108 ms scalar).
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kMaskedTail = true;
#else
constexpr bool kMaskedTail = false;
#endif

// sum_k a_k u_k[j] in the vector code's order (separate products and sums), so scalar and vector columns agree
// bitwise.
template <typename scalar_t>
inline scalar_t up_at(const scalar_t* u0, const scalar_t* u1, const scalar_t* u2, const scalar_t* u3,
                      const scalar_t* a, int64_t j) {
  scalar_t up = u0[j] * a[0];
  up = up + u1[j] * a[1];
  up = up + u2[j] * a[2];
  up = up + u3[j] * a[3];
  return up;
}

// Taps of output rows [i0, i0 + rows), rows <= kTapBlock.
template <typename scalar_t>
void row_taps(const Job<scalar_t>& job, bool align_corners, int64_t i0, int64_t rows, int64_t* idx, scalar_t* a) {
  taps_block<scalar_t>(source_scale<scalar_t>(job.m1, job.out, align_corners), i0, rows, job.m1, align_corners, idx, a);
}

// d[j] = s[j] * sum_k a_k u_k[j] for j in [j, j1): the forward's W_eff and the backward's grad_W. kStream: vector
// stores are non-temporal (d + j aligned; the caller fences); kPrefetch: s is prefetched ahead.
template <typename scalar_t, bool kStream, bool kPrefetch>
void modulate_span(const scalar_t* u0, const scalar_t* u1, const scalar_t* u2, const scalar_t* u3, const scalar_t* a,
                   const scalar_t* s, scalar_t* d, int64_t j, int64_t j1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const Vec a0(a[0]), a1(a[1]), a2(a[2]), a3(a[3]);
  for (; j + Vec::size() <= j1; j += Vec::size()) {
    if (kPrefetch && line_start<scalar_t>(j)) prefetch_ahead(s + j);
    Vec up = Vec::loadu(u0 + j) * a0;
    up = up + Vec::loadu(u1 + j) * a1;
    up = up + Vec::loadu(u2 + j) * a2;
    up = up + Vec::loadu(u3 + j) * a3;
    if (kStream) {
      stream_store(d + j, Vec::loadu(s + j) * up);
    } else {
      (Vec::loadu(s + j) * up).store(d + j);
    }
  }
  if (kMaskedTail && j < j1) {  // the tail as one partial vector (the whole row for depthwise 3x3 weights)
    const int64_t c = j1 - j;
    Vec up = Vec::loadu(u0 + j, c) * a0;
    up = up + Vec::loadu(u1 + j, c) * a1;
    up = up + Vec::loadu(u2 + j, c) * a2;
    up = up + Vec::loadu(u3 + j, c) * a3;
    (Vec::loadu(s + j, c) * up).store(d + j, c);
    return;
  }
  for (; j < j1; ++j) d[j] = s[j] * up_at(u0, u1, u2, u3, a, j);
}

// dst[i] = src[i] * sum_k a_ik U[r_ik] for rows [i0, i1); kStream: vector stores are non-temporal (the caller
// fences; the job streams_whole_rows).
template <typename scalar_t, bool kStream>
void modulate_rows(const Job<scalar_t>& job, const scalar_t* src, scalar_t* dst, bool align_corners, int64_t i0,
                   int64_t i1) {
  const int64_t I = job.in;
  int64_t taps_idx[kRowsPerBlock * 4];
  scalar_t taps_w[kRowsPerBlock * 4];
  row_taps(job, align_corners, i0, i1 - i0, taps_idx, taps_w);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t* idx = taps_idx + 4 * (i - i0);
    const scalar_t* a = taps_w + 4 * (i - i0);
    const scalar_t* u0 = job.U.data() + idx[0] * I;
    const scalar_t* u1 = job.U.data() + idx[1] * I;
    const scalar_t* u2 = job.U.data() + idx[2] * I;
    const scalar_t* u3 = job.U.data() + idx[3] * I;
    const scalar_t* s = src + i * I;
    scalar_t* d = dst + i * I;
    modulate_span<scalar_t, kStream, true>(u0, u1, u2, u3, a, s, d, 0, I);
  }
}

// A job whose output rows are whole vectors at vector-aligned addresses: streaming stores write all of it, with no
// partly streamed lines (see kStreamMinBytes).
template <typename scalar_t>
bool streams_whole_rows(const Job<scalar_t>& job) {
  using Vec = at::vec::Vectorized<scalar_t>;
  return job.in % Vec::size() == 0 && reinterpret_cast<uintptr_t>(job.dst) % sizeof(Vec) == 0;
}

template <typename scalar_t>
void forward_jobs(std::vector<Job<scalar_t>>& jobs, bool align_corners, bool caller_out) {
  at::parallel_for(0, static_cast<int64_t>(jobs.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) width_upsample(jobs[k], align_corners);
  });
  // Work items: (job, block of kRowsPerBlock rows), over all jobs at once.
  std::vector<int64_t> first_item(jobs.size() + 1, 0);
  for (size_t k = 0; k < jobs.size(); ++k)
    first_item[k + 1] = first_item[k] + (jobs[k].out + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t items = first_item.back();
  int64_t total_bytes = 0;
  for (const auto& job : jobs) total_bytes += job.out * job.in * static_cast<int64_t>(sizeof(scalar_t));
  const bool stream = caller_out && total_bytes >= kStreamMinBytes;
  const int64_t grain = std::max<int64_t>(1, 65536 / (kRowsPerBlock * 256));
  at::parallel_for(0, items, grain, [&](int64_t b, int64_t e) {
    size_t k = std::upper_bound(first_item.begin(), first_item.end(), b) - first_item.begin() - 1;
    bool streamed = false;
    for (int64_t it = b; it < e; ++it) {
      while (it >= first_item[k + 1]) ++k;
      const Job<scalar_t>& job = jobs[k];
      const int64_t i0 = (it - first_item[k]) * kRowsPerBlock;
      const int64_t i1 = std::min(job.out, i0 + kRowsPerBlock);
      if (kHaveStream && stream && streams_whole_rows(job)) {
        modulate_rows<scalar_t, true>(job, job.w, job.dst, align_corners, i0, i1);
        streamed = true;
      } else {
        modulate_rows<scalar_t, false>(job, job.w, job.dst, align_corners, i0, i1);
      }
    }
    if (streamed) stream_fence();  // the streaming stores of this thread are visible before the op returns
  });
}

// grad_W[i, j0:j1] = G[i, j0:j1] * sum_k a_k U[r_k, j0:j1], for output row i with taps (id, ai).
template <typename scalar_t>
void grad_weight_row(const Job<scalar_t>& job, const int64_t* id, const scalar_t* ai, int64_t i, int64_t j0,
                     int64_t j1) {
  const int64_t I = job.in;
  const scalar_t* U = job.U.data();
  modulate_span<scalar_t, false, false>(U + id[0] * I, U + id[1] * I, U + id[2] * I, U + id[3] * I, ai,
                                        job.grad + i * I, job.dst + i * I, j0, j1);
}

// Rows of M touched by output rows [i0, i1): [lo, hi].
template <typename scalar_t>
void chunk_span(const Job<scalar_t>& job, bool align_corners, int64_t i0, int64_t i1, int64_t* lo, int64_t* hi) {
  const scalar_t sy = source_scale<scalar_t>(job.m1, job.out, align_corners);
  scalar_t t;
  *lo = clamp_index(tap_base<scalar_t>(sy, i0, job.m1, align_corners, &t) - 1, job.m1);
  *hi = clamp_index(tap_base<scalar_t>(sy, i1 - 1, job.m1, align_corners, &t) + 2, job.m1);
}

// t_k[j] += sum_r a_rk g_r[j] w_r[j] for k = 0..3 and columns [j0, j1), over R rows that share their four taps
// (rows of one run of the same source base): four read-modify-writes of the partial rows per R input rows. The
// four updates are sequential on purpose: taps may coincide at the borders (clamped), t_k then alias. Each update
// is t_k + sum_r a_rk p_r in fused multiply-adds (half the arithmetic of separate products and sums; the combine
// step is arithmetic-bound once the products are in L1: backward / torch.dot 1.21 against 1.29, alternating runs).
// kProducts: g[r] already holds the products g_r * w_r (w unused).
template <typename scalar_t, int R, bool kProducts = false>
void accumulate_rows(const scalar_t* const* g, const scalar_t* const* w, const scalar_t* a, scalar_t* const* t,
                     int64_t j0, int64_t j1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  Vec av[R][4];
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < 4; ++k) av[r][k] = Vec(a[r * 4 + k]);
  int64_t j = j0;
  for (; j + Vec::size() <= j1; j += Vec::size()) {
    Vec p[R];
    for (int r = 0; r < R; ++r) p[r] = kProducts ? Vec::loadu(g[r] + j) : Vec::loadu(g[r] + j) * Vec::loadu(w[r] + j);
    for (int k = 0; k < 4; ++k) {
      Vec acc = Vec::loadu(t[k] + j);
      for (int r = 0; r < R; ++r) acc = at::vec::fmadd(p[r], av[r][k], acc);
      acc.store(t[k] + j);
    }
  }
  if (j < j1) {  // the tail as one partial vector
    const int64_t c = j1 - j;
    Vec p[R];
    for (int r = 0; r < R; ++r)
      p[r] = kProducts ? Vec::loadu(g[r] + j, c) : Vec::loadu(g[r] + j, c) * Vec::loadu(w[r] + j, c);
    for (int k = 0; k < 4; ++k) {
      Vec acc = Vec::loadu(t[k] + j, c);
      for (int r = 0; r < R; ++r) acc = at::vec::fmadd(p[r], av[r][k], acc);
      acc.store(t[k] + j, c);
    }
  }
}

// Backward of one chunk: partial [hi - lo + 1, in] = A_c^T (G * W)_c; grad_W rows when asked. Rows are taken in
// groups of up to four consecutive rows with equal taps (fixed by the row indices alone, so the order of the sums
// is deterministic).
template <typename scalar_t>
void backward_chunk(const Job<scalar_t>& job, bool align_corners, int64_t i0, int64_t i1, int64_t lo,
                    scalar_t* partial) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t I = job.in;
  const int64_t rows = i1 - i0;
  int64_t idx[kRowsPerChunk * 4];
  scalar_t a[kRowsPerChunk * 4];
  row_taps(job, align_corners, i0, rows, idx, a);
  // Row groups: group q covers rows [start[q], start[q + 1]).
  int64_t start[kRowsPerChunk + 1];
  int64_t groups = 0;
  for (int64_t r = 0; r < rows;) {
    start[groups++] = r;
    int64_t e = r + 1;
    while (e < rows && e - r < 4 && idx[e * 4] == idx[r * 4] && idx[e * 4 + 1] == idx[r * 4 + 1] &&
           idx[e * 4 + 2] == idx[r * 4 + 2] && idx[e * 4 + 3] == idx[r * 4 + 3])
      ++e;
    r = e;
  }
  start[groups] = rows;
  const bool want_gw = job.dst != nullptr;
  for (int64_t j0 = 0; j0 < I; j0 += kColTile) {
    const int64_t j1 = std::min(I, j0 + kColTile);
    for (int64_t q = 0; q < groups; ++q) {
      const int64_t r0 = start[q], n = start[q + 1] - start[q];
      if (job.gmod != nullptr) {
        const scalar_t* g[4];
        const scalar_t* w[4];
        for (int64_t r = 0; r < n; ++r) {
          g[r] = job.grad + (i0 + r0 + r) * I;
          w[r] = job.w + (i0 + r0 + r) * I;
        }
        const int64_t* id = &idx[r0 * 4];
        scalar_t* t[4] = {partial + (id[0] - lo) * I, partial + (id[1] - lo) * I, partial + (id[2] - lo) * I,
                          partial + (id[3] - lo) * I};
        const scalar_t* ar = &a[r0 * 4];
        if (I <= kLinearMaxIn) {
          // Narrow rows: the group's rows are contiguous, so their products are formed in one linear pass over G
          // and W (two streams, as in a dot product) into an L1 buffer, and combined from there. Reading the rows
          // interleaved (eight streams a few cache lines long) ran at about half a dot product's rate.
          alignas(64) scalar_t prod[4 * kLinearMaxIn];
          const scalar_t* gb = g[0];
          const scalar_t* wb = w[0];
          const int64_t len = n * I;
          int64_t e = 0;
          for (; e + Vec::size() <= len; e += Vec::size())
            (Vec::loadu(gb + e) * Vec::loadu(wb + e)).store(prod + e);
          if (e < len) (Vec::loadu(gb + e, len - e) * Vec::loadu(wb + e, len - e)).store(prod + e, len - e);
          const scalar_t* pr[4] = {prod, prod + I, prod + 2 * I, prod + 3 * I};
          switch (n) {
            case 4: accumulate_rows<scalar_t, 4, true>(pr, nullptr, ar, t, j0, j1); break;
            case 3: accumulate_rows<scalar_t, 3, true>(pr, nullptr, ar, t, j0, j1); break;
            case 2: accumulate_rows<scalar_t, 2, true>(pr, nullptr, ar, t, j0, j1); break;
            default: accumulate_rows<scalar_t, 1, true>(pr, nullptr, ar, t, j0, j1); break;
          }
        } else {
          switch (n) {
            case 4: accumulate_rows<scalar_t, 4>(g, w, ar, t, j0, j1); break;
            case 3: accumulate_rows<scalar_t, 3>(g, w, ar, t, j0, j1); break;
            case 2: accumulate_rows<scalar_t, 2>(g, w, ar, t, j0, j1); break;
            default: accumulate_rows<scalar_t, 1>(g, w, ar, t, j0, j1); break;
          }
        }
      }
      if (!want_gw) continue;
      for (int64_t r = r0; r < r0 + n; ++r) grad_weight_row(job, &idx[r * 4], &a[r * 4], i0 + r, j0, j1);
    }
  }
}

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// [sum of a's lanes, of b's, of c's, of d's]
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}
#endif
#if defined(CPU_CAPABILITY_AVX512)
// The sixteen lanes of x as eight: each lane plus the one eight above it.
inline __m256 fold_halves(__m512 x) { return _mm256_add_ps(_mm512_castps512_ps256(x), _mm512_extractf32x8_ps(x, 1)); }
#endif

// acc[c] += sum over vectors j in [j0, j1) of p_j * colw[c, j] for columns c in [C0, C1], p = g * w: the
// column-first backward's pass over one stretch of a row.
template <typename scalar_t, int C0, int C1>
inline void dense_span(const scalar_t* g, const scalar_t* w, const scalar_t* cw, int64_t I, int64_t j0, int64_t j1,
                       at::vec::Vectorized<scalar_t>* acc) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  for (int64_t j = j0; j < j1; j += V) {
    if (line_start<scalar_t>(j)) {
      prefetch_ahead(g + j);
      prefetch_ahead(w + j);
    }
    const Vec p = Vec::loadu(g + j) * Vec::loadu(w + j);
    for (int c = C0; c <= C1; ++c) acc[c] = at::vec::fmadd(p, Vec::loadu(cw + c * I + j), acc[c]);
  }
}

// Rows at least this long skip the grid's first column where no output column has it among its taps, and its last
// column likewise (dense_span over three stretches instead of one).
constexpr int64_t kSkipColumnsMinIn = 128;

// Column-first backward of one chunk, for grids of M2 <= kDenseMaxM2 columns: row i's column sums
// s_c = sum_j colw[c, j] g_i[j] w_i[j] are formed in M2 vector accumulators in one pass over the row (two input
// streams, as in a dot product; the M2 planes of colw stay in L1 / L2), then partial[r_ik - lo, c] += a_ik s_c
// (M2 values per row tap). No partial rows of width `in` are written and read back, and the few arithmetic
// operations per element overlap the loads. Rows in order, columns in vector lanes then in lane order: the sum
// order depends on the shapes only.
template <typename scalar_t, int M2>
void backward_chunk_dense(const Job<scalar_t>& job, bool align_corners, int64_t i0, int64_t i1, int64_t lo,
                          scalar_t* partial) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t I = job.in;
  const int64_t rows = i1 - i0;
  int64_t idx[kRowsPerChunk * 4];
  scalar_t a[kRowsPerChunk * 4];
  row_taps(job, align_corners, i0, rows, idx, a);
  const scalar_t* cw = job.colw.data();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* id = &idx[r * 4];
    const scalar_t* ar = &a[r * 4];
    if (job.gmod != nullptr) {
      const scalar_t* g = job.grad + (i0 + r) * I;
      const scalar_t* w = job.w + (i0 + r) * I;
      Vec acc[M2];
      for (int c = 0; c < M2; ++c) acc[c] = Vec(scalar_t(0));
      // Three stretches of the row's vector part [0, jv): without the last grid column, all columns, without the
      // first. Each column's output columns are contiguous; with 4 grid columns the first and the last are each off
      // about a third of the row. Short rows and grids under 3 columns take the middle stretch only.
      const int64_t jv = I - I % V;
      int64_t a = 0, b = jv;
      if (M2 >= 3 && I >= kSkipColumnsMinIn) {
        a = std::min(jv, job.last_col_begin / V * V);
        b = std::max(a, std::min(jv, (job.first_col_end + V - 1) / V * V));
      }
      dense_span<scalar_t, 0, M2 - 2>(g, w, cw, I, 0, a, acc);
      dense_span<scalar_t, 0, M2 - 1>(g, w, cw, I, a, b, acc);
      dense_span<scalar_t, 1, M2 - 1>(g, w, cw, I, b, jv, acc);
      int64_t j = jv;  // the tail follows
      if (kMaskedTail && j < I) {  // the tail as one masked partial vector (the whole row of a depthwise 3x3 weight)
        const int64_t c = I - j;
        const Vec p = Vec::loadu(g + j, c) * Vec::loadu(w + j, c);
        for (int k = 0; k < M2; ++k) acc[k] = at::vec::fmadd(p, Vec::loadu(cw + k * I + j, c), acc[k]);
        j = I;
      }
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
      if constexpr (M2 == 4 && std::is_same<scalar_t, float>::value) {
        // The four lane sums at once (three horizontal adds and one add of the halves), and the four row taps'
        // updates as 4-wide vectors: a fifth of the scalar code's instructions per row, which counts for the many
        // short rows of a backbone (depthwise 3x3: 9 elements per row). With AVX-512 the lanes are first folded to
        // eight; summing them through a store and sixteen scalar loads per column took the backward of the 34 1x1
        // weights of MobileNetV2 to 2.9x the AVX2 build's time on the same (Zen 4) machine.
#if defined(CPU_CAPABILITY_AVX512)
        __m128 sum = hsum4(fold_halves(acc[0]), fold_halves(acc[1]), fold_halves(acc[2]), fold_halves(acc[3]));
#else
        __m128 sum = hsum4(acc[0], acc[1], acc[2], acc[3]);
#endif
        for (; j < I; ++j) {
          const __m128 p = _mm_set1_ps(g[j] * w[j]);
          sum = _mm_add_ps(sum, _mm_mul_ps(_mm_setr_ps(cw[j], cw[I + j], cw[2 * I + j], cw[3 * I + j]), p));
        }
        for (int k = 0; k < 4; ++k) {
          float* t = partial + (id[k] - lo) * 4;
          _mm_storeu_ps(t, _mm_add_ps(_mm_loadu_ps(t), _mm_mul_ps(_mm_set1_ps(ar[k]), sum)));
        }
      } else
#endif
      {
        scalar_t sum[M2];
        for (int c = 0; c < M2; ++c) {
#if defined(CPU_CAPABILITY_AVX512)
          if constexpr (std::is_same<scalar_t, float>::value) {
            sum[c] = _mm512_reduce_add_ps(acc[c]);
            continue;
          }
#endif
          alignas(64) scalar_t lanes[V];
          acc[c].store(lanes);
          scalar_t v = lanes[0];
          for (int64_t l = 1; l < V; ++l) v = v + lanes[l];
          sum[c] = v;
        }
        for (; j < I; ++j) {
          const scalar_t p = g[j] * w[j];
          for (int c = 0; c < M2; ++c) sum[c] = sum[c] + cw[c * I + j] * p;
        }
        for (int k = 0; k < 4; ++k) {
          scalar_t* t = partial + (id[k] - lo) * M2;
          for (int c = 0; c < M2; ++c) t[c] = t[c] + ar[k] * sum[c];
        }
      }
    }
    if (job.dst != nullptr) grad_weight_row(job, id, ar, i0 + r, 0, I);
  }
}

// colw[c, j]: the weight of grid column c in output column j (B^T, the clamped taps of a column summed).
template <typename scalar_t>
void column_weights(Job<scalar_t>& job, bool align_corners) {
  const int64_t I = job.in;
  job.colw.assign(static_cast<size_t>(job.m2 * I), scalar_t(0));
  const scalar_t sx = source_scale<scalar_t>(job.m2, I, align_corners);
  int64_t idx[kTapBlock * 4];
  scalar_t bw[kTapBlock * 4];
  job.first_col_end = 0;
  job.last_col_begin = I;
  for (int64_t j0 = 0; j0 < I; j0 += kTapBlock) {
    const int64_t nj = std::min(kTapBlock, I - j0);
    taps_block<scalar_t>(sx, j0, nj, job.m2, align_corners, idx, bw);
    for (int64_t l = 0; l < nj; ++l) {
      for (int k = 0; k < 4; ++k) {
        const int64_t c = idx[4 * l + k];
        job.colw[c * I + j0 + l] += bw[4 * l + k];
        if (c == 0) job.first_col_end = j0 + l + 1;
        if (c == job.m2 - 1) job.last_col_begin = std::min(job.last_col_begin, j0 + l);
      }
    }
  }
}

template <typename scalar_t>
void backward_jobs(std::vector<Job<scalar_t>>& jobs, bool align_corners) {
  const int64_t n = static_cast<int64_t>(jobs.size());
  // grad_W needs U; grad_M needs B's dense columns on the column-first path.
  const auto dense = [](const Job<scalar_t>& job) {
    return job.m2 <= kDenseMaxM2 && job.m2 * job.in * static_cast<int64_t>(sizeof(scalar_t)) <= kDenseMaxColumnBytes;
  };
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      if (jobs[k].dst != nullptr) width_upsample(jobs[k], align_corners);
      if (jobs[k].gmod != nullptr && dense(jobs[k])) column_weights(jobs[k], align_corners);
    }
  });
  // Level 1: one item per (job, chunk); each writes its own partial rows.
  struct Item {
    int64_t job, i0, i1, lo, hi, offset;
  };
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t k = 0; k < n; ++k) {
    const Job<scalar_t>& job = jobs[k];
    if (job.out == 0 || job.in == 0) continue;
    for (int64_t i0 = 0; i0 < job.out; i0 += kRowsPerChunk) {
      Item it{k, i0, std::min(job.out, i0 + kRowsPerChunk), 0, 0, 0};
      chunk_span(job, align_corners, it.i0, it.i1, &it.lo, &it.hi);
      if (job.gmod != nullptr) {
        it.offset = total;
        total += (it.hi - it.lo + 1) * (dense(job) ? job.m2 : job.in);
      }
      items.push_back(it);
    }
  }
  std::vector<scalar_t> partials(static_cast<size_t>(total), scalar_t(0));
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const Item& it = items[q];
      const Job<scalar_t>& job = jobs[it.job];
      scalar_t* partial = partials.data() + it.offset;
      switch (dense(job) ? job.m2 : 0) {
        case 1: backward_chunk_dense<scalar_t, 1>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 2: backward_chunk_dense<scalar_t, 2>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 3: backward_chunk_dense<scalar_t, 3>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 4: backward_chunk_dense<scalar_t, 4>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 5: backward_chunk_dense<scalar_t, 5>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 6: backward_chunk_dense<scalar_t, 6>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 7: backward_chunk_dense<scalar_t, 7>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        case 8: backward_chunk_dense<scalar_t, 8>(job, align_corners, it.i0, it.i1, it.lo, partial); break;
        default: backward_chunk(job, align_corners, it.i0, it.i1, it.lo, partial); break;
      }
    }
  });
  // Level 2, per job: T = sum of the chunk partials in chunk order, then grad_M = T B (accumulated in double).
  std::vector<int64_t> first(n + 1, 0);
  {
    int64_t q = 0;
    for (int64_t k = 0; k < n; ++k) {
      first[k] = q;
      while (q < static_cast<int64_t>(items.size()) && items[q].job == k) ++q;
    }
    first[n] = q;
  }
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      Job<scalar_t>& job = jobs[k];
      if (job.gmod == nullptr) continue;
      const int64_t I = job.in, m1 = job.m1, m2 = job.m2;
      std::vector<double> gm(static_cast<size_t>(m1 * m2), 0.0);
      if (I > 0 && job.out > 0 && dense(job)) {  // the partials are [hi - lo + 1, m2] already
        for (int64_t q = first[k]; q < first[k + 1]; ++q) {
          const Item& it = items[q];
          const scalar_t* p = partials.data() + it.offset;
          for (int64_t v = 0; v < (it.hi - it.lo + 1) * m2; ++v) gm[it.lo * m2 + v] += static_cast<double>(p[v]);
        }
      } else if (I > 0 && job.out > 0) {
        std::vector<scalar_t> T(static_cast<size_t>(m1 * I), scalar_t(0));
        using Vec = at::vec::Vectorized<scalar_t>;
        for (int64_t q = first[k]; q < first[k + 1]; ++q) {
          const Item& it = items[q];
          for (int64_t r = it.lo; r <= it.hi; ++r) {
            scalar_t* t = T.data() + r * I;
            const scalar_t* p = partials.data() + it.offset + (r - it.lo) * I;
            int64_t j = 0;
            for (; j + Vec::size() <= I; j += Vec::size()) (Vec::loadu(t + j) + Vec::loadu(p + j)).store(t + j);
            for (; j < I; ++j) t[j] += p[j];
          }
        }
        const scalar_t sx = source_scale<scalar_t>(m2, I, align_corners);
        int64_t idx[kTapBlock * 4];
        scalar_t bw[kTapBlock * 4];
        for (int64_t j0 = 0; j0 < I; j0 += kTapBlock) {
          const int64_t nj = std::min(kTapBlock, I - j0);
          taps_block<scalar_t>(sx, j0, nj, m2, align_corners, idx, bw);
          for (int64_t l = 0; l < nj; ++l) {
            const int64_t* id = idx + 4 * l;
            const scalar_t* bl = bw + 4 * l;
            for (int64_t r = 0; r < m1; ++r) {
              const double v = static_cast<double>(T[r * I + j0 + l]);
              double* row = gm.data() + r * m2;
              for (int c = 0; c < 4; ++c) row[id[c]] += static_cast<double>(bl[c]) * v;
            }
          }
        }
      }
      for (int64_t q = 0; q < m1 * m2; ++q) job.gmod[q] = static_cast<scalar_t>(gm[q]);
    }
  });
}

template <typename scalar_t>
Job<scalar_t> make_job(const at::Tensor& w, const at::Tensor& mod) {
  Job<scalar_t> job;
  job.w = w.data_ptr<scalar_t>();
  job.mod = mod.data_ptr<scalar_t>();
  job.out = w.size(0);
  job.in = fan_in(w);
  job.m1 = mod.size(0);
  job.m2 = mod.size(1);
  return job;
}

void forward_into(const char* op, at::TensorList weights, at::TensorList mods, bool align_corners,
                  std::vector<at::Tensor>& outs, bool caller_out) {
  if (weights.empty()) return;
  std::vector<at::Tensor> wc, mc;
  for (size_t k = 0; k < weights.size(); ++k) {
    wc.push_back(weights[k].contiguous());
    mc.push_back(mods[k].contiguous());
  }
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "bicubic_modulate", [&] {
    std::vector<Job<scalar_t>> jobs;
    for (size_t k = 0; k < wc.size(); ++k) {
      TORCH_CHECK(wc[k].scalar_type() == weights[0].scalar_type(), op, ": weights[", k, "] must have the dtype of weights[0] (",
                  weights[0].scalar_type(), "), got ", wc[k].scalar_type());
      if (wc[k].numel() == 0) continue;
      Job<scalar_t> job = make_job<scalar_t>(wc[k], mc[k]);
      job.dst = outs[k].data_ptr<scalar_t>();
      jobs.push_back(std::move(job));
    }
    forward_jobs(jobs, align_corners, caller_out);
  });
}

at::Tensor bicubic_modulate_cpu(const at::Tensor& weight, const at::Tensor& mod, bool align_corners) {
  check_weight_mod("bicubic_modulate", weight, mod);
  std::vector<at::Tensor> outs{at::empty(weight.sizes(), weight.options())};
  forward_into("bicubic_modulate", {weight}, {mod}, align_corners, outs, false);
  return outs[0];
}

void bicubic_modulate_out_cpu(const at::Tensor& weight, const at::Tensor& mod, bool align_corners, const at::Tensor& out) {
  check_weight_mod("bicubic_modulate_out_", weight, mod);
  check_out("bicubic_modulate_out_", out, weight);
  std::vector<at::Tensor> outs{out};
  forward_into("bicubic_modulate_out_", {weight}, {mod}, align_corners, outs, true);
}

std::vector<at::Tensor> bicubic_modulate_multi_cpu(at::TensorList weights, at::TensorList mods, bool align_corners) {
  check_lists("bicubic_modulate_multi", weights, mods);
  std::vector<at::Tensor> outs;
  for (const auto& w : weights) outs.push_back(at::empty(w.sizes(), w.options()));
  forward_into("bicubic_modulate_multi", weights, mods, align_corners, outs, false);
  return outs;
}

void bicubic_modulate_multi_out_cpu(at::TensorList weights, at::TensorList mods, bool align_corners, at::TensorList outs) {
  check_lists("bicubic_modulate_multi_out_", weights, mods);
  TORCH_CHECK(outs.size() == weights.size(), "bicubic_modulate_multi_out_: outs must have the length of weights (",
              weights.size(), "), got ", outs.size());
  for (size_t k = 0; k < outs.size(); ++k) check_out("bicubic_modulate_multi_out_", outs[k], weights[k], k);
  std::vector<at::Tensor> o(outs.begin(), outs.end());
  forward_into("bicubic_modulate_multi_out_", weights, mods, align_corners, o, true);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> backward_impl(const char* op, at::TensorList grads,
                                                                           at::TensorList weights, at::TensorList mods,
                                                                           bool align_corners, bool weight_requires_grad,
                                                                           bool mod_requires_grad) {
  check_lists(op, weights, mods);
  TORCH_CHECK(grads.size() == weights.size(), op, ": grads must have the length of weights (", weights.size(), "), got ",
              grads.size());
  for (size_t k = 0; k < grads.size(); ++k) check_same_as_weight(op, "grads", grads[k], weights[k], k);
  std::vector<at::Tensor> gws, gms;
  std::vector<at::Tensor> gc, wc, mc;
  for (size_t k = 0; k < weights.size(); ++k) {
    if (weight_requires_grad) gws.push_back(at::empty(weights[k].sizes(), weights[k].options()));
    if (mod_requires_grad) gms.push_back(at::empty(mods[k].sizes(), mods[k].options()));
    gc.push_back(grads[k].contiguous());
    wc.push_back(weights[k].contiguous());
    mc.push_back(mods[k].contiguous());
  }
  if (weights.empty() || !(weight_requires_grad || mod_requires_grad)) return {gws, gms};
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "bicubic_modulate", [&] {
    std::vector<Job<scalar_t>> jobs;
    for (size_t k = 0; k < wc.size(); ++k) {
      TORCH_CHECK(wc[k].scalar_type() == weights[0].scalar_type(), op, ": weights[", k,
                  "] must have the dtype of weights[0] (", weights[0].scalar_type(), "), got ", wc[k].scalar_type());
      // grad_M of an identity-size grid: G * W elementwise (bicubic_check.h); grad_W still from the kernel.
      const bool copy_gmod = mod_requires_grad && identity_grid(wc[k], mc[k]);
      if (copy_gmod) at::mul_out(gms[k], gc[k].view(mc[k].sizes()), wc[k].view(mc[k].sizes()));
      if (copy_gmod && !weight_requires_grad) continue;
      Job<scalar_t> job = make_job<scalar_t>(wc[k], mc[k]);
      job.grad = gc[k].data_ptr<scalar_t>();
      job.dst = weight_requires_grad ? gws[k].data_ptr<scalar_t>() : nullptr;
      job.gmod = mod_requires_grad && !copy_gmod ? gms[k].data_ptr<scalar_t>() : nullptr;
      jobs.push_back(std::move(job));
    }
    backward_jobs(jobs, align_corners);
  });
  return {gws, gms};
}

std::tuple<at::Tensor, at::Tensor> bicubic_modulate_backward_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                                                 const at::Tensor& mod, bool align_corners,
                                                                 bool weight_requires_grad, bool mod_requires_grad) {
  check_weight_mod("bicubic_modulate_backward", weight, mod);
  check_same_as_weight("bicubic_modulate_backward", "grad", grad, weight);
  auto r = backward_impl("bicubic_modulate_backward", {grad}, {weight}, {mod}, align_corners, weight_requires_grad,
                         mod_requires_grad);
  return {weight_requires_grad ? std::get<0>(r)[0] : at::empty({0}, weight.options()),
          mod_requires_grad ? std::get<1>(r)[0] : at::empty({0}, mod.options())};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> bicubic_modulate_multi_backward_cpu(
    at::TensorList grads, at::TensorList weights, at::TensorList mods, bool align_corners, bool weight_requires_grad,
    bool mod_requires_grad) {
  return backward_impl("bicubic_modulate_multi_backward", grads, weights, mods, align_corners, weight_requires_grad,
                       mod_requires_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CPU, m) {
  m.impl("bicubic_modulate", &bicubic_modulate_cpu);
  m.impl("bicubic_modulate_out_", &bicubic_modulate_out_cpu);
  m.impl("bicubic_modulate_backward", &bicubic_modulate_backward_cpu);
  m.impl("bicubic_modulate_multi", &bicubic_modulate_multi_cpu);
  m.impl("bicubic_modulate_multi_out_", &bicubic_modulate_multi_out_cpu);
  m.impl("bicubic_modulate_multi_backward", &bicubic_modulate_multi_backward_cpu);
}
