// cltk::masked_adamw_ on CPU: one fused pass of the AdamW step over p, g, m, v per tensor with a row mask
// folded in. A row whose mask is False reads its gradient as 0 without touching the gradient memory, so
// its momentum and weight decay still act ("zero the masked gradient rows, then torch.optim.AdamW"); with
// freeze_masked_rows it is skipped entirely.
//
// Memory traffic per element (4-byte dtype): active row 16 B read (p, g, m, v) + 12 B written (p, m, v);
// masked row 12 B read + 12 B written; frozen row 0 B.
//
// Arithmetic follows torch's fused CPU AdamW (aten/src/ATen/native/cpu/FusedAdamKernel.cpp): scalars in
// double, cast to the element type, then p *= (1 - lr*wd); m = lerp(m, g, 1 - beta1);
// v = v*beta2 + (1 - beta2)*g*g; p += -step_size * m / (sqrt(v)/sqrt(bc2) + eps). The reference is
// cltk.ops.masked_adamw.masked_adamw_ref.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "masked_adamw/masked_adamw_check.h"

namespace {

using cltk::masked_adamw::Prepared;

template <typename opmath_t>
struct Coeffs {
  opmath_t decay;          // 1 - lr * weight_decay
  opmath_t w1;             // 1 - beta1, the lerp weight
  opmath_t beta2, one_minus_beta2;
  opmath_t bc2_sqrt, eps;
  opmath_t neg_step_size;
  bool has_decay;
};

// Scalar body for one element; lerp written as torch's (fma around the nearer endpoint).
template <typename opmath_t>
inline void adamw_scalar(opmath_t& p, opmath_t g, opmath_t& m, opmath_t& v, const Coeffs<opmath_t>& c) {
  if (c.has_decay) p = p * c.decay;
  const opmath_t diff = g - m;
  m = std::abs(c.w1) < opmath_t(0.5) ? std::fma(c.w1, diff, m) : std::fma(c.w1 - opmath_t(1), diff, g);
  v = v * c.beta2 + c.one_minus_beta2 * g * g;
  const opmath_t denom = std::sqrt(v) / c.bc2_sqrt + c.eps;
  p = p + c.neg_step_size * m / denom;
}

// One contiguous span [0, n) of a tensor, all active (kHasGrad) or all masked (!kHasGrad).
template <typename scalar_t, bool kHasGrad>
void adamw_span(scalar_t* __restrict__ p, const scalar_t* __restrict__ g, scalar_t* __restrict__ m,
                scalar_t* __restrict__ v, int64_t n, const Coeffs<at::opmath_type<scalar_t>>& c) {
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, opmath_t>) {
    using Vec = at::vec::Vectorized<scalar_t>;
    constexpr int64_t kW = Vec::size();
    const Vec decay(c.decay), w1(c.w1), w1m1(c.w1 - scalar_t(1)), beta2(c.beta2), omb2(c.one_minus_beta2),
        bc2(c.bc2_sqrt), eps(c.eps), nss(c.neg_step_size), zero(scalar_t(0));
    const bool small_w = std::abs(c.w1) < scalar_t(0.5);
    for (; i + kW <= n; i += kW) {
      Vec pv = Vec::loadu(p + i);
      const Vec gv = kHasGrad ? Vec::loadu(g + i) : zero;
      Vec mv = Vec::loadu(m + i);
      Vec vv = Vec::loadu(v + i);
      if (c.has_decay) pv = pv * decay;
      const Vec diff = gv - mv;
      mv = small_w ? at::vec::fmadd(w1, diff, mv) : at::vec::fmadd(w1m1, diff, gv);
      vv = vv * beta2 + omb2 * gv * gv;
      const Vec denom = vv.sqrt() / bc2 + eps;
      pv = pv + nss * mv / denom;
      pv.store(p + i);
      mv.store(m + i);
      vv.store(v + i);
    }
  }
  for (; i < n; ++i) {
    opmath_t pp = static_cast<opmath_t>(p[i]);
    opmath_t mm = static_cast<opmath_t>(m[i]);
    opmath_t vv = static_cast<opmath_t>(v[i]);
    const opmath_t gg = kHasGrad ? static_cast<opmath_t>(g[i]) : opmath_t(0);
    adamw_scalar<opmath_t>(pp, gg, mm, vv, c);
    p[i] = static_cast<scalar_t>(pp);
    m[i] = static_cast<scalar_t>(mm);
    v[i] = static_cast<scalar_t>(vv);
  }
}

