// extern "C" entry points around the meta-LSTM CUDA launchers, for the emulation tests
// (tests/emu/test_metalstm_emu.py). Pointers are host memory; the emulator runs the kernels on the CPU.
#include <cstdint>

#include "metalstm/metalstm_cuda.h"

#define CLTK_METALSTM_EMU(T, SFX)                                                                                \
  int metalstm_emu_fwd_##SFX(const T* x, const T* h, const T* c, const T* w_ih0, const T* w_ih, const T* w_hh,   \
                             const T* b, const T* w_out, const T* b_out, const T* scale, const T* mult, T* out,   \
                             T* h_out, T* c_out, int64_t N, int64_t F, int64_t H, int64_t L) {                   \
    return static_cast<int>(launch_meta_lstm_forward<T>(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale, mult, \
                                                        out, h_out, c_out, N, F, H, L, nullptr));                 \
  }                                                                                                               \
  int metalstm_emu_bwd_##SFX(const T* x, const T* h, const T* c, const T* w_ih0, const T* w_ih, const T* w_hh,   \
                             const T* b, const T* w_out, const T* b_out, const T* scale, const T* mult,           \
                             const T* gout, const T* gh_new, const T* gc_new, T* gx, T* gh, T* gc, T* gmult,      \
                             T* gw_ih0, T* gw_ih, T* gw_hh, T* gb, T* gw_out, T* gb_out, T* gscale, int64_t N,     \
                             int64_t F, int64_t H, int64_t L) {                                                   \
    return static_cast<int>(launch_meta_lstm_backward<T>(x, h, c, w_ih0, w_ih, w_hh, b, w_out, b_out, scale,     \
                                                         mult, gout, gh_new, gc_new, gx, gh, gc, gmult, gw_ih0,   \
                                                         gw_ih, gw_hh, gb, gw_out, gb_out, gscale, N, F, H, L,    \
                                                         nullptr));                                               \
  }

extern "C" {
CLTK_METALSTM_EMU(float, f32)
CLTK_METALSTM_EMU(double, f64)
}
