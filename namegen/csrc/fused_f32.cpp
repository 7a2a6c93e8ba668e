// The recurrence in float32 on a CPU, its elementwise work fused: small's and medium's path.
//
// recurrence.cpp replays model.py's per-step ATen operators: 8 a step forward and 10 backward, each a
// dispatch and a pass over memory, and before the backward's loop the previous states are gathered by a
// concatenation and the chain-rule factors computed for all rows by 6 more whole-layer operators. Here
// each step runs its two matmuls with ATen and everything between them in passes over the rows: 2
// forward, 3 backward, the chain-rule factors computed inside them from the saved gates and states. The
// math is model.py's (a float32 state, float32 matmuls); sigmoid, tanh and exp are fused_math.h's, so
// the results agree with the Python loops to float32 tolerance, not bit for bit (tests/test_recurrence.py).
//
// Layout: as recurrence.cpp. Shapes: gates (N, 3H) = [r | z | n], rows packed by step. The forward also
// keeps hm (N, H): each row's previous state as the hidden matmuls saw it (times the variational mask),
// the input of W_rz's weight gradient; the backward reads the previous states from out and h0.

#include <torch/library.h>

#include <initializer_list>
#include <tuple>
#include <vector>

#include "fused_math.h"

namespace {

using namespace namegen_fused;
constexpr const char* WHO = "fused_f32";

// ---- forward, one row of one step (H units)

// gates' r | z columns: g = sigmoid(g + p); q = r * hm
NG_VECTOR void f32_gates_rz_row(float* R g, const float* R p, float* R q, const float* R hm, int64_t H) {
  for (int64_t j = 0; j < 2 * H; ++j) g[j] = sigmoid_approx(g[j] + p[j]);
  for (int64_t j = 0; j < H; ++j) q[j] = g[j] * hm[j];
}

// candidate and new state: n = tanh(g_n + p); out = lerp(h, n, z) (* mask); hm_next = out * hmask (or out),
// the next step's matmul input, when the name goes on
NG_VECTOR void f32_state_row(float* R g, const float* R p, const float* R h, const float* R mask,
                             const float* R hmask, float* R out, float* R hm_next, int64_t H) {
  const float* z = g + H;
  float* n = g + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    n[j] = tanh_approx(n[j] + p[j]);
    out[j] = lerp_like_aten(h[j], n[j], z[j]);
  }
  if (mask) {
    for (int64_t j = 0; j < H; ++j) out[j] *= mask[j];  // state dropout: the next step sees the dropped state
  }
  if (hm_next && hmask) {
    for (int64_t j = 0; j < H; ++j) hm_next[j] = out[j] * hmask[j];
  } else if (hm_next) {
    std::memcpy(hm_next, out, H * sizeof(float));
  }
}

// ---- backward, one row of one step. dh: the grad of the step's (dropped) state; g = dh * mask, the grad
// of h' = h + z (n - h). a_*: pre-activations.

// dL/da_n = g z (1 - n^2), dL/da_z = g (n - h) z (1 - z)
NG_VECTOR void f32_grads_zn_row(const float* R dh, const float* R gates, const float* R h, const float* R mask,
                                float* R dg, int64_t H) {
  const float *z = gates + H, *n = gates + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const float g = mask ? dh[j] * mask[j] : dh[j];
    dg[2 * H + j] = g * (z[j] * (1.0f - n[j] * n[j]));
    dg[H + j] = g * ((n[j] - h[j]) * (z[j] * (1.0f - z[j])));
  }
}

// dL/da_r = dq hm r (1 - r), dq: the grad of q = r * hm
NG_VECTOR void f32_grad_r_row(const float* R dq, const float* R r, const float* R hm, float* R dg, int64_t H) {
  for (int64_t j = 0; j < H; ++j) dg[j] = dq[j] * (hm[j] * (r[j] * (1.0f - r[j])));
}