struct WorkItem {
  int32_t tensor;
  int64_t row_begin, row_end;
};

template <typename scalar_t>
void run_group(const std::vector<Prepared>& ts, double lr, double beta1, double beta2, double eps,
               double weight_decay, bool freeze) {
  using opmath_t = at::opmath_type<scalar_t>;
  // ~64K elements per work item: large enough to amortise the item, small enough to balance threads.
  constexpr int64_t kGrain = 1 << 16;
  std::vector<WorkItem> items;
  std::vector<Coeffs<opmath_t>> coeffs;
  coeffs.reserve(ts.size());
  for (size_t t = 0; t < ts.size(); ++t) {
    const Prepared& pr = ts[t];
    Coeffs<opmath_t> c;
    // Scalars are computed in double and cast once, as torch's fused kernel does.
    c.decay = static_cast<opmath_t>(1.0 - lr * weight_decay);
    c.has_decay = weight_decay != 0.0;
    c.w1 = static_cast<opmath_t>(1.0 - beta1);
    c.beta2 = static_cast<opmath_t>(beta2);
    c.one_minus_beta2 = static_cast<opmath_t>(1.0 - beta2);
    c.bc2_sqrt = static_cast<opmath_t>(pr.bias_corr2_sqrt);
    c.eps = static_cast<opmath_t>(eps);
    c.neg_step_size = static_cast<opmath_t>(-pr.step_size);
    coeffs.push_back(c);
    if (pr.param.numel() == 0) continue;
    const int64_t rows_per_item = std::max<int64_t>(1, kGrain / std::max<int64_t>(pr.row_len, 1));
    for (int64_t r = 0; r < pr.rows; r += rows_per_item) {
      items.push_back({static_cast<int32_t>(t), r, std::min(pr.rows, r + rows_per_item)});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t it = begin; it < end; ++it) {
      const WorkItem& w = items[it];
      const Prepared& pr = ts[w.tensor];
      const Coeffs<opmath_t>& c = coeffs[w.tensor];
      const int64_t L = pr.row_len;
      scalar_t* p = pr.param.data_ptr<scalar_t>();
      const scalar_t* g = pr.grad.const_data_ptr<scalar_t>();
      scalar_t* m = pr.exp_avg.data_ptr<scalar_t>();
      scalar_t* v = pr.exp_avg_sq.data_ptr<scalar_t>();
      if (!pr.mask.defined()) {
        const int64_t o = w.row_begin * L, n = (w.row_end - w.row_begin) * L;
        adamw_span<scalar_t, true>(p + o, g + o, m + o, v + o, n, c);
        continue;
      }
      const bool* mk = pr.mask.const_data_ptr<bool>();
      // Rows are contiguous, so a run of rows with the same mask value is one contiguous span.
      int64_t r = w.row_begin;
      while (r < w.row_end) {
        const bool active = mk[r];
        int64_t r2 = r + 1;
        while (r2 < w.row_end && mk[r2] == active) ++r2;
        const int64_t o = r * L, n = (r2 - r) * L;
        if (active) {
          adamw_span<scalar_t, true>(p + o, g + o, m + o, v + o, n, c);
        } else if (!freeze) {
          adamw_span<scalar_t, false>(p + o, nullptr, m + o, v + o, n, c);
        }
        r = r2;
      }
    }
  });
}

void masked_adamw_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, const c10::List<std::optional<at::Tensor>>& row_masks,
                      at::TensorList steps, double lr, double beta1, double beta2, double eps, double weight_decay,
                      bool freeze_masked_rows) {
  const std::vector<Prepared> ts = cltk::masked_adamw::prepare(params, grads, exp_avgs, exp_avg_sqs, row_masks, steps,
                                                               lr, beta1, beta2, eps, weight_decay, at::kCPU);
  if (ts.empty()) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ts[0].param.scalar_type(), "masked_adamw_", [&] {
    run_group<scalar_t>(ts, lr, beta1, beta2, eps, weight_decay, freeze_masked_rows);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CPU, m) { m.impl("masked_adamw_", &masked_adamw_cpu); }
