// Argument checks shared by every kernel family. Each message names the op and the argument and
// gives the expected and actual values, e.g.
//   row_l1_accumulate_: y.size(-1) must equal acc.size(0) (= 3072), got 3071
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define CLTK_CHECK_DIM(op, t, d)                                                                   \
  TORCH_CHECK((t).dim() == (d), op ": " #t " must be " #d "-D, got ", (t).dim(), "-D tensor of shape ", \
              (t).sizes())

#define CLTK_CHECK_DTYPE(op, t, dt)                                                        \
  TORCH_CHECK((t).scalar_type() == (dt), op ": " #t " must have dtype ", c10::toString(dt), \
              ", got ", (t).scalar_type())

#define CLTK_CHECK_FLOATING(op, t)                                                           \
  TORCH_CHECK((t).scalar_type() == at::kFloat || (t).scalar_type() == at::kDouble ||          \
                  (t).scalar_type() == at::kHalf || (t).scalar_type() == at::kBFloat16,       \
              op ": " #t " must be float32, float64, float16 or bfloat16, got ", (t).scalar_type())

#define CLTK_CHECK_SAME_DEVICE(op, a, b)                                                       \
  TORCH_CHECK((a).device() == (b).device(), op ": " #a " and " #b " must be on the same device, got ", \
              (a).device(), " and ", (b).device())

#define CLTK_CHECK_SAME_DTYPE(op, a, b)                                                          \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), op ": " #a " and " #b                      \
              " must have the same dtype, got ", (a).scalar_type(), " and ", (b).scalar_type())

#define CLTK_CHECK_CONTIGUOUS(op, t) \
  TORCH_CHECK((t).is_contiguous(), op ": " #t " must be contiguous (shape ", (t).sizes(), ", strides ", (t).strides(), ")")

#define CLTK_CHECK_SIZE(op, t, dim, expected)                                                      \
  TORCH_CHECK((t).size(dim) == (expected), op ": " #t ".size(" #dim ") must be ", (expected), ", got ", \
              (t).size(dim), " (shape ", (t).sizes(), ")")
