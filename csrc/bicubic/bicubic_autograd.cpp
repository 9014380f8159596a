// Autograd of the multi-tensor bicubic-modulation ops, in C++ for every device: one graph node for the whole
// list, whose backward is one bicubic_modulate_multi_backward call. A backbone's 53 weights thus cost one C++
// node instead of a Python autograd.Function with 159 arguments (the wrapper's overhead is measured in
// docs/bicubic_kernels.md).
//
// The node is a torch::autograd::Node of its own, as torch's generated backward nodes are, rather than a
// torch::autograd::Function: that saves the Function's per-argument bookkeeping (edges, output metadata and saved
// variables for all 3n tensors, its input and output wrapping in the backward), about 0.1 ms per call of 53 small
// weights (docs/bicubic_kernels.md). The weights and mods are kept as plain tensors with their versions at the
// forward and checked in the backward, as saved variables are (saved-tensor hooks do not see them).
//
// bicubic_modulate_multi_out_ writes W_eff into the caller's buffers: they are treated as dirty, as torch's own
// in-place ops treat theirs (version bumped, history rebased onto the node). Without grad mode, or with nothing
// requiring grad, the ops run without a node (buffers still get their version bumped). Forward-mode AD is refused.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "bicubic/bicubic_check.h"

namespace {

using torch::autograd::variable_list;

const c10::TypedOperatorHandle<std::vector<at::Tensor>(at::TensorList, at::TensorList, bool)>& multi_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cltk::bicubic_modulate_multi", "")
                             .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList, bool)>();
  return op;
}

const c10::TypedOperatorHandle<void(at::TensorList, at::TensorList, bool, at::TensorList)>& multi_out_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cltk::bicubic_modulate_multi_out_", "")
                             .typed<void(at::TensorList, at::TensorList, bool, at::TensorList)>();
  return op;
}

using BackwardSig = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>>(at::TensorList, at::TensorList,
                                                                                  at::TensorList, bool, bool, bool);
const c10::TypedOperatorHandle<BackwardSig>& multi_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cltk::bicubic_modulate_multi_backward", "")
                             .typed<BackwardSig>();
  return op;
}

// The node of one call: its inputs are the gradients of the n outputs, its outputs the gradients of the n weights
// and the n mods (the next edges, in that order).
struct ModulateMultiBackward : public torch::autograd::Node {
  explicit ModulateMultiBackward(torch::autograd::edge_list&& edges) : Node(std::move(edges)) {}

  std::vector<at::Tensor> weights, mods;
  std::vector<uint32_t> versions;  // of the weights, then the mods, at the forward
  bool align_corners = false;
  bool released = false;

  std::string name() const override { return "BicubicModulateMultiBackward"; }

  void release_variables() override {
    weights.clear();
    mods.clear();
    released = true;
  }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(!released, torch::autograd::ERR_BACKWARD_TWICE);
    const size_t n = weights.size();
    for (size_t k = 0; k < 2 * n; ++k) {
      const bool is_w = k < n;
      const at::Tensor& t = is_w ? weights[k] : mods[k - n];
      TORCH_CHECK(t._version() == versions[k], "one of the variables needed for gradient computation has been modified "
                  "by an inplace operation: bicubic_modulate_multi's ", is_w ? "weights[" : "mods[", is_w ? k : k - n,
                  "] (shape ", t.sizes(), ") is at version ", t._version(), "; expected version ", versions[k],
                  " instead");
    }
    bool need_w = false, need_m = false;
    for (size_t k = 0; k < n; ++k) {
      need_w = need_w || should_compute_output(k);
      need_m = need_m || should_compute_output(n + k);
      if (!grads[k].defined()) grads[k] = at::zeros_like(weights[k]);  // an output the loss did not use
    }
    std::vector<at::Tensor> gws, gms;
    {
      // The backward op has no autograd of its own: without create_graph, skip the autograd fallback, which boxes
      // all 3n tensors (with create_graph the fallback still sees the call).
      std::optional<at::AutoDispatchBelowADInplaceOrView> below;
      if (!at::GradMode::is_enabled()) below.emplace();
      std::tie(gws, gms) = multi_backward_op().call(grads, weights, mods, align_corners, need_w, need_m);
    }
    variable_list result(2 * n);
    for (size_t k = 0; k < n; ++k) {
      if (should_compute_output(k)) result[k] = std::move(gws[k]);
      if (should_compute_output(n + k)) result[n + k] = std::move(gms[k]);
    }
    return result;
  }
};

c10::intrusive_ptr<ModulateMultiBackward> make_node(at::TensorList weights, at::TensorList mods, bool align_corners) {
  auto node = c10::make_intrusive<ModulateMultiBackward>(torch::autograd::collect_next_edges(weights, mods));
  node->weights = weights.vec();
  node->mods = mods.vec();
  node->versions.reserve(2 * weights.size());
  for (const auto& t : weights) node->versions.push_back(t._version());
  for (const auto& t : mods) node->versions.push_back(t._version());
  node->align_corners = align_corners;
  return node;
}

void refuse_forward_ad(const char* op, at::TensorList weights, at::TensorList mods) {
  TORCH_CHECK(!torch::autograd::isFwGradDefinedTensorList(weights) &&
                  !torch::autograd::isFwGradDefinedTensorList(mods),
              op, ": forward-mode AD is not supported (a weight or mod has a tangent)");
}

// Whether the call needs a graph node: grad mode on and some weight or mod requiring grad.
bool records(at::TensorList weights, at::TensorList mods) {
  if (!at::GradMode::is_enabled()) return false;
  for (const auto& t : weights)
    if (t.requires_grad()) return true;
  for (const auto& t : mods)
    if (t.requires_grad()) return true;
  return false;
}

std::vector<at::Tensor> bicubic_modulate_multi_autograd(at::TensorList weights, at::TensorList mods, bool align_corners) {
  refuse_forward_ad("bicubic_modulate_multi", weights, mods);
  std::vector<at::Tensor> result;
  {
    at::AutoDispatchBelowADInplaceOrView below;
    result = multi_op().call(weights, mods, align_corners);
  }
  if (records(weights, mods)) torch::autograd::set_history(result, make_node(weights, mods, align_corners));
  return result;
}

void bicubic_modulate_multi_out_autograd(at::TensorList weights, at::TensorList mods, bool align_corners,
                                         at::TensorList outs) {
  refuse_forward_ad("bicubic_modulate_multi_out_", weights, mods);
  for (size_t k = 0; k < outs.size(); ++k) {
    TORCH_CHECK_VALUE(!(outs[k].is_leaf() && outs[k].requires_grad()), "bicubic_modulate_multi_out_: ",
                      cltk_bicubic::ArgName{"outs", static_cast<int64_t>(k)},
                      " must not be a leaf that requires grad (it is overwritten in place)");
  }
  {
    at::AutoDispatchBelowADInplaceOrView below;
    multi_out_op().call(weights, mods, align_corners, outs);
  }
  for (const auto& o : outs) torch::autograd::impl::bump_version(o);
  if (!records(weights, mods)) return;
  const auto node = make_node(weights, mods, align_corners);
  for (const auto& o : outs) torch::autograd::impl::rebase_history(o, {node, node->add_input_metadata(o)});
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, Autograd, m) {
  m.impl("bicubic_modulate_multi", &bicubic_modulate_multi_autograd);
  m.impl("bicubic_modulate_multi_out_", &bicubic_modulate_multi_out_autograd);
}
