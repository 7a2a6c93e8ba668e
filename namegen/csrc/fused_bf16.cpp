// The recurrence under bf16 autocast on a CPU, its elementwise work fused: large's training path.
//
// recurrence.cpp replays model.py's per-step ATen operators; under bf16 autocast they are ~10 a step
// forward and ~12 backward, a third of them casts between float32 and bf16 or adds of a bf16 product into
// a float32 buffer (each a temporary, a copy and a pass over memory). Here each step runs its two bf16
// matmuls with ATen and everything between them in a few passes over the rows, in float32, rounding
// to bf16 only what the next matmul reads. The math is model.py's, the rounding points are the same
// (each product in bf16, everything else float32); what differs is that sigmoid, tanh and exp are
// fused_math.h's polynomials rather than ATen's (as accurate: see there), so the results agree with the
// Python loops to float32 tolerance, not bit for bit (tests/test_recurrence.py). fused_f32.cpp is its
// float32 twin.
//
// Layout: as recurrence.cpp. Shapes: gates (N, 3H) = [r | z | n], rows packed by step.

#include <torch/library.h>

#include <tuple>
#include <vector>

#include "fused_math.h"

namespace {

using namespace namegen_fused;
constexpr const char* WHO = "fused_bf16";

// ---- forward, one row of one step (H units)

// gates' r | z columns: g = sigmoid(g + p); q = bf16(r * hm), hm = h * hmask (or h)
NG_VECTOR void gates_rz_row(float* R g, const bf16* R p, bf16* R q, const float* R h, const float* R hmask,
                            int64_t H) {
  for (int64_t j = 0; j < 2 * H; ++j) g[j] = sigmoid_approx(g[j] + from_bf16(p[j]));
  if (hmask) {
    for (int64_t j = 0; j < H; ++j) q[j] = to_bf16(g[j] * (h[j] * hmask[j]));
  } else {
    for (int64_t j = 0; j < H; ++j) q[j] = to_bf16(g[j] * h[j]);
  }
}

// candidate and new state: n = tanh(g_n + p); out = lerp(h, n, z) (* mask); hm_next = bf16(out * hmask)
NG_VECTOR void state_row(float* R g, const bf16* R p, const float* R h, const float* R mask, const float* R hmask,
                         float* R out, bf16* R hm_next, int64_t H) {
  float* z = g + H;
  float* n = g + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    n[j] = tanh_approx(n[j] + from_bf16(p[j]));
    out[j] = lerp_like_aten(h[j], n[j], z[j]);
  }
  if (mask) {
    for (int64_t j = 0; j < H; ++j) out[j] *= mask[j];  // state dropout: the next step sees the dropped state
  }
  if (hmask) {
    for (int64_t j = 0; j < H; ++j) hm_next[j] = to_bf16(out[j] * hmask[j]);
  } else {
    for (int64_t j = 0; j < H; ++j) hm_next[j] = to_bf16(out[j]);
  }
}

// ---- backward, one row of one step. The chain rule's factors (model._chain_factors) are computed here from
// the forward's gates (r | z | n) and the previous state hp, with the arithmetic of the ATen operators that
// model.py calls (tanh_backward: a fma(-b, b, 1); sigmoid_backward: a (1 - b) b), so the bits are the same.

// da_n = dh zm (1 - n n), da_z = dh (n - hp)(* m) (1 - z) z, zm = z (* m): into dgates and dlow (bf16)
NG_VECTOR void grads_zn_row(const float* R dh, const float* R g, const float* R hp, const float* R m, float* R dg,
                            bf16* R dl, int64_t H) {
  const float* z = g + H;
  const float* n = g + 2 * H;
  for (int64_t j = 0; j < H; ++j) {
    const float zm = m ? z[j] * m[j] : z[j];
    const float d = m ? (n[j] - hp[j]) * m[j] : n[j] - hp[j];
    const float a_z = dh[j] * (d * (1.0f - z[j]) * z[j]);
    const float a_n = dh[j] * (zm * std::fma(-n[j], n[j], 1.0f));  // ATen's 1 - b b is one fused multiply-add
    dg[H + j] = a_z;
    dl[H + j] = to_bf16(a_z);
    dg[2 * H + j] = a_n;
    dl[2 * H + j] = to_bf16(a_n);
  }
}

// da_r = dq hm (1 - r) r, dq = the bf16 product dL/dq, hm = hp (* hmask); hm_low = bf16(hm), for dW_rz
NG_VECTOR void grad_r_row(const bf16* R dq, const float* R r, const float* R hp, const float* R hmask, float* R dg,
                          bf16* R dl, bf16* R hm_low, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float hm = hmask ? hp[j] * hmask[j] : hp[j];
    const float a_r = from_bf16(dq[j]) * (hm * (1.0f - r[j]) * r[j]);
    dg[j] = a_r;
    dl[j] = to_bf16(a_r);
    hm_low[j] = to_bf16(hm);
  }
}

