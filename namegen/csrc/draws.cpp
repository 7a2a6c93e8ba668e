// Random numbers made faster, the same numbers: random_bits(n) returns what
// torch.randint(-2**63, 2**63 - 1, (n,), dtype=torch.int64) returns from the default CPU generator, and
// leaves that generator where torch.randint would have left it. namegen.model draws every dropout mask
// from these bits (four 16-bit draws from each number). dropout_mask makes a dropout mask from
// random_bits' numbers in one pass, as model.py's three operators make it.
//
// torch makes each number by calling the generator's mt19937 twice, one call at a time through a function
// pointer (about 2 ns a 32-bit word on this project's CPUs; medium's five dropouts draw ~1.4 ms of them a
// step). Here the same mt19937 runs a whole block of its state at once: the state's twist and the output's
// tempering are plain loops over arrays, which the compiler vectorises. The engine's state is read from the
// generator and written back under the generator's lock. tests/test_recurrence.py holds the numbers and the
// generator's state afterwards equal to torch's, for any seed and length.
//
// mt19937's stepping, as ATen's at::mt19937 (ATen/core/MT19937RNGEngine.h): a call first decrements
// `left`; at 0 the 624-word state is twisted (left = 624, next = 0); the call returns state[next++]
// tempered. So `left - 1` tempered words are ready before the next twist.

#include <ATen/CPUGeneratorImpl.h>
#include <torch/library.h>

#include <mutex>
#include <optional>

#include "fused_math.h"  // NG_VECTOR

namespace {

using at::LMASK, at::MATRIX_A, at::UMASK, at::Tensor;  // mt19937's constants, as ATen names them
constexpr int N = at::MERSENNE_STATE_N, M = at::MERSENNE_STATE_M;

inline uint32_t twist(uint32_t u, uint32_t v) {  // (mix_bits(u, v) >> 1) ^ (v & 1 ? MATRIX_A : 0)
  return (((u & UMASK) | (v & LMASK)) >> 1) ^ ((0u - (v & 1u)) & MATRIX_A);
}

// at::mt19937's next_state(): the same three loops, each free of a dependence inside a vector's width
NG_VECTOR void twist_state(uint32_t* __restrict__ s) {
  for (int i = 0; i < N - M; i++) s[i] = s[i + M] ^ twist(s[i], s[i + 1]);  // reads only words ahead
  for (int i = N - M; i < N - 1; i++) s[i] = s[i + M - N] ^ twist(s[i], s[i + 1]);  // s[i-227]: done
  s[N - 1] = s[M - 1] ^ twist(s[N - 1], s[0]);
}

// words [from, from + k) of the state, tempered, into out
NG_VECTOR void temper(const uint32_t* __restrict__ s, uint32_t* __restrict__ out, int k) {
  for (int i = 0; i < k; i++) {
    uint32_t y = s[i];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    out[i] = y;
  }
}

// random64() is (first word << 32) | second word; randint's value is (r % (2^64 - 1)) + (-2^63)
NG_VECTOR void to_numbers(const uint32_t* __restrict__ w, int64_t* __restrict__ out, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint64_t r = (static_cast<uint64_t>(w[2 * i]) << 32) | w[2 * i + 1];
    r = r == UINT64_MAX ? 0 : r;
    out[i] = static_cast<int64_t>(r ^ (uint64_t{1} << 63));  // + 2^63 modulo 2^64
  }
}

// the generator's next `count` 32-bit words into w, the generator stepped past them (hold its lock)
void next_words(at::CPUGeneratorImpl* gen, uint32_t* w, int64_t count) {
  at::mt19937 engine = gen->engine();
  at::mt19937_data_pod d = engine.data();
  int64_t need = count, done = 0;
  while (need > 0) {
    int64_t ready = static_cast<int64_t>(d.left_) - 1;  // tempered words left before a twist
    if (ready == 0) {
      twist_state(d.state_.data());
      d.left_ = N + 1;  // as if the call that twists had not decremented it yet: N words ready
      d.next_ = 0;
      ready = N;
    }
    const int64_t k = std::min(ready, need);
    temper(d.state_.data() + d.next_, w + done, static_cast<int>(k));
    d.next_ += static_cast<int>(k);
    d.left_ -= static_cast<int>(k);
    done += k;
    need -= k;
  }
  engine.set_data(d);
  gen->set_engine(engine);
}

Tensor random_bits(int64_t n) {
  TORCH_CHECK(n >= 0, "random_bits: n must be >= 0, got ", n);
  auto out = at::empty({n}, at::kLong);
  auto words = at::empty({2 * n}, at::kInt);
  auto* w = reinterpret_cast<uint32_t*>(words.data_ptr<int32_t>());
  auto* gen = at::check_generator<at::CPUGeneratorImpl>(at::detail::getDefaultCPUGenerator());
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    next_words(gen, w, 2 * n);
  }
  to_numbers(w, out.data_ptr<int64_t>(), n);
  return out;
}

NG_VECTOR void mask_row(const int16_t* __restrict__ d, float* __restrict__ out, int64_t width, int32_t threshold,
                        float value) {
  for (int64_t j = 0; j < width; j++) out[j] = static_cast<int32_t>(d[j]) < threshold ? value : 0.0f;
}

// namegen.model's inverted-dropout mask from random_bits' numbers, in one pass: the numbers' int16 quarters
// (little-endian, as .view(torch.int16) reads them), the first rows_total * width of them as a (rows_total,
// width) matrix, the rows `rows` picked (all when none); each entry scale where draw < keep_units - 2^15,
// else 0 (float32). Python's mask: (draws < keep_units - 32768).to(float32).mul_(scale), which ATen computes
// as 1.0f * (float) scale, or 0.
Tensor dropout_mask(int64_t rows_total, int64_t width, int64_t keep_units, double scale,
                    const std::optional<Tensor>& rows) {
  TORCH_CHECK(rows_total >= 0 && width >= 0, "dropout_mask: sizes must be >= 0");
  TORCH_CHECK(keep_units >= 1 && keep_units <= 65536, "dropout_mask: keep_units must be in [1, 65536]");
  const int64_t n = rows_total * width;
  const Tensor bits = random_bits((n + 3) / 4);
  const int16_t* draws = reinterpret_cast<const int16_t*>(bits.data_ptr<int64_t>());
  Tensor picked;
  if (rows) {
    TORCH_CHECK(rows->scalar_type() == at::kLong && rows->dim() == 1, "dropout_mask: rows must be a 1-D int64 tensor");
    picked = rows->contiguous();
  }
  const int64_t m = rows ? picked.numel() : rows_total;
  const int64_t* row_ids = rows ? picked.data_ptr<int64_t>() : nullptr;
  Tensor out = at::empty({m, width}, at::kFloat);
  float* o = out.data_ptr<float>();
  const int32_t threshold = static_cast<int32_t>(keep_units) - 32768;
  const float value = static_cast<float>(scale);
  namegen_fused::over_rows(m, width, [&](int64_t i) {
    const int64_t r = row_ids ? row_ids[i] : i;
    TORCH_CHECK(r >= 0 && r < rows_total, "dropout_mask: row ", r, " out of range");
    mask_row(draws + r * width, o + i * width, width, threshold, value);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(namegen_recurrence, m) {
  m.def("random_bits(int n) -> Tensor");
  m.impl("random_bits", c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(random_bits));
  m.def("dropout_mask(int rows_total, int width, int keep_units, float scale, Tensor? rows) -> Tensor");
  m.impl("dropout_mask", c10::DispatchKey::CompositeExplicitAutograd, TORCH_FN(dropout_mask));
}
