// CUDA kernels of the meta-LSTM ops (torch-free, raw pointers): one step of an L-layer stacked LSTM (nn.LSTM's
// cell, gates i, f, g, o) plus the head out = scale * tanh(w_out . h_L + b_out) [* multiply] for N rows;
// reference: cltk/ops/metalstm.py, meta_lstm_ref. Same equations as csrc/metalstm/metalstm_cpu.cpp.
//
// One thread per row; a row's gate pre-activations are accumulated one hidden unit at a time (four scalars in
// registers), so no [N, 4H] tensor exists; the layer's input and new state live in per-thread arrays of
// kMaxHidden. The weights are read by every thread of a warp at the same address (broadcast, L1-resident).
// Memory traffic per row: read x, h, c (F + 2LH values), write out, h, c (1 + 2LH).
// Backward: per row, the forward is recomputed up to each layer (L(L+1)/2 layer evaluations, no stored gates);
// weight gradients are summed over the warp with shuffles, then one atomicAdd per warp and weight (so their
// summation order, and last bits, depend on scheduling). State is unit-major [L, H, N]; offsets are 64-bit.
#pragma once
#include <cstdint>

#include "common/launch.cuh"

namespace cltk_metalstm {

constexpr int kThreads = 128;
constexpr int kMaxHidden = 64;

template <typename T>
struct NetPtrs {
  const T* w_ih0;  // [4H, F]
  const T* w_ih;   // [L-1, 4H, H]
  const T* w_hh;   // [L, 4H, H]
  const T* b;      // [L, 4H]
  const T* w_out;  // [H]
  const T* b_out;  // [1]
  const T* scale;  // [1]
  int64_t F, H, L;
};

template <typename T>
__device__ inline T sigmoid_(T x) {
  return T(1) / (T(1) + exp(-x));
}

// One layer for row n: in (x row when in_global, else in_local), previous state of layer l from h, c ([L, H, N]);
// writes the new state to hn, cn (local) and, when gates != nullptr, the activated gates [4][H] and tanh(c') [H].
template <typename T>
__device__ inline void layer_row(const NetPtrs<T>& p, int64_t l, const T* in, int64_t in_stride, const T* h,
                                 const T* c, int64_t N, int64_t n, T* hn, T* cn, T* gates, T* tc) {
  const int64_t H = p.H, K = l == 0 ? p.F : H;
  const T* Wi = l == 0 ? p.w_ih0 : p.w_ih + (l - 1) * 4 * H * H;
  const T* Wh = p.w_hh + l * 4 * H * H;
  const T* bias = p.b + l * 4 * H;
  const T* hl = h + l * H * N + n;
  for (int64_t u = 0; u < H; ++u) {
    T a0 = bias[u], a1 = bias[H + u], a2 = bias[2 * H + u], a3 = bias[3 * H + u];
    for (int64_t k = 0; k < K; ++k) {
      const T v = in[k * in_stride];
      a0 += Wi[u * K + k] * v;
      a1 += Wi[(H + u) * K + k] * v;
      a2 += Wi[(2 * H + u) * K + k] * v;
      a3 += Wi[(3 * H + u) * K + k] * v;
    }
    for (int64_t k = 0; k < H; ++k) {
      const T v = hl[k * N];
      a0 += Wh[u * H + k] * v;
      a1 += Wh[(H + u) * H + k] * v;
      a2 += Wh[(2 * H + u) * H + k] * v;
      a3 += Wh[(3 * H + u) * H + k] * v;
    }
    const T i = sigmoid_(a0), f = sigmoid_(a1), g = tanh(a2), o = sigmoid_(a3);
    const T c1 = f * c[(l * H + u) * N + n] + i * g;
    const T t = tanh(c1);
    cn[u] = c1;
    hn[u] = o * t;
    if (gates != nullptr) {
      gates[u] = i;
      gates[H + u] = f;
      gates[2 * H + u] = g;
      gates[3 * H + u] = o;
      tc[u] = t;
    }
  }
}

// Forward; h_out / c_out may alias h / c (the whole layer is computed before its state is written).
template <typename T>
__global__ void __launch_bounds__(kThreads) meta_lstm_forward_kernel(NetPtrs<T> p, const T* x, const T* h,
                                                                     const T* c, const T* mult, T* out, T* h_out,
                                                                     T* c_out, int64_t N) {
  T buf_a[kMaxHidden], buf_b[kMaxHidden], cn[kMaxHidden];
  const int64_t H = p.H;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T* prev = buf_a;
    T* next = buf_b;
    for (int64_t l = 0; l < p.L; ++l) {
      if (l == 0) {
        layer_row<T>(p, 0, x + n * p.F, 1, h, c, N, n, next, cn, nullptr, nullptr);
      } else {
        layer_row<T>(p, l, prev, 1, h, c, N, n, next, cn, nullptr, nullptr);
      }
      for (int64_t u = 0; u < H; ++u) {
        h_out[(l * H + u) * N + n] = next[u];
        c_out[(l * H + u) * N + n] = cn[u];
      }
      T* t = prev;
      prev = next;
      next = t;
    }
    T z = *p.b_out;
    for (int64_t u = 0; u < H; ++u) z += p.w_out[u] * prev[u];
    T y = *p.scale * tanh(z);
    if (mult != nullptr) y *= mult[n];
    out[n] = y;
  }
}

template <typename T>
__device__ inline T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Adds v, summed over the warp, to *dst (lane 0 of each warp does the atomic).
template <typename T>
__device__ inline void warp_accumulate(T* dst, T v) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) atomicAdd(dst, v);
}

