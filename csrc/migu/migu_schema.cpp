// Schemas of the MIGU ops (Python wrappers and references: cltk/ops/migu.py).
//   row_l1_accumulate_    acc[d] (fp32) += |y|.sum(all dims but the last), in place on acc
//   topk_row_mask         scores >= torch.quantile(scores, threshold), O(d) selection
//   topk_row_mask_batched the same for a list of per-layer scores in one call
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cltk, m) {
  m.def("row_l1_accumulate_(Tensor(a!) acc, Tensor y) -> ()");
  m.def("topk_row_mask(Tensor scores, float threshold) -> Tensor");
  m.def("topk_row_mask_batched(Tensor[] scores, float threshold) -> Tensor[]");
}
