// CPU kernels of the bicubic-modulation ops: W_eff = W * up(M), with up = F.interpolate(mode="bicubic") of
// M [m1, m2] to W's [out, in] (reference: cltk/ops/bicubic.py, bicubic_modulate_ref).
//
// up is separable, up(M) = A M B^T with A [out, m1] and B [in, m2] holding four taps per row. The forward
// first forms U = M B^T [m1, in] (the grid upsampled along the width only: m1 * in elements, tiny next to W
// for the usual m1 << out), then each output row is W[i] * sum_k a_ik U[r_ik], four contiguous rows of U
// combined per row of W. That is one pass reading W and writing W_eff: 2 * sizeof(T) bytes per element
// (U stays in cache). The column-then-row order of the sums is PyTorch's own.
//
// Backward: grad_W = G * up(M) in the same pass (only when W requires grad); grad_M = A^T (G * W) B, as a
// deterministic two-level reduction without atomics: rows are cut into fixed chunks (independent of the thread
// count); chunk c accumulates T_c = A_c^T (G * W)_c over the few rows of M its rows touch, then the partials
// are summed in chunk order and multiplied by B. Minimum traffic: read G and W (+ write grad_W):
// 2 (3) * sizeof(T) bytes per element.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "bicubic/bicubic_check.h"
#include "bicubic/bicubic_taps.h"

namespace {

using namespace cltk_bicubic;

constexpr int64_t kRowsPerChunk = 256;   // backward row chunk: fixed, so the sum order never depends on threads
constexpr int64_t kRowsPerBlock = 16;    // forward work item
constexpr int64_t kColTile = 1024;       // backward column tile: the chunk's partial rows stay in L1

// One weight of a (multi-)call. Pointers are to contiguous storage.
template <typename scalar_t>
struct Job {
  const scalar_t* w = nullptr;     // [out, in]
  const scalar_t* grad = nullptr;  // [out, in] (backward)
  const scalar_t* mod = nullptr;   // [m1, m2]
  scalar_t* dst = nullptr;         // [out, in]: W_eff (forward) or grad_W (backward, may be null)
  scalar_t* gmod = nullptr;        // [m1, m2] (backward, may be null)
  int64_t out = 0, in = 0, m1 = 0, m2 = 0;
  std::vector<scalar_t> U;         // [m1, in]
};

// U = M B^T: the grid upsampled along the width only.
template <typename scalar_t>
void width_upsample(Job<scalar_t>& job, bool align_corners) {
  using opmath_t = scalar_t;
  job.U.assign(static_cast<size_t>(job.m1 * job.in), scalar_t(0));
  const opmath_t sx = source_scale<opmath_t>(job.m2, job.in, align_corners);
  for (int64_t j = 0; j < job.in; ++j) {
    int64_t idx[4];
    opmath_t w[4];
    bicubic_taps<opmath_t>(sx, j, job.m2, align_corners, idx, w);
    for (int64_t r = 0; r < job.m1; ++r) {
      const scalar_t* row = job.mod + r * job.m2;
      opmath_t acc = row[idx[0]] * w[0];
      acc += row[idx[1]] * w[1];
      acc += row[idx[2]] * w[2];
      acc += row[idx[3]] * w[3];
      job.U[r * job.in + j] = acc;
    }
  }
}

// dst[i] = src[i] * sum_k a_ik U[r_ik] for rows [i0, i1).
template <typename scalar_t>
void modulate_rows(const Job<scalar_t>& job, const scalar_t* src, scalar_t* dst, bool align_corners, int64_t i0,
                   int64_t i1) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t I = job.in;
  const scalar_t sy = source_scale<scalar_t>(job.m1, job.out, align_corners);
  for (int64_t i = i0; i < i1; ++i) {
    int64_t idx[4];
    scalar_t a[4];
    bicubic_taps<scalar_t>(sy, i, job.m1, align_corners, idx, a);
    const scalar_t* u0 = job.U.data() + idx[0] * I;
    const scalar_t* u1 = job.U.data() + idx[1] * I;
    const scalar_t* u2 = job.U.data() + idx[2] * I;
    const scalar_t* u3 = job.U.data() + idx[3] * I;
    const scalar_t* s = src + i * I;
    scalar_t* d = dst + i * I;
    const Vec a0(a[0]), a1(a[1]), a2(a[2]), a3(a[3]);
    int64_t j = 0;
    for (; j + Vec::size() <= I; j += Vec::size()) {
      Vec up = Vec::loadu(u0 + j) * a0;
      up = up + Vec::loadu(u1 + j) * a1;
      up = up + Vec::loadu(u2 + j) * a2;
      up = up + Vec::loadu(u3 + j) * a3;
      (Vec::loadu(s + j) * up).store(d + j);
    }
    for (; j < I; ++j) {
      scalar_t up = u0[j] * a[0];
      up += u1[j] * a[1];
      up += u2[j] * a[2];
      up += u3[j] * a[3];
      d[j] = s[j] * up;
    }
  }
}