// the grad of the previous state: dh f_h (+ the later loss terms in prev) + (dq r + dr) (* hmask),
// f_h = 1 - z, or m - z m with state dropout
NG_VECTOR void grad_prev_row(const float* R dh, const float* R z, const float* R m, const bf16* R dq,
                             const float* R r, const bf16* R dr, const float* R hmask, float* R prev, bool accumulate,
                             int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float f_h = m ? m[j] - z[j] * m[j] : 1.0f - z[j];
    const float direct = accumulate ? prev[j] + dh[j] * f_h : dh[j] * f_h;
    const float through = from_bf16(dq[j]) * r[j] + from_bf16(dr[j]);  // grad of hm_prev
    prev[j] = hmask ? direct + through * hmask[j] : direct + through;
  }
}

// One layer over all steps -> out (N, H), gates (N, 3H) = [r | z | n], q (N, H) = bf16(r * hm_prev).
// gates_in (N, 3H) float32 (copied unless own_gates), h0 (B, H) float32, w_rz (2H, H) and w_h (H, H) bf16,
// mask (N, H) and hmask (B, H) float32 or none.   [model._layer_forward_loop, low = bf16]
std::tuple<Tensor, Tensor, Tensor> layer_forward_bf16(
    const Tensor& gates_in, const Tensor& h0_in, const Tensor& w_rz, const Tensor& w_h, const optional<Tensor>& mask,
    at::IntArrayRef batch_sizes, const optional<Tensor>& hmask, bool own_gates) {
  const int64_t H = h0_in.size(-1), B = h0_in.size(0);
  Tensor gates = gates_in.to(at::kFloat, false, !own_gates).contiguous();  // (N, 3H)
  const Tensor h0 = h0_in.to(at::kFloat).contiguous();
  check(gates, at::kFloat, WHO, "gates");
  if (mask) check(*mask, at::kFloat, WHO, "mask");
  if (hmask) check(*hmask, at::kFloat, WHO, "hmask");
  TORCH_CHECK(!hmask || hmask->is_contiguous(), WHO, ": hmask must be contiguous");
  const int64_t N = gates.size(0);
  Tensor out = gates.new_empty({N, H});
  Tensor q_all = gates.new_empty({N, H}, gates.options().dtype(at::kBFloat16));
  Tensor hm_low = (hmask ? h0 * *hmask : h0).to(at::kBFloat16);  // (B, H): the state as the matmuls see it
  Tensor p_rz = gates.new_empty({B, 2 * H}, gates.options().dtype(at::kBFloat16));
  Tensor p_n = gates.new_empty({B, H}, gates.options().dtype(at::kBFloat16));
  const Tensor w_rz_t = w_rz.t(), w_h_t = w_h.t();
  const float* hm_rows = hmask ? hmask->data_ptr<float>() : nullptr;
  Tensor h = h0;  // the previous step's state: rows of h0, then of out
  int64_t start = 0;
  for (const int64_t n : batch_sizes) {
    Tensor p1 = p_rz.slice(0, 0, n), p2 = p_n.slice(0, 0, n), q = q_all.slice(0, start, start + n);
    at::mm_out(p1, hm_low.slice(0, 0, n), w_rz_t);  // (n, 2H) bf16: W_rz hm
    over_rows(n, 2 * H, [&](int64_t i) {
      gates_rz_row(row<float>(gates, start + i), row<bf16>(p1, i), row<bf16>(q, i), row<float>(h, i),
                   hm_rows ? hm_rows + i * H : nullptr, H);
    });
    at::mm_out(p2, q, w_h_t);  // (n, H) bf16: W_h (r * hm)
    over_rows(n, 3 * H, [&](int64_t i) {
      state_row(row<float>(gates, start + i), row<bf16>(p2, i), row<float>(h, i),
                mask ? row<float>(*mask, start + i) : nullptr, hm_rows ? hm_rows + i * H : nullptr,
                row<float>(out, start + i), row<bf16>(hm_low, i), H);
    });
    h = out.slice(0, start, start + n);
    start += n;
  }
  return {out, gates, q_all};
}

