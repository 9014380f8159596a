// Bicubic source taps shared by the CPU kernels, the CUDA kernels and the CUDA emulation build (torch-free).
//
// One output index `dst` of an upsampling from `in` to `out` samples reads four input samples
// idx[k] = clamp(base - 1 + k, 0, in - 1) with weights w[k]. The formulas replicate PyTorch's
// upsample_bicubic2d (ATen/native/UpSample.h): area_pixel_compute_scale / area_pixel_compute_source_index
// with cubic=true (negative source indices allowed), guard_index_and_lambda (floorf, then the fraction
// clamped to [0, 1]) and get_cubic_upsample_coefficients with A = -0.75, all in the op-math type
// (float for float, double for double), so that the taps are the ones F.interpolate uses.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(CLTK_CUDA_EMU)
#define CLTK_BICUBIC_HD __host__ __device__ __forceinline__
#else
#define CLTK_BICUBIC_HD inline
#endif

namespace cltk_bicubic {

// Source-index step for `out` output samples taken from `in` input samples (F.interpolate with size=,
// so no user scale factor).
template <typename opmath_t>
CLTK_BICUBIC_HD opmath_t source_scale(int64_t in, int64_t out, bool align_corners) {
  if (align_corners) {
    return out > 1 ? static_cast<opmath_t>(in - 1) / static_cast<opmath_t>(out - 1) : static_cast<opmath_t>(0);
  }
  return static_cast<opmath_t>(in) / static_cast<opmath_t>(out);
}

template <typename opmath_t>
CLTK_BICUBIC_HD opmath_t cubic_conv1(opmath_t x, opmath_t A) {
  return ((A + 2) * x - (A + 3)) * x * x + 1;
}

template <typename opmath_t>
CLTK_BICUBIC_HD opmath_t cubic_conv2(opmath_t x, opmath_t A) {
  return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A;
}

// The unclamped base index (floor of the source position, capped at in - 1, as PyTorch does) of output
// sample `dst`; taps are base - 1 .. base + 2 before clamping. Non-decreasing in dst.
template <typename opmath_t>
CLTK_BICUBIC_HD int64_t tap_base(opmath_t scale, int64_t dst, int64_t in, bool align_corners, opmath_t* lambda) {
  opmath_t real;
  if (align_corners) {
    real = scale * static_cast<opmath_t>(dst);
  } else {
    // One rounding, as PyTorch's kernels get it from FP contraction (an FMA in its AVX2 / AVX512 and CUDA builds):
    // with two roundings a source position such as 3/9 * 1.5 - 0.5 in double lands on 0 instead of -2.8e-17, the
    // floor moves by one and a zero-weight tap reads the neighbour (0 * NaN: NaN where F.interpolate has none).
    const opmath_t d = static_cast<opmath_t>(dst) + static_cast<opmath_t>(0.5);
#if defined(__CUDA_ARCH__)
    real = fma(scale, d, -static_cast<opmath_t>(0.5));
#else
    real = std::fma(scale, d, -static_cast<opmath_t>(0.5));
#endif
  }
  // floorf on purpose, also for double: PyTorch's guard_index_and_lambda does the same.
  int64_t base = static_cast<int64_t>(floorf(static_cast<float>(real)));
  if (base > in - 1) base = in - 1;
  opmath_t t = real - static_cast<opmath_t>(base);
  t = t < static_cast<opmath_t>(0) ? static_cast<opmath_t>(0) : t;
  t = t > static_cast<opmath_t>(1) ? static_cast<opmath_t>(1) : t;
  *lambda = t;
  return base;
}

CLTK_BICUBIC_HD int64_t clamp_index(int64_t i, int64_t in) {
  return i < 0 ? 0 : (i > in - 1 ? in - 1 : i);
}

// Four clamped taps and their weights for output sample `dst`; returns the unclamped base.
template <typename opmath_t>
CLTK_BICUBIC_HD int64_t bicubic_taps(opmath_t scale, int64_t dst, int64_t in, bool align_corners, int64_t idx[4],
                                     opmath_t w[4]) {
  opmath_t t;
  const int64_t base = tap_base<opmath_t>(scale, dst, in, align_corners, &t);
  const opmath_t A = static_cast<opmath_t>(-0.75);
  const opmath_t one = static_cast<opmath_t>(1);
  w[0] = cubic_conv2<opmath_t>(t + one, A);
  w[1] = cubic_conv1<opmath_t>(t, A);
  w[2] = cubic_conv1<opmath_t>(one - t, A);
  w[3] = cubic_conv2<opmath_t>(one - t + one, A);
  for (int k = 0; k < 4; ++k) idx[k] = clamp_index(base - 1 + k, in);
  return base;
}

}  // namespace cltk_bicubic
