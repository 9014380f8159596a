// Autograd of the multi-tensor bicubic-modulation ops, in C++ for every device: one graph node for the whole
// list, whose backward is one bicubic_modulate_multi_backward call. A backbone's 53 weights thus cost one C++
// node instead of a Python autograd.Function with 159 arguments (the wrapper's overhead is measured in
// docs/bicubic_kernels.md).
//
// bicubic_modulate_multi_out_ writes W_eff into the caller's buffers: they are marked dirty, so each buffer
// itself carries the node as its history afterwards (and its version counter is bumped), as with torch's own
// in-place ops. The weights and mods are saved for the backward with the usual version check. Without grad mode, or
// with nothing requiring grad, the ops run without a node (buffers still get their version bumped).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "bicubic/bicubic_check.h"

namespace {

using torch::autograd::AutogradContext;
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

// Inputs: weights (n), mods (n), align_corners, outs (n, or none for fresh outputs).
struct ModulateMulti : public torch::autograd::Function<ModulateMulti> {
  static variable_list forward(AutogradContext* ctx, at::TensorList weights, at::TensorList mods, bool align_corners,
                               at::TensorList outs) {
    const int64_t n = static_cast<int64_t>(weights.size());
    variable_list result;
    {
      at::AutoDispatchBelowADInplaceOrView below;
      if (outs.empty()) {
        result = multi_op().call(weights, mods, align_corners);
      } else {
        multi_out_op().call(weights, mods, align_corners, outs);
        result = outs.vec();
        ctx->mark_dirty(result);
      }
    }
    variable_list saved;
    saved.reserve(2 * n);
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), mods.begin(), mods.end());
    ctx->save_for_backward(std::move(saved));
    ctx->saved_data["align_corners"] = align_corners;
    ctx->saved_data["with_out"] = !outs.empty();
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const size_t n = saved.size() / 2;
    const at::TensorList weights(saved.data(), n), mods(saved.data() + n, n);
    bool need_w = false, need_m = false;
    for (size_t k = 0; k < n; ++k) {
      need_w = need_w || ctx->needs_input_grad(k);
      need_m = need_m || ctx->needs_input_grad(n + k);
    }
    std::vector<at::Tensor> gws, gms;
    {
      // The backward op has no autograd of its own: without create_graph, skip the autograd fallback, which boxes
      // all 3n tensors (with create_graph the fallback still sees the call, as before).
      std::optional<at::AutoDispatchBelowADInplaceOrView> below;
      if (!at::GradMode::is_enabled()) below.emplace();
      std::tie(gws, gms) = multi_backward_op().call(grads, weights, mods, ctx->saved_data["align_corners"].toBool(),
                                                    need_w, need_m);
    }
    // One gradient per forward input: weights, mods, align_corners, outs.
    variable_list result(ctx->saved_data["with_out"].toBool() ? 3 * n + 1 : 2 * n + 1);
    for (size_t k = 0; k < n; ++k) {
      if (ctx->needs_input_grad(k)) result[k] = std::move(gws[k]);
      if (ctx->needs_input_grad(n + k)) result[n + k] = std::move(gms[k]);
    }
    return result;
  }
};

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
  if (!records(weights, mods)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return multi_op().call(weights, mods, align_corners);
  }
  return ModulateMulti::apply(weights, mods, align_corners, at::TensorList());
}

void bicubic_modulate_multi_out_autograd(at::TensorList weights, at::TensorList mods, bool align_corners,
                                         at::TensorList outs) {
  for (size_t k = 0; k < outs.size(); ++k) {
    TORCH_CHECK_VALUE(!(outs[k].is_leaf() && outs[k].requires_grad()), "bicubic_modulate_multi_out_: ",
                      cltk_bicubic::ArgName{"outs", static_cast<int64_t>(k)},
                      " must not be a leaf that requires grad (it is overwritten in place)");
  }
  if (!records(weights, mods)) {
    {
      at::AutoDispatchBelowADInplaceOrView below;
      multi_out_op().call(weights, mods, align_corners, outs);
    }
    for (const auto& o : outs) torch::autograd::impl::bump_version(o);
    return;
  }
  ModulateMulti::apply(weights, mods, align_corners, outs);
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, Autograd, m) {
  m.impl("bicubic_modulate_multi", &bicubic_modulate_multi_autograd);
  m.impl("bicubic_modulate_multi_out_", &bicubic_modulate_multi_out_autograd);
}
