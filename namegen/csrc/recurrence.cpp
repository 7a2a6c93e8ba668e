// The recurrence's two loops over the steps of one layer, compiled: namegen.model's _layer_forward and
// the loop of _GRULayer.backward, line for line. Each line calls the ATen operator its Python twin
// calls, with the same arguments, in the same order, so the results are the same bits; what is saved is
// the Python interpreter around each of the ~20 small operators a step runs (most of small's step).
// model.py keeps the Python loops as the readable reference; tests/test_recurrence.py holds the two
// to bit-equality. namegen/recurrence.py builds this file once per machine and loads it.
//
// Layout (model.py): rows are time-major and packed; step t owns the next batch_sizes[t] rows, the first
// batch_sizes[t] names of the batch. H: hidden width. low: autocast's matmul dtype, or none.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using c10::optional;

// acc += a @ b in place; with low, the product runs in that dtype (b is already in it)   [_addmm_]
Tensor& addmm_inplace(Tensor& acc, const Tensor& a, const Tensor& b, const optional<at::ScalarType>& low) {
  if (!low.has_value()) return acc.addmm_(a, b);
  return acc.add_(at::mm(a.to(*low), b));
}

// a @ b in a's dtype; with low, the product runs in that dtype   [_mm]
Tensor mm_in(const Tensor& a, const Tensor& b, const optional<at::ScalarType>& low) {
  if (!low.has_value()) return at::mm(a, b);
  return at::mm(a.to(*low), b).to(a.scalar_type());
}

// One layer over all steps -> out (N, H), gates (N, 3H) = [r | z | n], q (N, H) = r * hm_prev.   [_layer_forward]
std::tuple<Tensor, Tensor, Tensor> layer_forward(
    const Tensor& gates_in, const Tensor& h0, const Tensor& w_rz, const Tensor& w_h, const optional<Tensor>& mask,
    at::IntArrayRef batch_sizes, optional<at::ScalarType> low, const optional<Tensor>& hmask, bool own_gates) {
  const int64_t H = h0.size(-1);
  Tensor gates = gates_in.to(h0.scalar_type(), /*non_blocking=*/false, /*copy=*/!own_gates);  // (N, 3H)
  const int64_t N = gates.size(0);
  Tensor out = gates.new_empty({N, H});
  Tensor q_all = gates.new_empty({N, H}, gates.options().dtype(low.value_or(gates.scalar_type())));
  const Tensor w_rz_t = w_rz.t(), w_h_t = w_h.t();
  const auto g_steps = gates.split_with_sizes(batch_sizes);
  const auto q_steps = q_all.split_with_sizes(batch_sizes);
  const auto out_steps = out.split_with_sizes(batch_sizes);
  std::vector<Tensor> mask_steps;
  if (mask.has_value()) mask_steps = mask->split_with_sizes(batch_sizes);
  Tensor h = h0;
  for (size_t t = 0; t < g_steps.size(); ++t) {
    const Tensor& g = g_steps[t];
    const int64_t n = g.size(0);
    h = h.slice(0, 0, n);  // (n, H): the names still inside their name
    Tensor hm = hmask.has_value() ? h * hmask->slice(0, 0, n) : h;  // (n, H): as the hidden matmuls see it
    Tensor rz_acc = g.slice(1, 0, 2 * H);
    Tensor rz = addmm_inplace(rz_acc, hm, w_rz_t, low).sigmoid_();  // (n, 2H): reset r | update z
    Tensor r = rz.slice(1, 0, H), z = rz.slice(1, H);
    Tensor q_t = q_steps[t];
    Tensor q = at::mul_out(q_t, r, hm);  // (n, H): the reset past r * h
    Tensor n_acc = g.slice(1, 2 * H);
    Tensor cand = addmm_inplace(n_acc, q, w_h_t, low).tanh_();  // (n, H): candidate
    Tensor out_t = out_steps[t];
    h = at::lerp_out(out_t, h, cand, z);  // (n, H): h + z (n - h)
    if (mask.has_value()) h.mul_(mask_steps[t]);  // state dropout: the next step sees the dropped state
  }
  return {out, gates, q_all};
}