template <typename scalar_t>
void forward_jobs(std::vector<Job<scalar_t>>& jobs, bool align_corners) {
  at::parallel_for(0, static_cast<int64_t>(jobs.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) width_upsample(jobs[k], align_corners);
  });
  // Work items: (job, block of kRowsPerBlock rows), over all jobs at once.
  std::vector<int64_t> first_item(jobs.size() + 1, 0);
  for (size_t k = 0; k < jobs.size(); ++k)
    first_item[k + 1] = first_item[k] + (jobs[k].out + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t items = first_item.back();
  const int64_t grain = std::max<int64_t>(1, 65536 / (kRowsPerBlock * 256));
  at::parallel_for(0, items, grain, [&](int64_t b, int64_t e) {
    size_t k = std::upper_bound(first_item.begin(), first_item.end(), b) - first_item.begin() - 1;
    for (int64_t it = b; it < e; ++it) {
      while (it >= first_item[k + 1]) ++k;
      const Job<scalar_t>& job = jobs[k];
      const int64_t i0 = (it - first_item[k]) * kRowsPerBlock;
      const int64_t i1 = std::min(job.out, i0 + kRowsPerBlock);
      modulate_rows(job, job.w, job.dst, align_corners, i0, i1);
    }
  });
}

// Rows of M touched by output rows [i0, i1): [lo, hi].
template <typename scalar_t>
void chunk_span(const Job<scalar_t>& job, bool align_corners, int64_t i0, int64_t i1, int64_t* lo, int64_t* hi) {
  const scalar_t sy = source_scale<scalar_t>(job.m1, job.out, align_corners);
  scalar_t t;
  *lo = clamp_index(tap_base<scalar_t>(sy, i0, job.m1, align_corners, &t) - 1, job.m1);
  *hi = clamp_index(tap_base<scalar_t>(sy, i1 - 1, job.m1, align_corners, &t) + 2, job.m1);
}

