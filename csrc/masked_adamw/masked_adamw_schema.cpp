// Schema of cltk::masked_adamw_, the fused row-masked AdamW step over lists of tensors (one call per
// (device, dtype) group). Kernels: masked_adamw_cpu.cpp (CPU), masked_adamw_cuda_glue.cpp (CUDA).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cltk, m) {
  // params[i], exp_avgs[i], exp_avg_sqs[i] are updated in place. row_masks[i] is None ("every row active")
  // or a bool [params[i].size(0)] where True marks a row that receives its gradient. steps[i] holds the
  // already-incremented step count (as torch.optim.AdamW's state["step"]); it is read, not written.
  m.def(
      "masked_adamw_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor?[] row_masks, Tensor[] steps, *, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool freeze_masked_rows=False) -> ()");
}
