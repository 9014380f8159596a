// extern "C" wrapper around launch_masked_adamw for the emulation tests (tests/emu/test_masked_adamw_emu.py):
// plain pointer arrays in, the launcher's cudaError_t out.
#include <cstdint>
#include <vector>

#include "masked_adamw/masked_adamw_cuda.h"

extern "C" int emu_masked_adamw(int dtype, void** params, void** grads, void** exp_avgs, void** exp_avg_sqs,
                                void** row_masks, const int64_t* numel, const int64_t* row_len,
                                const double* step_size, const double* bias_corr2_sqrt, int64_t n_tensors, double lr,
                                double beta1, double beta2, double eps, double weight_decay, int freeze,
                                int64_t chunk_elems) {
  std::vector<cltk::masked_adamw::TensorArgs> args(static_cast<size_t>(n_tensors));
  for (int64_t k = 0; k < n_tensors; ++k) {
    args[k] = {params[k], grads[k], exp_avgs[k], exp_avg_sqs[k], static_cast<const bool*>(row_masks[k]),
               numel[k], row_len[k], step_size[k], bias_corr2_sqrt[k]};
  }
  return static_cast<int>(cltk::masked_adamw::launch_masked_adamw(
      static_cast<cltk::masked_adamw::DType>(dtype), args.data(), n_tensors, lr, beta1, beta2, eps, weight_decay,
      freeze != 0, chunk_elems, nullptr));
}
