// The fused causal attention kernels, FlashAttention-2 style, for one (batch, head) slice at a time.
//
// attention.cpp includes this file twice: once for the baseline instruction set and once under an
// AVX2 + FMA target pragma, with FASTGPT_ISA naming the namespace of each copy, and picks one at run
// time. That is why there is no include guard and nothing from ATen here: no torch header may be
// compiled for a target it was not built for. The loops are written over fixed-width chunks of
// kLanes elements so that the compiler vectorises them at -O3 for either target.
//
// Layout: every pointer is a contiguous (T, D) slice of one (batch, head). Scores use q pre-scaled
// by 1/sqrt(D). Dropout multiplies the probabilities by 1/(1 - p) or 0, the keep bit being a pure
// function of (seed, ((b·H + h)·T + i)·T + j) (Philox-4x32-10, as fastgpt.attention_op).

namespace fastgpt {
namespace FASTGPT_ISA {

// z[j] = kept or 0 for the elements at offsets offset + j, j < count (a multiple of kLanes).
template <typename T>
inline void keep_multipliers(const Dropout& dr, uint64_t offset, int count, T kept, T* __restrict z) {
  const uint32_t lo = static_cast<uint32_t>(offset), hi = static_cast<uint32_t>(offset >> 32);
  for (int j = 0; j < count; ++j) {
    uint32_t c0 = lo + static_cast<uint32_t>(j);
    uint32_t c1 = hi + (c0 < lo ? 1u : 0u);  // carry into the high word
    uint32_t c2 = 0, c3 = 0;
    for (int r = 0; r < 10; ++r) {
      const uint64_t pb = static_cast<uint64_t>(kPhiloxRoundB) * c2;
      const uint64_t pa = static_cast<uint64_t>(kPhiloxRoundA) * c0;
      const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ dr.key0[r];
      const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ dr.key1[r];
      c1 = static_cast<uint32_t>(pb);
      c3 = static_cast<uint32_t>(pa);
      c0 = n0;
      c2 = n2;
    }
    z[j] = c0 >= dr.threshold ? kept : T(0);
  }
}

// ---------------------------------------------------------------------------------------------
// exp: a vectorisable float exp (Cephes' polynomial, ~1 ulp) for arguments <= ~0; double uses
// std::exp (float64 is the gradcheck path, not a fast one).
// ---------------------------------------------------------------------------------------------

inline float exp_approx(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.44269504088896341f + 12582912.0f;  // 1.5·2^23: rounds x·log2(e) to an integer
  const float n = t - 12582912.0f;
  int32_t n_int;
  std::memcpy(&n_int, &t, sizeof(n_int));
  n_int -= 0x4B400000;
  const float r = x - n * 0.693359375f - n * -2.12194440e-4f;  // x - n·ln 2 in two parts
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &poly, sizeof(bits));
  bits += static_cast<uint32_t>(n_int) << 23;  // multiply by 2^n
  std::memcpy(&poly, &bits, sizeof(poly));
  return poly;
}

inline double exp_approx(double x) { return std::exp(x); }

// ---------------------------------------------------------------------------------------------
// Tile helpers
// ---------------------------------------------------------------------------------------------

// dst (D, kKeyBlock) = the n rows of src (n, D) transposed, zero in columns n .. round_up(n).
template <typename T, int D>
inline void load_transposed(const T* __restrict src, int n, T* __restrict dst) {
  const int npad = round_up(n, kLanes);
  for (int d = 0; d < D; ++d) {
    for (int j = 0; j < n; ++j) dst[d * kKeyBlock + j] = src[j * D + d];
    for (int j = n; j < npad; ++j) dst[d * kKeyBlock + j] = T(0);
  }
}

// s[r][j] = a[r] · b[j] for kRowGroup rows a (kRowGroup, D) and the columns of bt (D, kKeyBlock),
// j < npad (a multiple of kLanes).
template <typename T, int D>
inline void tile_dots(const T* __restrict a, const T* __restrict bt, int npad, T* __restrict s) {
  for (int c = 0; c < npad; c += kLanes) {
    T acc[kRowGroup][kLanes] = {};
    for (int d = 0; d < D; ++d)
      for (int r = 0; r < kRowGroup; ++r)
        for (int u = 0; u < kLanes; ++u) acc[r][u] += a[r * D + d] * bt[d * kKeyBlock + c + u];
    for (int r = 0; r < kRowGroup; ++r)
      for (int u = 0; u < kLanes; ++u) s[r * kKeyBlock + c + u] = acc[r][u];
  }
}

// out[r] += sum_j w[r][j] · rows[j] for kRowGroup rows of out (kRowGroup, D) and n rows (n, D);
// the rows of a group are independent FMA chains, which hides their latency for small D.
template <typename T, int D>
inline void tile_weighted_rows(const T* __restrict w, const T* __restrict rows, int n, T* __restrict out) {
  T acc[kRowGroup][D] = {};
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < kRowGroup; ++r)
      for (int d = 0; d < D; ++d) acc[r][d] += w[r * kKeyBlock + j] * rows[j * D + d];
  for (int r = 0; r < kRowGroup; ++r)
    for (int d = 0; d < D; ++d) out[r * D + d] += acc[r][d];
}