// the grad of the previous state: g (1 - z) (+ its own later terms in prev) + (dq r + dr) (* hmask)
NG_VECTOR void f32_grad_prev_row(const float* R dh, const float* R z, const float* R mask, const float* R dq,
                                 const float* R r, const float* R dr, const float* R hmask, float* R prev,
                                 bool accumulate, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float g = mask ? dh[j] * mask[j] : dh[j];
    const float direct = accumulate ? prev[j] + g * (1.0f - z[j]) : g * (1.0f - z[j]);
    const float through = dq[j] * r[j] + dr[j];  // grad of hm, the state the matmuls saw
    prev[j] = hmask ? direct + through * hmask[j] : direct + through;
  }
}

std::vector<int64_t> step_starts(at::IntArrayRef batch_sizes) {  // the first packed row of each step
  std::vector<int64_t> starts(batch_sizes.size());
  for (size_t t = 1; t < starts.size(); ++t) starts[t] = starts[t - 1] + batch_sizes[t - 1];
  return starts;
}

// One layer over all steps -> out (N, H), gates (N, 3H) = [r | z | n], q (N, H) = r * hm, hm (N, H).
// gates_in (N, 3H) (copied unless own_gates), h0 (B, H), w_rz (2H, H), w_h (H, H), mask (N, H) and
// hmask (B, H) or none; all float32.   [model._layer_forward_loop, low = none]
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_forward_f32(
    const Tensor& gates_in, const Tensor& h0_in, const Tensor& w_rz, const Tensor& w_h, const optional<Tensor>& mask,
    at::IntArrayRef batch_sizes, const optional<Tensor>& hmask, bool own_gates) {
  const int64_t H = h0_in.size(-1), B = h0_in.size(0);
  Tensor gates = gates_in.to(at::kFloat, false, !own_gates).contiguous();  // (N, 3H)
  const Tensor h0 = h0_in.contiguous();
  check(gates, at::kFloat, WHO, "gates");
  check(h0, at::kFloat, WHO, "h0");
  if (mask) check(*mask, at::kFloat, WHO, "mask");
  if (hmask) check(*hmask, at::kFloat, WHO, "hmask");
  TORCH_CHECK(!hmask || hmask->is_contiguous(), WHO, ": hmask must be contiguous");
  const int64_t N = gates.size(0), T = static_cast<int64_t>(batch_sizes.size());
  Tensor out = gates.new_empty({N, H}), q_all = gates.new_empty({N, H}), hm_all = gates.new_empty({N, H});
  hm_all.slice(0, 0, B).copy_(hmask ? h0 * *hmask : h0);  // (B, H): step 0's state as the matmuls see it
  Tensor p_rz = gates.new_empty({B, 2 * H}), p_n = gates.new_empty({B, H});
  const Tensor w_rz_t = w_rz.t(), w_h_t = w_h.t();
  const float* hm_rows = hmask ? hmask->data_ptr<float>() : nullptr;
  const std::vector<int64_t> starts = step_starts(batch_sizes);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = batch_sizes[t], s = starts[t];
    const int64_t n_next = t + 1 < T ? batch_sizes[t + 1] : 0;  // the rows that go on to step t + 1
    const Tensor& h = t == 0 ? h0 : out;  // the previous state: h0's rows, then the last step's
    const int64_t hs = t == 0 ? 0 : starts[t - 1];
    Tensor p1 = p_rz.slice(0, 0, n), p2 = p_n.slice(0, 0, n), q = q_all.slice(0, s, s + n);
    at::mm_out(p1, hm_all.slice(0, s, s + n), w_rz_t);  // (n, 2H): W_rz hm
    over_rows(n, 2 * H, [&](int64_t i) {
      f32_gates_rz_row(row<float>(gates, s + i), row<float>(p1, i), row<float>(q, i), row<float>(hm_all, s + i), H);
    });
    at::mm_out(p2, q, w_h_t);  // (n, H): W_h (r * hm)
    over_rows(n, 3 * H, [&](int64_t i) {
      f32_state_row(row<float>(gates, s + i), row<float>(p2, i), row<float>(h, hs + i),
                    mask ? row<float>(*mask, s + i) : nullptr, hm_rows ? hm_rows + i * H : nullptr,
                    row<float>(out, s + i), i < n_next ? row<float>(hm_all, s + n + i) : nullptr, H);
    });
  }
  return {out, gates, q_all, hm_all};
}

