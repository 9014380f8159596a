// extern "C" entry points around the bicubic-modulation CUDA launchers, for the emulation tests
// (tests/emu/test_bicubic_emu.py). Pointers are host memory; the emulator runs the kernels on the CPU.
#include <cstdint>

#include "bicubic/bicubic_cuda.h"

extern "C" {

int64_t bicubic_emu_fwd_workspace(int64_t out, int64_t in, int64_t m1, int64_t m2) {
  return bicubic_modulate_workspace(out, in, m1, m2);
}

int bicubic_emu_fwd_f32(const float* w, const float* mod, float* dst, float* ws, int64_t out, int64_t in, int64_t m1,
                        int64_t m2, int align_corners) {
  return static_cast<int>(launch_bicubic_modulate<float>(w, mod, dst, ws, out, in, m1, m2, align_corners != 0, nullptr));
}

int bicubic_emu_fwd_f64(const double* w, const double* mod, double* dst, double* ws, int64_t out, int64_t in,
                        int64_t m1, int64_t m2, int align_corners) {
  return static_cast<int>(
      launch_bicubic_modulate<double>(w, mod, dst, ws, out, in, m1, m2, align_corners != 0, nullptr));
}

int64_t bicubic_emu_bwd_workspace_f32(int64_t out, int64_t in, int64_t m1, int64_t m2, int align_corners) {
  return bicubic_modulate_backward_workspace<float>(out, in, m1, m2, align_corners != 0);
}

int64_t bicubic_emu_bwd_workspace_f64(int64_t out, int64_t in, int64_t m1, int64_t m2, int align_corners) {
  return bicubic_modulate_backward_workspace<double>(out, in, m1, m2, align_corners != 0);
}

int bicubic_emu_bwd_f32(const float* g, const float* w, const float* mod, float* gw, float* gm, float* ws, int64_t out,
                        int64_t in, int64_t m1, int64_t m2, int align_corners) {
  return static_cast<int>(
      launch_bicubic_modulate_backward<float>(g, w, mod, gw, gm, ws, out, in, m1, m2, align_corners != 0, nullptr));
}

int bicubic_emu_bwd_f64(const double* g, const double* w, const double* mod, double* gw, double* gm, double* ws,
                        int64_t out, int64_t in, int64_t m1, int64_t m2, int align_corners) {
  return static_cast<int>(
      launch_bicubic_modulate_backward<double>(g, w, mod, gw, gm, ws, out, in, m1, m2, align_corners != 0, nullptr));
}
}