// acc[j] += sum_r w[r][j] · rows[r] for j < n: the key-side update (dK, dV) of a row group.
template <typename T, int D>
inline void tile_accumulate_keys(const T* __restrict w, const T* __restrict rows, int n, T* __restrict acc) {
  for (int j = 0; j < n; ++j)
    for (int d = 0; d < D; ++d) {
      T sum = acc[j * D + d];
      for (int r = 0; r < kRowGroup; ++r) sum += w[r * kKeyBlock + j] * rows[r * D + d];
      acc[j * D + d] = sum;
    }
}

template <typename T>
inline T row_max(const T* s, int npad) {
  T lanes[kLanes];
  for (int u = 0; u < kLanes; ++u) lanes[u] = -std::numeric_limits<T>::infinity();
  for (int c = 0; c < npad; c += kLanes)
    for (int u = 0; u < kLanes; ++u) lanes[u] = std::max(lanes[u], s[c + u]);
  T m = lanes[0];
  for (int u = 1; u < kLanes; ++u) m = std::max(m, lanes[u]);
  return m;
}

// s[j] = exp(s[j] - shift) for j < n, 0 for n <= j < npad; returns the sum.
template <typename T>
inline T exp_shifted(T* s, int n, int npad, T shift) {
  T lanes[kLanes] = {};
  for (int c = 0; c < npad; c += kLanes)
    for (int u = 0; u < kLanes; ++u) {
      const T e = c + u < n ? exp_approx(s[c + u] - shift) : T(0);
      s[c + u] = e;
      lanes[u] += e;
    }
  T sum = 0;
  for (int u = 0; u < kLanes; ++u) sum += lanes[u];
  return sum;
}

// ---------------------------------------------------------------------------------------------
// Forward: query rows [r0, r1) of one head. Online softmax over key tiles, skipping tiles above
// the diagonal; writes out (T, D) rows and lse (T) entries. head_offset = (b·H + h)·T·T.
// ---------------------------------------------------------------------------------------------