// Backward of one chunk: partial [hi - lo + 1, in] = A_c^T (G * W)_c; grad_W rows when asked.
template <typename scalar_t>
void backward_chunk(const Job<scalar_t>& job, bool align_corners, int64_t i0, int64_t i1, int64_t lo,
                    scalar_t* partial) {
  using Vec = at::vec::Vectorized<scalar_t>;
  const int64_t I = job.in;
  const int64_t rows = i1 - i0;
  const scalar_t sy = source_scale<scalar_t>(job.m1, job.out, align_corners);
  std::vector<int64_t> idx(static_cast<size_t>(rows * 4));
  std::vector<scalar_t> a(static_cast<size_t>(rows * 4));
  for (int64_t i = i0; i < i1; ++i) bicubic_taps<scalar_t>(sy, i, job.m1, align_corners, &idx[(i - i0) * 4], &a[(i - i0) * 4]);
  const bool want_gw = job.dst != nullptr;
  for (int64_t j0 = 0; j0 < I; j0 += kColTile) {
    const int64_t j1 = std::min(I, j0 + kColTile);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t* id = &idx[(i - i0) * 4];
      const scalar_t* ai = &a[(i - i0) * 4];
      const scalar_t* g = job.grad + i * I;
      const scalar_t* w = job.w + i * I;
      scalar_t* t0 = partial + (id[0] - lo) * I;
      scalar_t* t1 = partial + (id[1] - lo) * I;
      scalar_t* t2 = partial + (id[2] - lo) * I;
      scalar_t* t3 = partial + (id[3] - lo) * I;
      const Vec a0(ai[0]), a1(ai[1]), a2(ai[2]), a3(ai[3]);
      int64_t j = j0;
      if (job.gmod != nullptr) {
        // Taps may coincide at the borders (clamped): the four updates are sequential on purpose.
        for (; j + Vec::size() <= j1; j += Vec::size()) {
          const Vec p = Vec::loadu(g + j) * Vec::loadu(w + j);
          (Vec::loadu(t0 + j) + p * a0).store(t0 + j);
          (Vec::loadu(t1 + j) + p * a1).store(t1 + j);
          (Vec::loadu(t2 + j) + p * a2).store(t2 + j);
          (Vec::loadu(t3 + j) + p * a3).store(t3 + j);
        }
        for (; j < j1; ++j) {
          const scalar_t p = g[j] * w[j];
          t0[j] += p * ai[0];
          t1[j] += p * ai[1];
          t2[j] += p * ai[2];
          t3[j] += p * ai[3];
        }
      }
      if (want_gw) {
        const scalar_t* u0 = job.U.data() + id[0] * I;
        const scalar_t* u1 = job.U.data() + id[1] * I;
        const scalar_t* u2 = job.U.data() + id[2] * I;
        const scalar_t* u3 = job.U.data() + id[3] * I;
        scalar_t* d = job.dst + i * I;
        j = j0;
        for (; j + Vec::size() <= j1; j += Vec::size()) {
          Vec up = Vec::loadu(u0 + j) * a0;
          up = up + Vec::loadu(u1 + j) * a1;
          up = up + Vec::loadu(u2 + j) * a2;
          up = up + Vec::loadu(u3 + j) * a3;
          (Vec::loadu(g + j) * up).store(d + j);
        }
        for (; j < j1; ++j) {
          scalar_t up = u0[j] * ai[0];
          up += u1[j] * ai[1];
          up += u2[j] * ai[2];
          up += u3[j] * ai[3];
          d[j] = g[j] * up;
        }
      }
    }
  }
}

template <typename scalar_t>
void backward_jobs(std::vector<Job<scalar_t>>& jobs, bool align_corners) {
  const int64_t n = static_cast<int64_t>(jobs.size());
  // grad_W needs U; grad_M needs none.
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k)
      if (jobs[k].dst != nullptr) width_upsample(jobs[k], align_corners);
  });
  // Level 1: one item per (job, chunk); each writes its own partial rows.
  struct Item {
    int64_t job, i0, i1, lo, hi, offset;
  };
  std::vector<Item> items;
  int64_t total = 0;
  for (int64_t k = 0; k < n; ++k) {
    const Job<scalar_t>& job = jobs[k];
    if (job.out == 0 || job.in == 0) continue;
    for (int64_t i0 = 0; i0 < job.out; i0 += kRowsPerChunk) {
      Item it{k, i0, std::min(job.out, i0 + kRowsPerChunk), 0, 0, 0};
      chunk_span(job, align_corners, it.i0, it.i1, &it.lo, &it.hi);
      if (job.gmod != nullptr) {
        it.offset = total;
        total += (it.hi - it.lo + 1) * job.in;
      }
      items.push_back(it);
    }
  }
  std::vector<scalar_t> partials(static_cast<size_t>(total), scalar_t(0));
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) {
      const Item& it = items[q];
      backward_chunk(jobs[it.job], align_corners, it.i0, it.i1, it.lo, partials.data() + it.offset);
    }
  });
  // Level 2, per job: T = sum of the chunk partials in chunk order, then grad_M = T B (accumulated in double).
  std::vector<int64_t> first(n + 1, 0);
  {
    int64_t q = 0;
    for (int64_t k = 0; k < n; ++k) {
      first[k] = q;
      while (q < static_cast<int64_t>(items.size()) && items[q].job == k) ++q;
    }
    first[n] = q;
  }
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      Job<scalar_t>& job = jobs[k];
      if (job.gmod == nullptr) continue;
      const int64_t I = job.in, m1 = job.m1, m2 = job.m2;
      std::vector<double> gm(static_cast<size_t>(m1 * m2), 0.0);
      if (I > 0 && job.out > 0) {
        std::vector<scalar_t> T(static_cast<size_t>(m1 * I), scalar_t(0));
        using Vec = at::vec::Vectorized<scalar_t>;
        for (int64_t q = first[k]; q < first[k + 1]; ++q) {
          const Item& it = items[q];
          for (int64_t r = it.lo; r <= it.hi; ++r) {
            scalar_t* t = T.data() + r * I;
            const scalar_t* p = partials.data() + it.offset + (r - it.lo) * I;
            int64_t j = 0;
            for (; j + Vec::size() <= I; j += Vec::size()) (Vec::loadu(t + j) + Vec::loadu(p + j)).store(t + j);
            for (; j < I; ++j) t[j] += p[j];
          }
        }
        const scalar_t sx = source_scale<scalar_t>(m2, I, align_corners);
        for (int64_t j = 0; j < I; ++j) {
          int64_t idx[4];
          scalar_t bw[4];
          bicubic_taps<scalar_t>(sx, j, m2, align_corners, idx, bw);
          for (int64_t r = 0; r < m1; ++r) {
            const double v = static_cast<double>(T[r * I + j]);
            double* row = gm.data() + r * m2;
            for (int c = 0; c < 4; ++c) row[idx[c]] += static_cast<double>(bw[c]) * v;
          }
        }
      }
      for (int64_t q = 0; q < m1 * m2; ++q) job.gmod[q] = static_cast<scalar_t>(gm[q]);
    }
  });
}

