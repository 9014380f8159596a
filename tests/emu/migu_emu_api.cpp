// extern "C" entry points into the MIGU CUDA launchers (csrc/migu/migu_cuda.cu) for the emulation tests.
#include "migu/migu_cuda.h"

extern "C" {
long migu_row_l1_row_chunks(long rows, long d) { return (long)cltk::migu::row_l1_row_chunks(rows, d); }

int migu_row_l1_accumulate(float* acc, const void* y, int y_dtype, long rows, long d, long row_stride,
                           float* workspace, long row_chunks) {
  return (int)cltk::migu::launch_row_l1_accumulate(acc, y, y_dtype, rows, d, row_stride, workspace, row_chunks,
                                                   nullptr);
}

int migu_topk_row_mask_f32(const float* const* scores, bool* const* out, const int64_t* sizes, long n_layers,
                           double threshold) {
  return (int)cltk::migu::launch_topk_row_mask_f32(scores, out, sizes, n_layers, threshold, nullptr);
}

int migu_topk_row_mask_f64(const double* const* scores, bool* const* out, const int64_t* sizes, long n_layers,
                           double threshold) {
  return (int)cltk::migu::launch_topk_row_mask_f64(scores, out, sizes, n_layers, threshold, nullptr);
}
}