// The backward loop, from the last step to the first. Writes dgates (N, 3H) and adds into acc (N, H)
// in place; returns the grad of h0 (B, H). f_*: the chain-rule factors (N, H) of _chain_factors, r:
// gates[:, :H].   [the loop of _GRULayer.backward]
Tensor layer_backward(Tensor dgates, Tensor acc, const Tensor& f_n, const Tensor& f_z, const Tensor& f_r,
                      const Tensor& f_h, const Tensor& r, const Tensor& w_rz, const Tensor& w_h,
                      at::IntArrayRef batch_sizes, optional<at::ScalarType> low, const optional<Tensor>& hmask) {
  const int64_t H = acc.size(-1);
  const auto dg_t = dgates.split_with_sizes(batch_sizes), acc_t = acc.split_with_sizes(batch_sizes);
  const auto r_t = r.split_with_sizes(batch_sizes);
  const auto fn_t = f_n.split_with_sizes(batch_sizes), fz_t = f_z.split_with_sizes(batch_sizes);
  const auto fr_t = f_r.split_with_sizes(batch_sizes), fh_t = f_h.split_with_sizes(batch_sizes);
  Tensor dh_prev;
  for (int64_t t = static_cast<int64_t>(batch_sizes.size()) - 1; t >= 0; --t) {
    const Tensor &dg = dg_t[t], &dh = acc_t[t];  // (n, 3H), (n, H): dh is the total grad of step t's state
    const int64_t n = dh.size(0);
    Tensor dg_n = dg.slice(1, 2 * H), dg_z = dg.slice(1, H, 2 * H), dg_r = dg.slice(1, 0, H);
    Tensor da_n = at::mul_out(dg_n, dh, fn_t[t]);  // (n, H): dL/da_n
    at::mul_out(dg_z, dh, fz_t[t]);  // (n, H): dL/da_z
    Tensor dq = mm_in(da_n, w_h, low);  // (n, H): grad of q = r * hm_prev
    at::mul_out(dg_r, dq, fr_t[t]);  // (n, H): dL/da_r
    // grad of h_{t-1}: the direct path plus the later loss terms at step t-1 ...
    dh_prev = t > 0 ? acc_t[t - 1].slice(0, 0, n).addcmul_(dh, fh_t[t]) : dh * fh_t[t];
    Tensor dg_rz = dg.slice(1, 0, 2 * H);
    if (!hmask.has_value()) {
      dh_prev.addcmul_(dq, r_t[t]);  // ... through q = r * h_prev ...
      addmm_inplace(dh_prev, dg_rz, w_rz, low);  // ... and through both gates' W_rz h_prev
    } else {  // the same two terms reach hm_prev = h_prev * hmask, then h_prev through the mask
      Tensor dhm = at::mul(dq, r_t[t]);
      addmm_inplace(dhm, dg_rz, w_rz, low);  // (n, H): grad of hm_prev
      dh_prev.addcmul_(dhm, hmask->slice(0, 0, n));
    }
  }
  return dh_prev;
}

}  // namespace

TORCH_LIBRARY(namegen_recurrence, m) {
  m.def("layer_forward(Tensor gates_in, Tensor h0, Tensor w_rz, Tensor w_h, Tensor? mask, int[] batch_sizes, "
        "ScalarType? low, Tensor? hmask, bool own_gates) -> (Tensor, Tensor, Tensor)",
        &layer_forward);
  m.def("layer_backward(Tensor(a!) dgates, Tensor(b!) acc, Tensor f_n, Tensor f_z, Tensor f_r, Tensor f_h, "
        "Tensor r, Tensor w_rz, Tensor w_h, int[] batch_sizes, ScalarType? low, Tensor? hmask) -> Tensor",
        &layer_backward);
}
