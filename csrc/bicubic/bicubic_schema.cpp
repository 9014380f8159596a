// Schemas of the bicubic-modulation ops: W_eff = weight * up(mod), where up is PyTorch's bicubic
// upsampling (F.interpolate(mode="bicubic")) of the low-resolution grid mod [m1, m2] to weight's [out, in].
// The backward ops return an empty tensor in place of a gradient that was not asked for (the multi-tensor one an
// empty list, rather than one empty tensor per weight).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(cltk, m) {
  m.def("bicubic_modulate(Tensor weight, Tensor mod, bool align_corners=False) -> Tensor");
  m.def("bicubic_modulate_out_(Tensor weight, Tensor mod, bool align_corners, Tensor(a!) out) -> ()");
  m.def(
      "bicubic_modulate_backward(Tensor grad, Tensor weight, Tensor mod, bool align_corners, "
      "bool weight_requires_grad, bool mod_requires_grad) -> (Tensor, Tensor)");
  m.def("bicubic_modulate_multi(Tensor[] weights, Tensor[] mods, bool align_corners) -> Tensor[]");
  m.def(
      "bicubic_modulate_multi_out_(Tensor[] weights, Tensor[] mods, bool align_corners, Tensor(a!)[] outs) -> ()");
  m.def(
      "bicubic_modulate_multi_backward(Tensor[] grads, Tensor[] weights, Tensor[] mods, bool align_corners, "
      "bool weight_requires_grad, bool mod_requires_grad) -> (Tensor[], Tensor[])");
}
