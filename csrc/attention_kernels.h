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

// x[r][c] -> x[c][r] for a kLanes x kLanes block, in three rounds of two-vector shuffles.
template <typename T>
inline void transpose_block(Vec<T> (&x)[kLanes]) {
  static_assert(kLanes == 8, "three rounds of pairs");
  Vec<T> t[8], u[8];
  for (int i = 0; i < 4; ++i) {  // pairs of rows interleaved within each half
    t[2 * i] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[2 * i + 1] = __builtin_shufflevector(x[2 * i], x[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int h = 0; h < 2; ++h)  // four rows of columns c and c + 4
    for (int i = 0; i < 2; ++i) {
      u[4 * h + 2 * i] = __builtin_shufflevector(t[4 * h + i], t[4 * h + i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[4 * h + 2 * i + 1] = __builtin_shufflevector(t[4 * h + i], t[4 * h + i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  for (int c = 0; c < 4; ++c) {
    x[c] = __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    x[c + 4] = __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// dst (D, kKeyBlock) = rows j0 .. j0 + n - 1 of src transposed, zero in columns n .. round_up(n).
template <typename T, int D>
inline void load_transposed(Rows<const T> src, int64_t j0, int n, T* __restrict dst) {
  const int npad = round_up(n, kVecsPerStep * kLanes);
  int j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int d0 = 0; d0 < D; d0 += kLanes) {
      Vec<T> x[kLanes];
      for (int u = 0; u < kLanes; ++u) x[u] = load(src.row(j0 + j + u) + d0);
      transpose_block<T>(x);
      for (int u = 0; u < kLanes; ++u) store(dst + (d0 + u) * kKeyBlock + j, x[u]);
    }
  for (int d = 0; d < D; ++d) {
    for (int jr = j; jr < n; ++jr) dst[d * kKeyBlock + jr] = src.row(j0 + jr)[d];
    for (int jr = n; jr < npad; ++jr) dst[d * kKeyBlock + jr] = T(0);
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
// (At D = kLanes the even and odd j go to separate accumulators: kVecsPerStep chains a row either way.)
template <typename T, int D>
inline void tile_weighted_rows(const T* w, Rows<const T> rows, int64_t j0, int n, T* out) {
  constexpr int kVecs = D >= kVecsPerStep * kLanes ? kVecsPerStep : 1;
  constexpr int kSplit = kVecsPerStep / kVecs;  // interleaved partial sums over j
  for (int d0 = 0; d0 < D; d0 += kVecs * kLanes) {
    Vec<T> acc[kSplit][kRowGroup][kVecs] = {};
    const auto add_key = [&](int j, Vec<T>(&sums)[kRowGroup][kVecs]) {
      Vec<T> x[kVecs];
      for (int u = 0; u < kVecs; ++u) x[u] = load(rows.row(j0 + j) + d0 + u * kLanes);
      for (int r = 0; r < kRowGroup; ++r)
        for (int u = 0; u < kVecs; ++u) sums[r][u] += w[r * kKeyBlock + j] * x[u];
    };
    int j = 0;
    for (; j + kSplit <= n; j += kSplit)
      for (int h = 0; h < kSplit; ++h) add_key(j + h, acc[h]);
    for (; j < n; ++j) add_key(j, acc[0]);
    for (int r = 0; r < kRowGroup; ++r)
      for (int u = 0; u < kVecs; ++u) {
        Vec<T> sum = acc[0][r][u];
        for (int h = 1; h < kSplit; ++h) sum += acc[h][r][u];
        T* o = out + r * D + d0 + u * kLanes;
        store(o, load(o) + sum);
      }
  }
}

// C (M, N) = A (M, K) · B (K, N), or C += A · B: A read at a[m·a_m + k·a_k] (so a small matrix
// or its transpose), B's rows at b + k·ldb, C's at c + m·ldc. The register tile is kTileRows rows
// of kTileVecs vectors, eight independent FMA chains; each B vector loaded serves all its rows.
template <typename T, int kTileRows, int kTileVecs>
inline void gemm_tiles(const T* a, int64_t a_m, int64_t a_k, const T* b, int64_t ldb, T* c, int64_t ldc, int M,
                       int n0, int n1, int K, bool accumulate) {
  for (int m0 = 0; m0 < M; m0 += kTileRows)
    for (int c0 = n0; c0 < n1; c0 += kTileVecs * kLanes) {
      Vec<T> acc[kTileRows][kTileVecs];
      for (int r = 0; r < kTileRows; ++r)
        for (int w = 0; w < kTileVecs; ++w)
          acc[r][w] = accumulate ? load(c + (m0 + r) * ldc + c0 + w * kLanes) : Vec<T>{};
      for (int k = 0; k < K; ++k) {
        Vec<T> bk[kTileVecs];
        for (int w = 0; w < kTileVecs; ++w) bk[w] = load(b + k * ldb + c0 + w * kLanes);
        for (int r = 0; r < kTileRows; ++r) {
          const T ark = a[(m0 + r) * a_m + k * a_k];
          for (int w = 0; w < kTileVecs; ++w) acc[r][w] += ark * bk[w];
        }
      }
      for (int r = 0; r < kTileRows; ++r)
        for (int w = 0; w < kTileVecs; ++w) store(c + (m0 + r) * ldc + c0 + w * kLanes, acc[r][w]);
    }
}

// The small products of the backward pass: M a multiple of 8, N of kLanes.
template <typename T>
inline void gemm(const T* a, int64_t a_m, int64_t a_k, const T* b, int64_t ldb, T* c, int64_t ldc, int M, int N,
                 int K, bool accumulate) {
  const int wide = N / (2 * kLanes) * (2 * kLanes);
  gemm_tiles<T, 4, 2>(a, a_m, a_k, b, ldb, c, ldc, M, 0, wide, K, accumulate);
  gemm_tiles<T, 8, 1>(a, a_m, a_k, b, ldb, c, ldc, M, wide, N, K, accumulate);
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
// the diagonal; writes out (T, D) rows and lse (T) entries. bh = b·H + h. Each key tile is
// transposed once for all the rows, so the more rows a call takes, the less it transposes.
// ---------------------------------------------------------------------------------------------

template <typename T, int D>
void forward_rows(Rows<const T> q, Rows<const T> k, Rows<const T> v, int64_t r0, int64_t r1, T scale,
                  const Dropout& dr, uint64_t bh, Rows<T> out, T* lse) {
  const int rows = static_cast<int>(r1 - r0);
  // Row state padded by a row group so a group may run past the last row.
  std::vector<T> qs((rows + kRowGroup) * D, T(0)), acc((rows + kRowGroup) * D, T(0));
  std::vector<T> kt(D * kKeyBlock), s(kRowGroup * kKeyBlock), z(kKeyBlock), m(rows), l(rows);
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
  constexpr int kRows = kBackwardRows;
  std::vector<T> delta(seq_len);  // rowsum(dO ∘ O) = rowsum(P ∘ dP), for the rows that see these keys
  for (int64_t i = c0; i < seq_len; ++i) {
    Vec<T> sum = {};
    for (int d0 = 0; d0 < D; d0 += kLanes) sum += load(grad_out.row(i) + d0) * load(out.row(i) + d0);
    delta[i] = horizontal_sum<T>(sum);
  }
  for (int64_t i = 0; i < seq_len; ++i) std::fill(dq.row(i), dq.row(i) + D, T(0));
  std::vector<T> kt(D * kKeyBlock), vt(D * kKeyBlock), dk_acc(kKeyBlock * D), dv_acc(kKeyBlock * D);
  std::vector<T> qs(kRows * D), dout(kRows * D), dq_rows(kRows * D);
  std::vector<T> s(kRows * kKeyBlock), dp(kRows * kKeyBlock), z(kKeyBlock);
  const T kept = static_cast<T>(dr.keep_scale);
  for (int64_t kb0 = c0; kb0 < c1; kb0 += kKeyBlock) {
    const int nk = static_cast<int>(std::min<int64_t>(kKeyBlock, c1 - kb0));
    load_transposed<T, D>(k, kb0, nk, kt.data());
    load_transposed<T, D>(v, kb0, nk, vt.data());
    std::fill(dk_acc.begin(), dk_acc.end(), T(0));
    std::fill(dv_acc.begin(), dv_acc.end(), T(0));
    for (int64_t i0 = kb0; i0 < seq_len; i0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, seq_len - i0));
      const int n_last = static_cast<int>(std::min<int64_t>(nk, i0 + rows - kb0));  // keys the last row sees
      const int npad = round_up(n_last, kLanes);
      for (int r = 0; r < kRows; ++r)
        for (int d = 0; d < D; ++d) {
          qs[r * D + d] = r < rows ? q.row(i0 + r)[d] * scale : T(0);
          dout[r * D + d] = r < rows ? grad_out.row(i0 + r)[d] : T(0);
        }
      gemm(qs.data(), D, 1, kt.data(), kKeyBlock, s.data(), kKeyBlock, kRows, npad, D, false);     // S
      gemm(dout.data(), D, 1, vt.data(), kKeyBlock, dp.data(), kKeyBlock, kRows, npad, D, false);  // dP
      for (int r = 0; r < kRows; ++r) {
        T* pr = &s[r * kKeyBlock];   // becomes P ∘ Z, the weights of dV
        T* dsr = &dp[r * kKeyBlock];  // becomes dS = P ∘ (dP ∘ Z - delta)
        if (r >= rows) {
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
      gemm(s.data(), 1, kKeyBlock, dout.data(), D, dv_acc.data(), D, npad, D, kRows, true);  // dV += (P∘Z)^T dO
      gemm(dp.data(), 1, kKeyBlock, qs.data(), D, dk_acc.data(), D, npad, D, kRows, true);   // dK += dS^T Q
      gemm(dp.data(), kKeyBlock, 1, k.row(kb0), k.ld, dq_rows.data(), D, kRows, D, n_last, false);  // dQ = dS K
      for (int r = 0; r < rows; ++r)
        for (int d = 0; d < D; ++d) dq.row(i0 + r)[d] += dq_rows[r * D + d] * scale;
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