template <typename scalar_t>
Job<scalar_t> make_job(const at::Tensor& w, const at::Tensor& mod) {
  Job<scalar_t> job;
  job.w = w.data_ptr<scalar_t>();
  job.mod = mod.data_ptr<scalar_t>();
  job.out = w.size(0);
  job.in = w.size(1);
  job.m1 = mod.size(0);
  job.m2 = mod.size(1);
  return job;
}

void forward_into(const char* op, at::TensorList weights, at::TensorList mods, bool align_corners,
                  std::vector<at::Tensor>& outs) {
  if (weights.empty()) return;
  std::vector<at::Tensor> wc, mc;
  for (size_t k = 0; k < weights.size(); ++k) {
    wc.push_back(weights[k].contiguous());
    mc.push_back(mods[k].contiguous());
  }
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "bicubic_modulate", [&] {
    std::vector<Job<scalar_t>> jobs;
    for (size_t k = 0; k < wc.size(); ++k) {
      TORCH_CHECK(wc[k].scalar_type() == weights[0].scalar_type(), op, ": weights[", k, "] must have the dtype of weights[0] (",
                  weights[0].scalar_type(), "), got ", wc[k].scalar_type());
      if (wc[k].numel() == 0) continue;
      Job<scalar_t> job = make_job<scalar_t>(wc[k], mc[k]);
      job.dst = outs[k].data_ptr<scalar_t>();
      jobs.push_back(std::move(job));
    }
    forward_jobs(jobs, align_corners);
  });
}

at::Tensor bicubic_modulate_cpu(const at::Tensor& weight, const at::Tensor& mod, bool align_corners) {
  check_weight_mod("bicubic_modulate", weight, mod);
  std::vector<at::Tensor> outs{at::empty(weight.sizes(), weight.options())};
  forward_into("bicubic_modulate", {weight}, {mod}, align_corners, outs);
  return outs[0];
}

void bicubic_modulate_out_cpu(const at::Tensor& weight, const at::Tensor& mod, bool align_corners, const at::Tensor& out) {
  check_weight_mod("bicubic_modulate_out_", weight, mod);
  check_out("bicubic_modulate_out_", out, weight);
  std::vector<at::Tensor> outs{out};
  forward_into("bicubic_modulate_out_", {weight}, {mod}, align_corners, outs);
}

std::vector<at::Tensor> bicubic_modulate_multi_cpu(at::TensorList weights, at::TensorList mods, bool align_corners) {
  check_lists("bicubic_modulate_multi", weights, mods);
  std::vector<at::Tensor> outs;
  for (const auto& w : weights) outs.push_back(at::empty(w.sizes(), w.options()));
  forward_into("bicubic_modulate_multi", weights, mods, align_corners, outs);
  return outs;
}