// Backward. Grad outputs of the weights (gw_*) must be zeroed before the launch; gx, gh, gc, gmult (each may be
// null) are written. Every thread of a block runs the same number of loop trips (rows past N are masked with
// zero gradients), so the warp shuffles always see a full warp.
template <typename T>
__global__ void __launch_bounds__(kThreads) meta_lstm_backward_kernel(
    NetPtrs<T> p, const T* x, const T* h, const T* c, const T* mult, const T* gout, const T* gh_new,
    const T* gc_new, T* gx, T* gh, T* gc, T* gmult, T* gw_ih0, T* gw_ih, T* gw_hh, T* gb, T* gw_out, T* gb_out,
    T* gscale, int64_t N) {
  T hA[kMaxHidden], hB[kMaxHidden], cn[kMaxHidden], dh[kMaxHidden], gates[4 * kMaxHidden], tc[kMaxHidden],
      dG[4 * kMaxHidden];
  const int64_t H = p.H, L = p.L, M = 4 * H;
  const bool need_w = gw_ih0 != nullptr;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x; base < N;
       base += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n_raw = base + threadIdx.x;
    const bool valid = n_raw < N;
    const int64_t n = valid ? n_raw : N - 1;  // masked threads recompute a real row with zero gradients
    // Forward through every layer to the head.
    T* prev = hA;
    T* next = hB;
    for (int64_t l = 0; l < L; ++l) {
      if (l == 0) {
        layer_row<T>(p, 0, x + n * p.F, 1, h, c, N, n, next, cn, nullptr, nullptr);
      } else {
        layer_row<T>(p, l, prev, 1, h, c, N, n, next, cn, nullptr, nullptr);
      }
      T* t = prev;
      prev = next;
      next = t;
    }
    T z = *p.b_out;
    for (int64_t u = 0; u < H; ++u) z += p.w_out[u] * prev[u];
    const T t = tanh(z), sc = *p.scale;
    T go = (valid && gout != nullptr) ? gout[n] : T(0);
    if (mult != nullptr) {
      if (gmult != nullptr && valid) gmult[n] = go * sc * t;
      go *= mult[n];
    }
    const T dz = go * sc * (T(1) - t * t);
    if (need_w) {
      warp_accumulate(gscale, go * t);
      warp_accumulate(gb_out, dz);
      for (int64_t u = 0; u < H; ++u) warp_accumulate(gw_out + u, dz * prev[u]);
    }
    for (int64_t u = 0; u < H; ++u) {
      dh[u] = dz * p.w_out[u] + ((valid && gh_new != nullptr) ? gh_new[((L - 1) * H + u) * N + n] : T(0));
    }
    for (int64_t l = L - 1; l >= 0; --l) {
      // Recompute the input of layer l (layers 0..l-1) and layer l's gates.
      prev = hA;
      next = hB;
      for (int64_t q = 0; q < l; ++q) {
        if (q == 0) {
          layer_row<T>(p, 0, x + n * p.F, 1, h, c, N, n, next, cn, nullptr, nullptr);
        } else {
          layer_row<T>(p, q, prev, 1, h, c, N, n, next, cn, nullptr, nullptr);
        }
        T* tt = prev;
        prev = next;
        next = tt;
      }
      const T* in = l == 0 ? x + n * p.F : prev;
      const int64_t K = l == 0 ? p.F : H;
      layer_row<T>(p, l, in, 1, h, c, N, n, next, cn, gates, tc);
      for (int64_t u = 0; u < H; ++u) {
        const T i = gates[u], f = gates[H + u], g = gates[2 * H + u], o = gates[3 * H + u];
        const T dc = ((valid && gc_new != nullptr) ? gc_new[(l * H + u) * N + n] : T(0)) +
                     dh[u] * o * (T(1) - tc[u] * tc[u]);
        dG[u] = dc * g * i * (T(1) - i);
        dG[H + u] = dc * c[(l * H + u) * N + n] * f * (T(1) - f);
        dG[2 * H + u] = dc * i * (T(1) - g * g);
        dG[3 * H + u] = dh[u] * tc[u] * o * (T(1) - o);
        if (gc != nullptr && valid) gc[(l * H + u) * N + n] = dc * f;
      }
      const T* Wi = l == 0 ? p.w_ih0 : p.w_ih + (l - 1) * M * H;
      const T* Wh = p.w_hh + l * M * H;
      if (need_w) {
        T* gwi = l == 0 ? gw_ih0 : gw_ih + (l - 1) * M * H;
        T* gwh = gw_hh + l * M * H;
        for (int64_t j = 0; j < M; ++j) {
          const T d = dG[j];
          warp_accumulate(gb + l * M + j, d);
          for (int64_t k = 0; k < K; ++k) warp_accumulate(gwi + j * K + k, d * in[k]);
          for (int64_t k = 0; k < H; ++k) warp_accumulate(gwh + j * H + k, d * h[(l * H + k) * N + n]);
        }
      }
      if (gh != nullptr) {
        for (int64_t k = 0; k < H; ++k) {
          T s = T(0);
          for (int64_t j = 0; j < M; ++j) s += Wh[j * H + k] * dG[j];
          if (valid) gh[(l * H + k) * N + n] = s;
        }
      }
      if (l > 0) {
        for (int64_t k = 0; k < H; ++k) {
          T s = (valid && gh_new != nullptr) ? gh_new[((l - 1) * H + k) * N + n] : T(0);
          for (int64_t j = 0; j < M; ++j) s += Wi[j * H + k] * dG[j];
          dh[k] = s;
        }
      } else if (gx != nullptr) {
        for (int64_t k = 0; k < p.F; ++k) {
          T s = T(0);
          for (int64_t j = 0; j < M; ++j) s += Wi[j * p.F + k] * dG[j];
          if (valid) gx[n * p.F + k] = s;
        }
      }
    }
  }
}

}  // namespace cltk_metalstm
