// The fused causal attention kernels, FlashAttention-2 style, for one (batch, head) slice at a time.
//
// attention.cpp compiles this file once per instruction set (isa_copies.h), with FASTGPT_ISA naming
// the namespace of each copy, and picks one at run time. That is why there is no include guard and
// nothing from ATen here: no torch header may be
// compiled for a target it was not built for. The loops work on kLanes-wide vectors (GCC/Clang
// vector extensions, see attention_common.h), which each copy maps onto its target's registers.
//
// Layout: every tensor is seen as one (batch, head) slice of T rows of D contiguous elements, with
// any distance between rows (Rows): q, k, v may be views of the packed qkv projection and the
// output and gradients views of (B, T, H, D) memory, without copies. Scores use q pre-scaled
// by 1/sqrt(D). Dropout multiplies the probabilities by 1/(1 - p_eff) or 0, the keep bit being a pure
// function of (seed, b·H + h, i, j) (one Philox-4x32 call per 8 columns, see attention_common.h).

#include "vector_ops.h"
#include "philox_kernels.h"

namespace fastgpt {
namespace FASTGPT_ISA {

// ---------------------------------------------------------------------------------------------
// Vector helpers (load, store, splat, horizontal_sum: vector_ops.h). FASTGPT_AVX2_INTRINSICS says
// whether this copy may use AVX2 intrinsics.
// ---------------------------------------------------------------------------------------------


// z[c] = kept or 0 for the columns col0 + c, c < count (a multiple of kLanes), of row `row` of head
// bh; col0 is a multiple of kDrawsPerCall.
template <typename T>
inline void keep_multipliers(const Dropout& dr, uint64_t bh, int64_t row, int64_t col0, int count, T kept, T* z) {
  uint16_t draws[kDrawsPerPhiloxStep];
  const VecMask<T> threshold = VecMask<T>{} + static_cast<int32_t>(dr.threshold);  // < 2^16: exact
  for (int c0 = 0; c0 < count; c0 += kDrawsPerPhiloxStep) {
    philox_draws(dr, bh, row, (col0 + c0) / kDrawsPerCall, draws);
    for (int c = c0; c < std::min(count, c0 + kDrawsPerPhiloxStep); c += kLanes) {
      u16xL d;
      std::memcpy(&d, draws + c - c0, sizeof(d));
      store(z + c, __builtin_convertvector(d, VecMask<T>) >= threshold ? splat(kept) : Vec<T>{});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Tile helpers
// ---------------------------------------------------------------------------------------------

// Vectors per step of the tile loops: two independent accumulator sets keep both FMA units busy.
constexpr int kVecsPerStep = 2;

// dst (D, kKeyBlock) = rows j0 .. j0 + n - 1 of src transposed, zero in columns n .. round_up(n).
template <typename T, int D>
inline void load_transposed(Rows<const T> src, int64_t j0, int n, T* __restrict dst) {
  const int npad = round_up(n, kVecsPerStep * kLanes);
  for (int d = 0; d < D; ++d) {
    for (int j = 0; j < n; ++j) dst[d * kKeyBlock + j] = src.row(j0 + j)[d];
    for (int j = n; j < npad; ++j) dst[d * kKeyBlock + j] = T(0);
  }
}

// s[r][j] = a[r] · b[j] for kRowGroup rows a (kRowGroup, D) and the columns of bt (D, kKeyBlock),
// j < npad (a multiple of kLanes).
// (May write s up to npad rounded up to kVecsPerStep·kLanes, within kKeyBlock.)
template <typename T, int D>
inline void tile_dots(const T* a, const T* bt, int npad, T* s) {
  for (int c = 0; c < npad; c += kVecsPerStep * kLanes) {
    Vec<T> acc[kRowGroup][kVecsPerStep] = {};
    for (int d = 0; d < D; ++d) {
      Vec<T> b[kVecsPerStep];
      for (int w = 0; w < kVecsPerStep; ++w) b[w] = load(bt + d * kKeyBlock + c + w * kLanes);
      for (int r = 0; r < kRowGroup; ++r)
        for (int w = 0; w < kVecsPerStep; ++w) acc[r][w] += a[r * D + d] * b[w];
    }
    for (int r = 0; r < kRowGroup; ++r)
      for (int w = 0; w < kVecsPerStep; ++w) store(s + r * kKeyBlock + c + w * kLanes, acc[r][w]);
  }
}

// out[r] += sum_j w[r][j] · rows[j0 + j] for kRowGroup rows of out (kRowGroup, D) and n rows;
// the rows of a group are independent FMA chains, which hides their latency for small D.
template <typename T, int D>
inline void tile_weighted_rows(const T* w, Rows<const T> rows, int64_t j0, int n, T* out) {
  constexpr int kVecs = D >= kVecsPerStep * kLanes ? kVecsPerStep : 1;
  for (int d0 = 0; d0 < D; d0 += kVecs * kLanes) {
    Vec<T> acc[kRowGroup][kVecs] = {};
    for (int j = 0; j < n; ++j) {
      Vec<T> x[kVecs];
      for (int u = 0; u < kVecs; ++u) x[u] = load(rows.row(j0 + j) + d0 + u * kLanes);
      for (int r = 0; r < kRowGroup; ++r)
        for (int u = 0; u < kVecs; ++u) acc[r][u] += w[r * kKeyBlock + j] * x[u];
    }
    for (int r = 0; r < kRowGroup; ++r)
      for (int u = 0; u < kVecs; ++u) {
        T* o = out + r * D + d0 + u * kLanes;
        store(o, load(o) + acc[r][u]);
      }
  }
}

// acc[j] += sum_r w[r][j] · rows[r] for j < n: the key-side update (dK, dV) of a row group.
template <typename T, int D>
inline void tile_accumulate_keys(const T* w, const T* rows, int n, T* acc) {
  for (int j = 0; j < n; ++j)
    for (int d0 = 0; d0 < D; d0 += kLanes) {
      Vec<T> sum = load(acc + j * D + d0);
      for (int r = 0; r < kRowGroup; ++r) sum += w[r * kKeyBlock + j] * load(rows + r * D + d0);
      store(acc + j * D + d0, sum);
    }
}

// The largest of s[j] for j < n (npad = n rounded up to kLanes).
template <typename T>
inline T row_max(const T* s, int n, int npad) {
  const Vec<T> lanes = lane_index<T>(), minus_inf = splat(-std::numeric_limits<T>::infinity());
  Vec<T> m = minus_inf;
  for (int c = 0; c < npad; c += kLanes) {
    const Vec<T> x = load(s + c);
    m = (lanes + T(c) < T(n)) & (x > m) ? x : m;
  }
  T result = m[0];
  for (int u = 1; u < kLanes; ++u) result = std::max(result, m[u]);
  return result;
}

// s[j] = exp(s[j] - shift) for j < n, 0 for n <= j < npad; returns the sum.
template <typename T>
inline T exp_shifted(T* s, int n, int npad, T shift) {
  const Vec<T> lanes = lane_index<T>();
  Vec<T> sum = {};
  for (int c = 0; c < npad; c += kLanes) {
    const Vec<T> e = lanes + T(c) < T(n) ? exp_approx(load(s + c) - shift) : Vec<T>{};
    store(s + c, e);
    sum += e;
  }
  return horizontal_sum<T>(sum);
}

// ---------------------------------------------------------------------------------------------
// Forward: query rows [r0, r1) of one head. Online softmax over key tiles, skipping tiles above
// the diagonal; writes out (T, D) rows and lse (T) entries. bh = b·H + h.
// ---------------------------------------------------------------------------------------------

template <typename T, int D>
void forward_rows(Rows<const T> q, Rows<const T> k, Rows<const T> v, int64_t r0, int64_t r1, T scale,
                  const Dropout& dr, uint64_t bh, Rows<T> out, T* lse) {
  const int rows = static_cast<int>(r1 - r0);
  // Row state padded by a row group so a group may run past the last row.
  std::vector<T> qs((kQueryBlock + kRowGroup) * D, T(0)), acc((kQueryBlock + kRowGroup) * D, T(0));
  std::vector<T> kt(D * kKeyBlock), s(kRowGroup * kKeyBlock), z(kKeyBlock);
  T m[kQueryBlock], l[kQueryBlock];
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < D; ++d) qs[r * D + d] = q.row(r0 + r)[d] * scale;
    m[r] = -std::numeric_limits<T>::infinity();
    l[r] = 0;
  }
  const T kept = static_cast<T>(dr.keep_scale);
  for (int64_t kb0 = 0; kb0 < r1; kb0 += kKeyBlock) {
    const int nk = static_cast<int>(std::min<int64_t>(kKeyBlock, r1 - kb0));
    load_transposed<T, D>(k, kb0, nk, kt.data());
    for (int g0 = static_cast<int>(std::max<int64_t>(r0, kb0) - r0); g0 < rows; g0 += kRowGroup) {
      const int group = std::min(kRowGroup, rows - g0);
      const int n_last = std::min<int>(nk, static_cast<int>(r0 + g0 + group - kb0));
      const int npad = round_up(n_last, kLanes);
      tile_dots<T, D>(&qs[g0 * D], kt.data(), npad, s.data());
      for (int r = 0; r < kRowGroup; ++r) {
        T* sr = &s[r * kKeyBlock];
        if (r >= group) {  // past the last row: contributes nothing
          std::fill(sr, sr + npad, T(0));
          continue;
        }
        const int row = g0 + r;
        const int n = std::min<int>(nk, static_cast<int>(r0 + row - kb0 + 1));  // causal: keys j <= i
        const T m_new = std::max(m[row], row_max(sr, n, npad));
        const T alpha = std::exp(m[row] - m_new);  // rescales what earlier tiles accumulated
        l[row] = l[row] * alpha + exp_shifted(sr, n, npad, m_new);
        m[row] = m_new;
        for (int d = 0; d < D; ++d) acc[row * D + d] *= alpha;
        if (dr.on) {
          keep_multipliers(dr, bh, r0 + row, kb0, npad, T(1), z.data());
          for (int j = 0; j < npad; j += kLanes) store(sr + j, load(sr + j) * load(&z[j]));
        }
      }
      tile_weighted_rows<T, D>(s.data(), v, kb0, n_last, &acc[g0 * D]);
    }
  }
  for (int r = 0; r < rows; ++r) {
    const T norm = (dr.on ? kept : T(1)) / l[r];
    for (int d = 0; d < D; ++d) out.row(r0 + r)[d] = acc[r * D + d] * norm;
    lse[r0 + r] = m[r] + std::log(l[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: the keys [c0, c1) of one head against every query row that sees them. Recomputes
// P = exp(S - lse), regenerates the keep mask, writes dK and dV rows [c0, c1) and adds this
// chunk's share of dQ into dq (T, D), which it owns (it zeroes it first).
// ---------------------------------------------------------------------------------------------

template <typename T, int D>
void backward_keys(Rows<const T> q, Rows<const T> k, Rows<const T> v, Rows<const T> grad_out, Rows<const T> out,
                   const T* lse, int64_t seq_len, int64_t c0, int64_t c1, T scale, const Dropout& dr, uint64_t bh,
                   Rows<T> dq, Rows<T> dk, Rows<T> dv) {
  std::vector<T> delta(seq_len);  // rowsum(dO ∘ O) = rowsum(P ∘ dP), for the rows that see these keys
  for (int64_t i = c0; i < seq_len; ++i) {
    Vec<T> sum = {};
    for (int d0 = 0; d0 < D; d0 += kLanes) sum += load(grad_out.row(i) + d0) * load(out.row(i) + d0);
    delta[i] = horizontal_sum<T>(sum);
  }
  for (int64_t i = 0; i < seq_len; ++i) std::fill(dq.row(i), dq.row(i) + D, T(0));
  std::vector<T> kt(D * kKeyBlock), vt(D * kKeyBlock), dk_acc(kKeyBlock * D), dv_acc(kKeyBlock * D);
  std::vector<T> qs(kRowGroup * D), dout(kRowGroup * D), dq_group(kRowGroup * D);
  std::vector<T> s(kRowGroup * kKeyBlock), dp(kRowGroup * kKeyBlock), z(kKeyBlock);
  const T kept = static_cast<T>(dr.keep_scale);
  for (int64_t kb0 = c0; kb0 < c1; kb0 += kKeyBlock) {
    const int nk = static_cast<int>(std::min<int64_t>(kKeyBlock, c1 - kb0));
    load_transposed<T, D>(k, kb0, nk, kt.data());
    load_transposed<T, D>(v, kb0, nk, vt.data());
    std::fill(dk_acc.begin(), dk_acc.end(), T(0));
    std::fill(dv_acc.begin(), dv_acc.end(), T(0));
    for (int64_t i0 = kb0; i0 < seq_len; i0 += kRowGroup) {
      const int group = static_cast<int>(std::min<int64_t>(kRowGroup, seq_len - i0));
      const int n_last = static_cast<int>(std::min<int64_t>(nk, i0 + group - kb0));
      const int npad = round_up(n_last, kLanes);
      for (int r = 0; r < kRowGroup; ++r)
        for (int d = 0; d < D; ++d) {
          qs[r * D + d] = r < group ? q.row(i0 + r)[d] * scale : T(0);
          dout[r * D + d] = r < group ? grad_out.row(i0 + r)[d] : T(0);
        }
      tile_dots<T, D>(qs.data(), kt.data(), npad, s.data());
      tile_dots<T, D>(dout.data(), vt.data(), npad, dp.data());
      for (int r = 0; r < kRowGroup; ++r) {
        T* pr = &s[r * kKeyBlock];   // becomes P ∘ Z, the weights of dV
        T* dsr = &dp[r * kKeyBlock];  // becomes dS = P ∘ (dP ∘ Z - delta)
        if (r >= group) {
          std::fill(pr, pr + npad, T(0));
          std::fill(dsr, dsr + npad, T(0));
          continue;
        }
        const int64_t row = i0 + r;
        const int n = static_cast<int>(std::min<int64_t>(nk, row - kb0 + 1));
        exp_shifted(pr, n, npad, lse[row]);
        if (dr.on) {
          keep_multipliers(dr, bh, row, kb0, npad, kept, z.data());
        } else {
          std::fill(z.begin(), z.begin() + npad, T(1));
        }
        const T row_delta = delta[row];
        for (int j = 0; j < npad; j += kLanes) {
          const Vec<T> p = load(pr + j), zj = load(&z[j]);
          store(dsr + j, p * (load(dsr + j) * zj - row_delta));
          store(pr + j, p * zj);
        }
      }
      tile_accumulate_keys<T, D>(s.data(), dout.data(), n_last, dv_acc.data());
      tile_accumulate_keys<T, D>(dp.data(), qs.data(), n_last, dk_acc.data());
      std::fill(dq_group.begin(), dq_group.end(), T(0));
      tile_weighted_rows<T, D>(dp.data(), k, kb0, n_last, dq_group.data());
      for (int r = 0; r < group; ++r)
        for (int d = 0; d < D; ++d) dq.row(i0 + r)[d] += dq_group[r * D + d] * scale;
    }
    for (int j = 0; j < nk; ++j)
      for (int d = 0; d < D; ++d) {
        dk.row(kb0 + j)[d] = dk_acc[j * D + d];
        dv.row(kb0 + j)[d] = dv_acc[j * D + d];
      }
  }
}

// The keep mask of rows [row0, row1) of the flattened (B·H·T) rows, as 0/1 bytes (row, T).
inline void keep_mask_rows(const Dropout& dr, int64_t seq_len, int64_t row0, int64_t row1, bool* mask) {
  std::vector<float> z(round_up(static_cast<int>(seq_len), kLanes));
  for (int64_t row = row0; row < row1; ++row) {
    keep_multipliers(dr, row / seq_len, row % seq_len, 0, static_cast<int>(z.size()), 1.0f, z.data());
    for (int64_t j = 0; j < seq_len; ++j) mask[row * seq_len + j] = z[j] != 0.0f;
  }
}

// The entry points of this copy, as static members so that with_isa can pick a copy by type (in an
// unnamed namespace: every kernel header names its struct Kernels).
namespace {
struct Kernels {
  template <typename T, int D>
  static void forward(Rows<const T> q, Rows<const T> k, Rows<const T> v, int64_t r0, int64_t r1, T scale,
                      const Dropout& dr, uint64_t bh, Rows<T> out, T* lse) {
    forward_rows<T, D>(q, k, v, r0, r1, scale, dr, bh, out, lse);
  }
  template <typename T, int D>
  static void backward(Rows<const T> q, Rows<const T> k, Rows<const T> v, Rows<const T> grad_out,
                       Rows<const T> out, const T* lse, int64_t seq_len, int64_t c0, int64_t c1, T scale,
                       const Dropout& dr, uint64_t bh, Rows<T> dq, Rows<T> dk, Rows<T> dv) {
    backward_keys<T, D>(q, k, v, grad_out, out, lse, seq_len, c0, c1, scale, dr, bh, dq, dk, dv);
  }
  static void keep_mask(const Dropout& dr, int64_t seq_len, int64_t row0, int64_t row1, bool* mask) {
    keep_mask_rows(dr, seq_len, row0, row1, mask);
  }
};

}  // namespace

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