template <typename T, int D>
void forward_rows(const T* q, const T* k, const T* v, int64_t seq_len, int64_t r0, int64_t r1, T scale,
                  const Dropout& dr, uint64_t head_offset, T* out, T* lse) {
  const int rows = static_cast<int>(r1 - r0);
  // Row state padded by a row group so a group may run past the last row.
  std::vector<T> qs((kQueryBlock + kRowGroup) * D, T(0)), acc((kQueryBlock + kRowGroup) * D, T(0));
  std::vector<T> kt(D * kKeyBlock), s(kRowGroup * kKeyBlock), z(kKeyBlock);
  T m[kQueryBlock], l[kQueryBlock];
  for (int r = 0; r < rows; ++r) {
    for (int d = 0; d < D; ++d) qs[r * D + d] = q[(r0 + r) * D + d] * scale;
    m[r] = -std::numeric_limits<T>::infinity();
    l[r] = 0;
  }
  const T kept = static_cast<T>(dr.keep_scale);
  for (int64_t kb0 = 0; kb0 < r1; kb0 += kKeyBlock) {
    const int nk = static_cast<int>(std::min<int64_t>(kKeyBlock, r1 - kb0));
    load_transposed<T, D>(k + kb0 * D, nk, kt.data());
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
        for (int j = n; j < npad; ++j) sr[j] = -std::numeric_limits<T>::infinity();
        const T m_new = std::max(m[row], row_max(sr, npad));
        const T alpha = std::exp(m[row] - m_new);  // rescales what earlier tiles accumulated
        l[row] = l[row] * alpha + exp_shifted(sr, n, npad, m_new);
        m[row] = m_new;
        for (int d = 0; d < D; ++d) acc[row * D + d] *= alpha;
        if (dr.on) {
          keep_multipliers(dr, head_offset + static_cast<uint64_t>(r0 + row) * seq_len + kb0, npad, T(1), z.data());
          for (int j = 0; j < npad; ++j) sr[j] *= z[j];
        }
      }
      tile_weighted_rows<T, D>(s.data(), v + kb0 * D, n_last, &acc[g0 * D]);
    }
  }
  for (int r = 0; r < rows; ++r) {
    const T norm = (dr.on ? kept : T(1)) / l[r];
    for (int d = 0; d < D; ++d) out[(r0 + r) * D + d] = acc[r * D + d] * norm;
    lse[r0 + r] = m[r] + std::log(l[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward: the keys [c0, c1) of one head against every query row that sees them. Recomputes
// P = exp(S - lse), regenerates the keep mask, writes dK and dV rows [c0, c1) and adds this
// chunk's share of dQ into dq (T, D) rows [c0, T). delta (T) = rowsum(dO ∘ O).
// ---------------------------------------------------------------------------------------------

template <typename T, int D>
void backward_keys(const T* q, const T* k, const T* v, const T* grad_out, const T* lse, const T* delta,
                   int64_t seq_len, int64_t c0, int64_t c1, T scale, const Dropout& dr, uint64_t head_offset,
                   T* dq, T* dk, T* dv) {
  std::vector<T> kt(D * kKeyBlock), vt(D * kKeyBlock), dk_acc(kKeyBlock * D), dv_acc(kKeyBlock * D);
  std::vector<T> qs(kRowGroup * D), dout(kRowGroup * D), dq_group(kRowGroup * D);
  std::vector<T> s(kRowGroup * kKeyBlock), dp(kRowGroup * kKeyBlock), z(kKeyBlock);
  const T kept = static_cast<T>(dr.keep_scale);
  for (int64_t kb0 = c0; kb0 < c1; kb0 += kKeyBlock) {
    const int nk = static_cast<int>(std::min<int64_t>(kKeyBlock, c1 - kb0));
    load_transposed<T, D>(k + kb0 * D, nk, kt.data());
    load_transposed<T, D>(v + kb0 * D, nk, vt.data());
    std::fill(dk_acc.begin(), dk_acc.end(), T(0));
    std::fill(dv_acc.begin(), dv_acc.end(), T(0));
    for (int64_t i0 = kb0; i0 < seq_len; i0 += kRowGroup) {
      const int group = static_cast<int>(std::min<int64_t>(kRowGroup, seq_len - i0));
      const int n_last = static_cast<int>(std::min<int64_t>(nk, i0 + group - kb0));
      const int npad = round_up(n_last, kLanes);
      for (int r = 0; r < kRowGroup; ++r)
        for (int d = 0; d < D; ++d) {
          qs[r * D + d] = r < group ? q[(i0 + r) * D + d] * scale : T(0);
          dout[r * D + d] = r < group ? grad_out[(i0 + r) * D + d] : T(0);
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
          keep_multipliers(dr, head_offset + static_cast<uint64_t>(row) * seq_len + kb0, npad, kept, z.data());
        } else {
          std::fill(z.begin(), z.begin() + npad, T(1));
        }
        const T row_delta = delta[row];
        for (int j = 0; j < npad; ++j) {
          dsr[j] = pr[j] * (dsr[j] * z[j] - row_delta);
          pr[j] *= z[j];
        }
      }
      tile_accumulate_keys<T, D>(s.data(), dout.data(), n_last, dv_acc.data());
      tile_accumulate_keys<T, D>(dp.data(), qs.data(), n_last, dk_acc.data());
      std::fill(dq_group.begin(), dq_group.end(), T(0));
      tile_weighted_rows<T, D>(dp.data(), k + kb0 * D, n_last, dq_group.data());
      for (int r = 0; r < group; ++r)
        for (int d = 0; d < D; ++d) dq[(i0 + r) * D + d] += dq_group[r * D + d] * scale;
    }
    for (int j = 0; j < nk; ++j)
      for (int d = 0; d < D; ++d) {
        dk[(kb0 + j) * D + d] = dk_acc[j * D + d];
        dv[(kb0 + j) * D + d] = dv_acc[j * D + d];
      }
  }
}

// The keep mask of rows [row0, row1) of the flattened (B·H·T) rows, as 0/1 bytes (row, T).
inline void keep_mask_rows(const Dropout& dr, int64_t seq_len, int64_t row0, int64_t row1, bool* mask) {
  std::vector<float> z(round_up(static_cast<int>(seq_len), kLanes));
  for (int64_t row = row0; row < row1; ++row) {
    keep_multipliers(dr, static_cast<uint64_t>(row) * seq_len, static_cast<int>(z.size()), 1.0f, z.data());
    for (int64_t j = 0; j < seq_len; ++j) mask[row * seq_len + j] = z[j] != 0.0f;
  }
}

// The entry points of this copy, as static members so that the caller can pick a copy by type.
struct Isa {
  template <typename T, int D>
  static void forward(const T* q, const T* k, const T* v, int64_t seq_len, int64_t r0, int64_t r1, T scale,
                      const Dropout& dr, uint64_t head_offset, T* out, T* lse) {
    forward_rows<T, D>(q, k, v, seq_len, r0, r1, scale, dr, head_offset, out, lse);
  }
  template <typename T, int D>
  static void backward(const T* q, const T* k, const T* v, const T* grad_out, const T* lse, const T* delta,
                       int64_t seq_len, int64_t c0, int64_t c1, T scale, const Dropout& dr, uint64_t head_offset,
                       T* dq, T* dk, T* dv) {
    backward_keys<T, D>(q, k, v, grad_out, lse, delta, seq_len, c0, c1, scale, dr, head_offset, dq, dk, dv);
  }
  static void keep_mask(const Dropout& dr, int64_t seq_len, int64_t row0, int64_t row1, bool* mask) {
    keep_mask_rows(dr, seq_len, row0, row1, mask);
  }
};

}  // namespace FASTGPT_ISA
}  // namespace fastgpt
