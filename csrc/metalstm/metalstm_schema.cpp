// Schemas of the fused per-row meta-LSTM ops (cltk.ops.metalstm): one step of an L-layer stacked LSTM
// (torch.nn.LSTM's cell, gate order i, f, g, o) plus the output head out = scale * tanh(w_out . h_L + b_out)
// [* multiply], for N independent rows. The weights are nn.LSTM's: w_ih0 [4H, F] (layer 0), w_ih [L-1, 4H, H]
// (layers 1..L-1), w_hh [L, 4H, H], b [L, 4H] (= b_ih + b_hh); the head w_out [H], b_out and scale (one element
// each). The state h, c is [L, H, N], unit-major
// (nn.LSTM's (h_0, c_0) transposed in its last two dimensions) so that a tile of rows is contiguous. Kernels: metalstm_cpu.cpp (CPU),
// metalstm_cuda_glue.cpp (CUDA). The backward returns an empty tensor in place of a gradient not asked for.
#include <torch/library.h>

#define CLTK_METALSTM_PARAMS \
  "Tensor w_ih0, Tensor w_ih, Tensor w_hh, Tensor b, Tensor w_out, Tensor b_out, Tensor scale"

TORCH_LIBRARY_FRAGMENT(cltk, m) {
  // h, c are advanced one step in place; returns out [N].
  m.def("meta_lstm_(Tensor x, Tensor(a!) h, Tensor(b!) c, " CLTK_METALSTM_PARAMS
        ", Tensor? multiply=None) -> Tensor");
  // Functional step: (out [N], h_new [L, H, N], c_new [L, H, N]).
  m.def("meta_lstm(Tensor x, Tensor h, Tensor c, " CLTK_METALSTM_PARAMS
        ", Tensor? multiply=None) -> (Tensor, Tensor, Tensor)");
  // Functional step writing the new state into h_out, c_out (persistent buffers, distinct from h, c).
  m.def("meta_lstm_out_(Tensor x, Tensor h, Tensor c, " CLTK_METALSTM_PARAMS
        ", Tensor? multiply, Tensor(a!) h_out, Tensor(b!) c_out) -> Tensor");
  // Gradients of one step (gates recomputed from x, h, c): (grad_x, grad_h, grad_c, grad_w_ih0, grad_w_ih,
  // grad_w_hh, grad_b, grad_w_out, grad_b_out, grad_scale, grad_multiply). grad_out [N], grad_h_new and
  // grad_c_new [L, H, N] may be None (zero).
  m.def("meta_lstm_backward(Tensor? grad_out, Tensor? grad_h_new, Tensor? grad_c_new, Tensor x, Tensor h, "
        "Tensor c, " CLTK_METALSTM_PARAMS
        ", Tensor? multiply, bool input_requires_grad, bool state_requires_grad, bool weights_requires_grad, "
        "bool multiply_requires_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor, Tensor)");
}