// The backward loop, last step first. Writes dgates (N, 3H), adds into acc (N, H) in place (on entry the
// grad of each row's output; each step adds its terms to the step before); returns the grad of h0 (B, H).
// gates, out, hm: the forward's; h0, mask, hmask, w_rz, w_h as given to it.   [the loop of _GRULayer.backward]
Tensor layer_backward_f32(Tensor dgates, Tensor acc, const Tensor& gates, const Tensor& out, const Tensor& hm,
                          const Tensor& h0_in, const optional<Tensor>& mask, const optional<Tensor>& hmask,
                          const Tensor& w_rz, const Tensor& w_h, at::IntArrayRef batch_sizes) {
  const int64_t H = acc.size(-1), B = batch_sizes.empty() ? 0 : batch_sizes[0];
  const Tensor h0 = h0_in.contiguous();
  for (const Tensor* t : std::initializer_list<const Tensor*>{&dgates, &acc, &gates, &out, &hm, &h0}) {
    check(*t, at::kFloat, WHO, "a saved tensor");
  }
  if (mask) check(*mask, at::kFloat, WHO, "mask");
  if (hmask) check(*hmask, at::kFloat, WHO, "hmask");
  TORCH_CHECK(!hmask || hmask->is_contiguous(), WHO, ": hmask must be contiguous");
  Tensor dq_all = acc.new_empty({B, H}), dr_all = acc.new_empty({B, H}), dh0 = acc.new_empty({B, H});
  const float* hm_rows = hmask ? hmask->data_ptr<float>() : nullptr;
  const std::vector<int64_t> starts = step_starts(batch_sizes);
  for (int64_t t = static_cast<int64_t>(batch_sizes.size()) - 1; t >= 0; --t) {
    const int64_t n = batch_sizes[t], s = starts[t];
    const Tensor& h = t == 0 ? h0 : out;  // the state step t started from
    const int64_t hs = t == 0 ? 0 : starts[t - 1];
    over_rows(n, 2 * H, [&](int64_t i) {
      f32_grads_zn_row(row<float>(acc, s + i), row<float>(gates, s + i), row<float>(h, hs + i),
                       mask ? row<float>(*mask, s + i) : nullptr, row<float>(dgates, s + i), H);
    });
    const Tensor dg = dgates.slice(0, s, s + n);
    Tensor dq = dq_all.slice(0, 0, n), dr = dr_all.slice(0, 0, n);
    at::mm_out(dq, dg.slice(1, 2 * H), w_h);  // (n, H): grad of q = r * hm
    over_rows(n, H, [&](int64_t i) {
      f32_grad_r_row(row<float>(dq, i), row<float>(gates, s + i), row<float>(hm, s + i), row<float>(dgates, s + i), H);
    });
    at::mm_out(dr, dg.slice(1, 0, 2 * H), w_rz);  // (n, H): both gates' W_rz^T da_rz
    const bool accumulate = t > 0;  // into the grad of step t-1's state, which holds its own loss terms
    Tensor& prev = accumulate ? acc : dh0;
    over_rows(n, 2 * H, [&](int64_t i) {
      f32_grad_prev_row(row<float>(acc, s + i), row<float>(gates, s + i) + H, mask ? row<float>(*mask, s + i) : nullptr,
                        row<float>(dq, i), row<float>(gates, s + i), row<float>(dr, i),
                        hm_rows ? hm_rows + i * H : nullptr, row<float>(prev, hs + i), accumulate, H);
    });
  }
  return dh0;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(namegen_recurrence, m) {
  m.def("layer_forward_f32(Tensor gates_in, Tensor h0, Tensor w_rz, Tensor w_h, Tensor? mask, int[] batch_sizes, "
        "Tensor? hmask, bool own_gates) -> (Tensor, Tensor, Tensor, Tensor)",
        &layer_forward_f32);
  m.def("layer_backward_f32(Tensor(a!) dgates, Tensor(b!) acc, Tensor gates, Tensor out, Tensor hm, Tensor h0, "
        "Tensor? mask, Tensor? hmask, Tensor w_rz, Tensor w_h, int[] batch_sizes) -> Tensor",
        &layer_backward_f32);
}
