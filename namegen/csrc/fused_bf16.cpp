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

// ---- backward, one row of one step

// da_n = dh f_n, da_z = dh f_z: into dgates (float32) and dlow (bf16, what the matmuls read)
NG_VECTOR void grads_zn_row(const float* R dh, const float* R f_n, const float* R f_z, float* R dg, bf16* R dl,
                            int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float a_z = dh[j] * f_z[j], a_n = dh[j] * f_n[j];
    dg[H + j] = a_z;
    dl[H + j] = to_bf16(a_z);
    dg[2 * H + j] = a_n;
    dl[2 * H + j] = to_bf16(a_n);
  }
}

// da_r = dq f_r, dq = the bf16 product dL/dq
NG_VECTOR void grad_r_row(const bf16* R dq, const float* R f_r, float* R dg, bf16* R dl, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float a_r = from_bf16(dq[j]) * f_r[j];
    dg[j] = a_r;
    dl[j] = to_bf16(a_r);
  }
}

// the grad of the previous state: dh f_h (+ the later loss terms in prev) + (dq r + dr) (* hmask)
NG_VECTOR void grad_prev_row(const float* R dh, const float* R f_h, const bf16* R dq, const float* R r,
                             const bf16* R dr, const float* R hmask, float* R prev, bool accumulate, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const float direct = accumulate ? prev[j] + dh[j] * f_h[j] : dh[j] * f_h[j];
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
// (what the weight gradients' matmuls read), adds into acc (N, H) in place; returns the grad of h0 (B, H).
// f_*: model._chain_factors (N, H); r: gates[:, :H]; w_rz, w_h bf16.   [the loop of _GRULayer.backward]
Tensor layer_backward_bf16(Tensor dgates, Tensor dlow, Tensor acc, const Tensor& f_n, const Tensor& f_z,
                           const Tensor& f_r, const Tensor& f_h, const Tensor& r, const Tensor& w_rz,
                           const Tensor& w_h, at::IntArrayRef batch_sizes, const optional<Tensor>& hmask) {
  const int64_t H = acc.size(-1), B = batch_sizes.empty() ? 0 : batch_sizes[0];
  check(dgates, at::kFloat, WHO, "dgates");
  check(dlow, at::kBFloat16, WHO, "dlow");
  check(acc, at::kFloat, WHO, "acc");
  for (const Tensor* t : {&f_n, &f_z, &f_r, &f_h, &r}) check(*t, at::kFloat, WHO, "a chain-rule factor");
  if (hmask) check(*hmask, at::kFloat, WHO, "hmask");
  TORCH_CHECK(!hmask || hmask->is_contiguous(), WHO, ": hmask must be contiguous");
  Tensor dq_all = dlow.new_empty({B, H}), dr_all = dlow.new_empty({B, H});
  Tensor dh0 = acc.new_empty({B, H});
  const float* hm_rows = hmask ? hmask->data_ptr<float>() : nullptr;
  std::vector<int64_t> starts(batch_sizes.size());
  for (size_t t = 1; t < starts.size(); ++t) starts[t] = starts[t - 1] + batch_sizes[t - 1];
  for (int64_t t = static_cast<int64_t>(batch_sizes.size()) - 1; t >= 0; --t) {
    const int64_t n = batch_sizes[t], s = starts[t];
    over_rows(n, 2 * H, [&](int64_t i) {
      grads_zn_row(row<float>(acc, s + i), row<float>(f_n, s + i), row<float>(f_z, s + i), row<float>(dgates, s + i),
                   row<bf16>(dlow, s + i), H);
    });
    const Tensor dl = dlow.slice(0, s, s + n);
    Tensor dq = dq_all.slice(0, 0, n), dr = dr_all.slice(0, 0, n);
    at::mm_out(dq, dl.slice(1, 2 * H), w_h);  // (n, H) bf16: grad of q = r * hm_prev
    over_rows(n, H, [&](int64_t i) {
      grad_r_row(row<bf16>(dq, i), row<float>(f_r, s + i), row<float>(dgates, s + i), row<bf16>(dlow, s + i), H);
    });
    at::mm_out(dr, dl.slice(1, 0, 2 * H), w_rz);  // (n, H) bf16: both gates' W_rz^T da_rz
    const bool accumulate = t > 0;  // into the grad of step t-1's state, which holds its own loss terms
    const int64_t ps = accumulate ? starts[t - 1] : 0;
    Tensor& prev = accumulate ? acc : dh0;
    over_rows(n, 2 * H, [&](int64_t i) {
      grad_prev_row(row<float>(acc, s + i), row<float>(f_h, s + i), row<bf16>(dq, i), row<float>(r, s + i),
                    row<bf16>(dr, i), hm_rows ? hm_rows + i * H : nullptr, row<float>(prev, ps + i), accumulate, H);
    });
  }
  return dh0;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(namegen_recurrence, m) {
  m.def("layer_forward_bf16(Tensor gates_in, Tensor h0, Tensor w_rz, Tensor w_h, Tensor? mask, int[] batch_sizes, "
        "Tensor? hmask, bool own_gates) -> (Tensor, Tensor, Tensor)",
        &layer_forward_bf16);
  m.def("layer_backward_bf16(Tensor(a!) dgates, Tensor(b!) dlow, Tensor(c!) acc, Tensor f_n, Tensor f_z, "
        "Tensor f_r, Tensor f_h, Tensor r, Tensor w_rz, Tensor w_h, int[] batch_sizes, Tensor? hmask) -> Tensor",
        &layer_backward_bf16);
}