// The backward loop, last step first. Writes dgates (N, 3H) float32 and dlow (N, 3H), its bf16 rounding
// (what the weight gradients' matmuls read), and hm_low (N, H): each row's previous state as the hidden
// matmuls saw it, in bf16 (dW_rz's other operand); adds into acc (N, H) in place; returns the grad of h0
// (B, H). gates, out: the forward's; h0 (B, H); mask (N, H), hmask (B, H) or none; w_rz, w_h bf16.
// [the loop of _GRULayer.backward, with model._chain_factors computed inside it]
Tensor layer_backward_bf16(Tensor dgates, Tensor dlow, Tensor acc, Tensor hm_low, const Tensor& gates,
                           const Tensor& out, const Tensor& h0, const optional<Tensor>& mask,
                           const optional<Tensor>& hmask, const Tensor& w_rz, const Tensor& w_h,
                           at::IntArrayRef batch_sizes) {
  const int64_t H = acc.size(-1), B = batch_sizes.empty() ? 0 : batch_sizes[0];
  check(dgates, at::kFloat, WHO, "dgates");
  check(dlow, at::kBFloat16, WHO, "dlow");
  check(hm_low, at::kBFloat16, WHO, "hm_low");
  check(acc, at::kFloat, WHO, "acc");
  for (const Tensor* t : {&gates, &out, &h0}) check(*t, at::kFloat, WHO, "gates, out and h0");
  if (mask) check(*mask, at::kFloat, WHO, "mask");
  if (hmask) check(*hmask, at::kFloat, WHO, "hmask");
  TORCH_CHECK(!hmask || hmask->is_contiguous(), WHO, ": hmask must be contiguous");
  Tensor dq_all = dlow.new_empty({B, H}), dr_all = dlow.new_empty({B, H});
  Tensor dh0 = acc.new_empty({B, H});
  const float* hm_rows = hmask ? hmask->data_ptr<float>() : nullptr;
  std::vector<int64_t> starts(batch_sizes.size());
  for (size_t t = 1; t < starts.size(); ++t) starts[t] = starts[t - 1] + batch_sizes[t - 1];
  for (int64_t t = static_cast<int64_t>(batch_sizes.size()) - 1; t >= 0; --t) {
    const int64_t n = batch_sizes[t], s = starts[t];
    // row i's previous state: h0's row at step 0, else the previous step's out row
    auto hp = [&](int64_t i) { return t > 0 ? row<float>(out, starts[t - 1] + i) : row<float>(h0, i); };
    auto m = [&](int64_t i) { return mask ? row<float>(*mask, s + i) : nullptr; };
    over_rows(n, 2 * H, [&](int64_t i) {
      grads_zn_row(row<float>(acc, s + i), row<float>(gates, s + i), hp(i), m(i), row<float>(dgates, s + i),
                   row<bf16>(dlow, s + i), H);
    });
    const Tensor dl = dlow.slice(0, s, s + n);
    Tensor dq = dq_all.slice(0, 0, n), dr = dr_all.slice(0, 0, n);
    at::mm_out(dq, dl.slice(1, 2 * H), w_h);  // (n, H) bf16: grad of q = r * hm_prev
    over_rows(n, 2 * H, [&](int64_t i) {
      grad_r_row(row<bf16>(dq, i), row<float>(gates, s + i), hp(i), hm_rows ? hm_rows + i * H : nullptr,
                 row<float>(dgates, s + i), row<bf16>(dlow, s + i), row<bf16>(hm_low, s + i), H);
    });
    at::mm_out(dr, dl.slice(1, 0, 2 * H), w_rz);  // (n, H) bf16: both gates' W_rz^T da_rz
    const bool accumulate = t > 0;  // into the grad of step t-1's state, which holds its own loss terms
    const int64_t ps = accumulate ? starts[t - 1] : 0;
    Tensor& prev = accumulate ? acc : dh0;
    over_rows(n, 2 * H, [&](int64_t i) {
      grad_prev_row(row<float>(acc, s + i), row<float>(gates, s + i) + H, m(i), row<bf16>(dq, i),
                    row<float>(gates, s + i), row<bf16>(dr, i), hm_rows ? hm_rows + i * H : nullptr,
                    row<float>(prev, ps + i), accumulate, H);
    });
  }
  return dh0;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(namegen_recurrence, m) {
  m.def("layer_forward_bf16(Tensor gates_in, Tensor h0, Tensor w_rz, Tensor w_h, Tensor? mask, int[] batch_sizes, "
        "Tensor? hmask, bool own_gates) -> (Tensor, Tensor, Tensor)",
        &layer_forward_bf16);
  m.def("layer_backward_bf16(Tensor(a!) dgates, Tensor(b!) dlow, Tensor(c!) acc, Tensor(d!) hm_low, Tensor gates, "
        "Tensor out, Tensor h0, Tensor? mask, Tensor? hmask, Tensor w_rz, Tensor w_h, int[] batch_sizes) -> Tensor",
        &layer_backward_bf16);
}