void bicubic_modulate_multi_out_cpu(at::TensorList weights, at::TensorList mods, bool align_corners, at::TensorList outs) {
  check_lists("bicubic_modulate_multi_out_", weights, mods);
  TORCH_CHECK(outs.size() == weights.size(), "bicubic_modulate_multi_out_: outs must have the length of weights (",
              weights.size(), "), got ", outs.size());
  for (size_t k = 0; k < outs.size(); ++k) check_out("bicubic_modulate_multi_out_", outs[k], weights[k], k);
  std::vector<at::Tensor> o(outs.begin(), outs.end());
  forward_into("bicubic_modulate_multi_out_", weights, mods, align_corners, o);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> backward_impl(const char* op, at::TensorList grads,
                                                                           at::TensorList weights, at::TensorList mods,
                                                                           bool align_corners, bool weight_requires_grad,
                                                                           bool mod_requires_grad) {
  check_lists(op, weights, mods);
  TORCH_CHECK(grads.size() == weights.size(), op, ": grads must have the length of weights (", weights.size(), "), got ",
              grads.size());
  for (size_t k = 0; k < grads.size(); ++k) check_same_as_weight(op, "grads", grads[k], weights[k], k);
  std::vector<at::Tensor> gws, gms;
  std::vector<at::Tensor> gc, wc, mc;
  for (size_t k = 0; k < weights.size(); ++k) {
    gws.push_back(weight_requires_grad ? at::empty(weights[k].sizes(), weights[k].options())
                                       : at::empty({0}, weights[k].options()));
    gms.push_back(mod_requires_grad ? at::empty(mods[k].sizes(), mods[k].options()) : at::empty({0}, mods[k].options()));
    gc.push_back(grads[k].contiguous());
    wc.push_back(weights[k].contiguous());
    mc.push_back(mods[k].contiguous());
  }
  if (weights.empty() || !(weight_requires_grad || mod_requires_grad)) return {gws, gms};
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "bicubic_modulate", [&] {
    std::vector<Job<scalar_t>> jobs;
    for (size_t k = 0; k < wc.size(); ++k) {
      TORCH_CHECK(wc[k].scalar_type() == weights[0].scalar_type(), op, ": weights[", k,
                  "] must have the dtype of weights[0] (", weights[0].scalar_type(), "), got ", wc[k].scalar_type());
      Job<scalar_t> job = make_job<scalar_t>(wc[k], mc[k]);
      job.grad = gc[k].data_ptr<scalar_t>();
      job.dst = weight_requires_grad ? gws[k].data_ptr<scalar_t>() : nullptr;
      job.gmod = mod_requires_grad ? gms[k].data_ptr<scalar_t>() : nullptr;
      jobs.push_back(std::move(job));
    }
    backward_jobs(jobs, align_corners);
  });
  return {gws, gms};
}

std::tuple<at::Tensor, at::Tensor> bicubic_modulate_backward_cpu(const at::Tensor& grad, const at::Tensor& weight,
                                                                 const at::Tensor& mod, bool align_corners,
                                                                 bool weight_requires_grad, bool mod_requires_grad) {
  check_weight_mod("bicubic_modulate_backward", weight, mod);
  check_same_as_weight("bicubic_modulate_backward", "grad", grad, weight);
  auto r = backward_impl("bicubic_modulate_backward", {grad}, {weight}, {mod}, align_corners, weight_requires_grad,
                         mod_requires_grad);
  return {std::get<0>(r)[0], std::get<1>(r)[0]};
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> bicubic_modulate_multi_backward_cpu(
    at::TensorList grads, at::TensorList weights, at::TensorList mods, bool align_corners, bool weight_requires_grad,
    bool mod_requires_grad) {
  return backward_impl("bicubic_modulate_multi_backward", grads, weights, mods, align_corners, weight_requires_grad,
                       mod_requires_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(cltk, CPU, m) {
  m.impl("bicubic_modulate", &bicubic_modulate_cpu);
  m.impl("bicubic_modulate_out_", &bicubic_modulate_out_cpu);
  m.impl("bicubic_modulate_backward", &bicubic_modulate_backward_cpu);
  m.impl("bicubic_modulate_multi", &bicubic_modulate_multi_cpu);
  m.impl("bicubic_modulate_multi_out_", &bicubic_modulate_multi_out_cpu);
  m.impl("bicubic_modulate_multi_backward", &bicubic_modulate_multi_backward_cpu);
}
