// The CUDA backend's primitives: the list of backends/reference/primitives.hpp, on device
// pointers, for float (bf16 where the mixed-precision step stores it). Declarations only: host
// code of any compiler calls them; their kernels are compiled once by nvcc from
// backends/cuda/implementation.cu (CMake's ftune_cuda target, or a .cu file of your program that
// includes it). They run asynchronously on cuda::current_stream(), except those that return a
// value to the host or check ids, which wait for their result.
//
// Matrices are row-major, as everywhere in ftune; GEMMs go to cuBLAS (fp32: its exact-fp32
// kernels, no TF32; bf16: operands rounded to nearest even, fp32 sums on tensor cores).
// Reductions run in a fixed order: every primitive gives the same bits on every run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "ftune/backends/common.hpp"
#include "ftune/backends/cuda/memory.hpp"
#include "ftune/core/error.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/core/types.hpp"

FTUNE_NAMESPACE_BEGIN

namespace backends::cuda {

// Matrix products (cuBLAS)

/// C(M,N) = alpha op(A)(M,K) op(B)(K,N) + beta C; lda/ldb/ldc are row strides (BLAS semantics:
/// beta == 0 ignores C).
void gemm(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
          const float* A, std::size_t lda, const float* B, std::size_t ldb, float beta, float* C,
          std::size_t ldc);
/// `batch` gemm's whose operands start stride_* elements apart.
void gemm_strided_batched(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K,
                          float alpha, const float* A, std::size_t lda, std::size_t stride_a,
                          const float* B, std::size_t ldb, std::size_t stride_b, float beta,
                          float* C, std::size_t ldc, std::size_t stride_c, std::size_t batch);
/// gemm with A and B rounded to bf16 and fp32 sums (tensor cores).
void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
               const float* A, std::size_t lda, const float* B, std::size_t ldb, float beta,
               float* C, std::size_t ldc);
/// gemm_bf16 with A already in bf16.
void gemm_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
               const bf16* A, std::size_t lda, const float* B, std::size_t ldb, float beta,
               float* C, std::size_t ldc);
/// `batch` gemm_bf16's whose operands start stride_* elements apart.
void gemm_strided_batched_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, float alpha, const float* A, std::size_t lda,
                               std::size_t stride_a, const float* B, std::size_t ldb,
                               std::size_t stride_b, float beta, float* C, std::size_t ldc,
                               std::size_t stride_c, std::size_t batch);
/// The same with A already in bf16.
void gemm_strided_batched_bf16(transpose ta, transpose tb, std::size_t M, std::size_t N,
                               std::size_t K, float alpha, const bf16* A, std::size_t lda,
                               std::size_t stride_a, const float* B, std::size_t ldb,
                               std::size_t stride_b, float beta, float* C, std::size_t ldc,
                               std::size_t stride_c, std::size_t batch);

/// The products of `heads` matrices in each of `sequences` groups in one call (attention's heads
/// of every sequence, which one stride cannot address): matrix (s, h) of operand X starts
/// s x_seq + h x_head elements in. In precision p (bf16: operands rounded to bf16, fp32 sums).
void gemm_heads(ftune::precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                std::size_t K, float alpha, const float* A, std::size_t lda, std::size_t a_seq,
                std::size_t a_head, const float* B, std::size_t ldb, std::size_t b_seq,
                std::size_t b_head, float beta, float* C, std::size_t ldc, std::size_t c_seq,
                std::size_t c_head, std::size_t sequences, std::size_t heads);
/// The same with A already in bf16 (p must be bf16).
void gemm_heads(ftune::precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                std::size_t K, float alpha, const bf16* A, std::size_t lda, std::size_t a_seq,
                std::size_t a_head, const float* B, std::size_t ldb, std::size_t b_seq,
                std::size_t b_head, float beta, float* C, std::size_t ldc, std::size_t c_seq,
                std::size_t c_head, std::size_t sequences, std::size_t heads);

// Bias, residual, activations (element-wise)

/// y(rows, cols) += bias(cols) on every row.
void bias_add(float* y, const float* bias, std::size_t rows, std::size_t cols);
/// dbias(cols) += Σ over rows of dy(rows, cols).
void bias_backward(float* dbias, const float* dy, std::size_t rows, std::size_t cols);
/// out = a + b (out may alias a or b).
void residual_add(float* out, const float* a, const float* b, std::size_t n);
/// y = x Φ(x) (erf GELU).
void gelu_forward(float* y, const float* x, std::size_t n);
/// dx += dy (Φ(x) + x φ(x)).
void gelu_backward(float* dx, const float* x, const float* dy, std::size_t n);
/// y = tanh-approximated GELU ("gelu_new").
void gelu_tanh_forward(float* y, const float* x, std::size_t n);
/// dx += dy gelu_tanh'(x).
void gelu_tanh_backward(float* dx, const float* x, const float* dy, std::size_t n);
/// y = tanh(x).
void tanh_forward(float* y, const float* x, std::size_t n);
/// dx += dy (1 - y²), from the forward output y.
void tanh_backward(float* dx, const float* y, const float* dy, std::size_t n);
/// y = max(x, 0).
void relu_forward(float* y, const float* x, std::size_t n);
/// dx += dy where x > 0.
void relu_backward(float* dx, const float* x, const float* dy, std::size_t n);
/// y = x sigmoid(x).
void silu_forward(float* y, const float* x, std::size_t n);
/// dx += dy sigmoid(x) (1 + x (1 - sigmoid(x))).
void silu_backward(float* dx, const float* x, const float* dy, std::size_t n);
/// out = a b element-wise.
void multiply(float* out, const float* a, const float* b, std::size_t n);
/// da += dout b, db += dout a (either may be null).
void multiply_backward(float* da, float* db, const float* a, const float* b, const float* dout,
                       std::size_t n);

// Normalizations (one block per row)

/// LayerNorm of each row of x (rows, C), saving mean and rstd (rows).
void layer_norm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                        const float* bias, std::size_t rows, std::size_t C, float eps);
/// dx, dweight, dbias += LayerNorm's gradients (dweight and dbias summed over rows in a fixed
/// order).
void layer_norm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                         const float* weight, const float* mean, const float* rstd,
                         std::size_t rows, std::size_t C);
/// RMSNorm of each row, saving rstd.
void rms_norm_forward(float* out, float* rstd, const float* x, const float* weight,
                      std::size_t rows, std::size_t C, float eps);
/// dx, dweight += RMSNorm's gradients.
void rms_norm_backward(float* dx, float* dweight, const float* dout, const float* x,
                       const float* weight, const float* rstd, std::size_t rows, std::size_t C);

// Rotary embeddings and grouped-query heads

/// cos, sin (rows, half) of positions[r] / theta^(2i / 2 half).
void rope_table(float* cos, float* sin, const token_id* positions, std::size_t rows,
                std::size_t half, double theta);
/// Rotates x (rows, heads, 2 half), rows ld apart, in place (inverse: the opposite angles).
void rope_apply(float* x, std::size_t ld, const float* cos, const float* sin, std::size_t rows,
                std::size_t heads, std::size_t half, bool inverse);
/// Each of the kv_heads heads of d values repeated `group` times, for `rows` rows.
void repeat_heads(float* out, const float* in, std::size_t rows, std::size_t kv_heads,
                  std::size_t group, std::size_t d);
/// din += the sum over each head's `group` copies (repeat_heads' backward).
void repeat_heads_backward(float* din, const float* dout, std::size_t rows, std::size_t kv_heads,
                           std::size_t group, std::size_t d);

// Attention softmax (one warp per row)

/// probs(B,H,Tq,Tk) = softmax_k(scale scores + key_mask(B,Tk)) (causal: keys after the query
/// dropped); all-dropped rows get zeros.
void softmax_forward(float* probs, const float* scores, const float* key_mask, float scale,
                     std::size_t B, std::size_t H, std::size_t Tq, std::size_t Tk,
                     bool causal = false);
/// dscores (+)= scale p (g - Σ p g), g = dprobs (times keep keep_scale with a dropout mask).
void softmax_backward(float* dscores, const float* probs, const float* dprobs, float scale,
                      std::size_t rows, std::size_t Tk, const std::uint8_t* keep = nullptr,
                      float keep_scale = 1.0f, bool accumulate = true);
/// softmax_backward storing dscores rounded to bf16 (accumulate must be false).
void softmax_backward(bf16* dscores, const float* probs, const float* dprobs, float scale,
                      std::size_t rows, std::size_t Tk, const std::uint8_t* keep = nullptr,
                      float keep_scale = 1.0f, bool accumulate = false);

// Dropout (the CPU's Philox stream: the same mask for the same seed)

/// y = x keep / (1 - p), keep(i) = [s.bits(i) >= threshold(p)], written to mask.
void dropout_forward(float* y, std::uint8_t* mask, const float* x, float p, std::size_t n,
                     const random_stream& s);
/// dropout_forward storing y rounded to bf16.
void dropout_forward(bf16* y, std::uint8_t* mask, const float* x, float p, std::size_t n,
                     const random_stream& s);
/// dx += dy mask / (1 - p).
void dropout_backward(float* dx, const std::uint8_t* mask, const float* dy, float p, std::size_t n);

// Ids, masks and copies

/// mask(i) = 0 for a token, the lowest float for padding (attention null: all tokens).
void key_mask(float* mask, const token_id* attention, std::size_t n);
/// ids(i) = start + i % t.
void position_ids(token_id* ids, std::size_t n, std::size_t t, std::size_t start);
/// out = in, or zeros when in is null.
void copy_ids(token_id* out, const token_id* in, std::size_t n);
/// out = in for n values.
void copy(float* out, const float* in, std::size_t n);
/// out(r, :) = x(r stride, :) for rows rows of C values.
void gather_rows(float* out, const float* x, std::size_t rows, std::size_t C, std::size_t stride);

// Embedding and cross-entropy (ids are checked: out_of_range names the first bad one)

/// out(n, C) = table(ids, :).
void embedding_forward(float* out, const token_id* ids, const float* table, std::size_t n,
                       std::size_t C, std::size_t vocab);
/// dtable(ids[i], :) += dout(i, :) except padding_idx (repeated ids summed in order).
void embedding_backward(float* dtable, const token_id* ids, const float* dout, std::size_t n,
                        std::size_t C, std::size_t vocab, token_id padding_idx = -1);
/// losses(rows) = logsumexp - the target's logit (0 where ignored); returns the rows counted.
std::size_t cross_entropy_forward(float* losses, const float* logits, const token_id* targets,
                                  std::size_t rows, std::size_t V, token_id ignore_index = -100);
/// dlogits += dlosses (softmax - onehot) on the rows not ignored.
void cross_entropy_backward(float* dlogits, const float* logits, const token_id* targets,
                            const float* dlosses, std::size_t rows, std::size_t V,
                            token_id ignore_index = -100);

// Reductions and optimizer updates

/// Σ x² in double (a fixed-order tree: the same bits every run).
double sum_squares(const float* x, std::size_t n);
/// Σ_i sum_squares(xs[i], ns[i]), the tensors' sums added in list order (the same value as a
/// host loop over sum_squares) with one wait instead of one per tensor: the gradient norm.
double sum_squares_list(const float* const* xs, const std::size_t* ns, std::size_t count);
/// x *= alpha.
void scale(float* x, float alpha, std::size_t n);
/// One AdamW step, PyTorch's arithmetic (backends/reference/primitives.hpp).
void adamw_update(float* param, const float* grad, float* m, float* v, std::size_t n,
                  const adamw_params& h);
/// One SGD step, PyTorch's arithmetic.
void sgd_update(float* param, const float* grad, float* buf, std::size_t n, const sgd_params& h);

// Inference: prepared weights and attention

/// Stores op(B) (K rows, N columns; B with row stride ldb) row-major at out: a prepared weight.
void prepare_b(float* out, const float* B, std::size_t ldb, transpose tb, std::size_t K,
               std::size_t N);
/// The same rounded to bf16.
void prepare_b(bf16* out, const float* B, std::size_t ldb, transpose tb, std::size_t K,
               std::size_t N);
/// gemm_bf16 with B already in bf16 (op(B) = B, (K, N) with row stride ldb).
void gemm_bf16_b(transpose ta, std::size_t M, std::size_t N, std::size_t K, float alpha,
                 const float* A, std::size_t lda, const bf16* B, std::size_t ldb, float beta,
                 float* C, std::size_t ldc);
/// C(M, N) (row stride ldc) += bias(N) on every row (bias may be null) and += R (M, N) with row
/// stride ldr (r may be null): the epilogues of gemm_packed in one pass.
void add_bias_residual(float* C, std::size_t ldc, const float* bias, const float* r,
                       std::size_t ldr, std::size_t M, std::size_t N);

/// A weight prepared for inference products on the device: op(B) (K, N) row-major in device
/// memory, fp32 or rounded to bf16 (gemm_packed then rounds A too, on tensor cores).
template <class T>
class prepared_b {
    static_assert(std::is_same_v<T, float>, "ftune: the CUDA backend prepares float weights");

  public:
    /// Copies op(B) (K rows, N columns) from device memory B with row stride ldb.
    void pack(const T* B, std::size_t ldb, transpose tb, std::size_t K, std::size_t N,
              ftune::precision p = ftune::precision::fp32) {
        if (p == ftune::precision::bf16) {
            b16_.resize(shape<dynamic>(K * N));
            f32_.resize(shape<dynamic>(0));
            prepare_b(b16_.data(), B, ldb, tb, K, N);
        } else {
            f32_.resize(shape<dynamic>(K * N));
            b16_.resize(shape<dynamic>(0));
            prepare_b(f32_.data(), B, ldb, tb, K, N);
        }
        K_ = K, N_ = N, precision_ = p;
    }
    /// The precision it was prepared in.
    ftune::precision precision() const noexcept { return precision_; }
    /// Rows of op(B).
    std::size_t rows() const noexcept { return K_; }
    /// Columns of op(B).
    std::size_t cols() const noexcept { return N_; }
    /// op(B), (K, N) row-major in fp32 (null when prepared in bf16).
    const T* data() const noexcept { return f32_.size() ? f32_.data() : nullptr; }
    /// op(B) rounded to bf16 (null when prepared in fp32).
    const bf16* data_bf16() const noexcept { return b16_.size() ? b16_.data() : nullptr; }

  private:
    buffer<T, shape<dynamic>, device::cuda> f32_;
    buffer<bf16, shape<dynamic>, device::cuda> b16_;
    std::size_t K_ = 0, N_ = 0;
    ftune::precision precision_ = ftune::precision::fp32;
};

/// C(M,N) = alpha op(A)(M,K) Bp + beta C, then + bias(N) on every row (when given), then the
/// epilogue: none (nullptr) or backends::add_residual (C += R), the only one the device runs.
template <class Epilogue = std::nullptr_t>
void gemm_packed(transpose ta, std::size_t M, std::size_t N, std::size_t K, float alpha,
                 const float* A, std::size_t lda, const prepared_b<float>& Bp, float beta, float* C,
                 std::size_t ldc, const float* bias = nullptr, Epilogue epilogue = {}) {
    static_assert(std::is_same_v<Epilogue, std::nullptr_t> ||
                      std::is_same_v<Epilogue, backends::add_residual<float>>,
                  "ftune: the CUDA backend's gemm_packed runs the add_residual epilogue only");
    if (Bp.rows() != K || Bp.cols() != N)
        throw error(errc::shape_mismatch, "gemm_packed",
                    ftune::detail::cat("B was prepared as ", Bp.rows(), " x ", Bp.cols(),
                                       " but the product needs ", K, " x ", N));
    if (Bp.precision() == ftune::precision::bf16)
        gemm_bf16_b(ta, M, N, K, alpha, A, lda, Bp.data_bf16(), N, beta, C, ldc);
    else
        gemm(ta, transpose::no, M, N, K, alpha, A, lda, Bp.data(), N, beta, C, ldc);
    const float* r = nullptr;
    std::size_t ldr = 0;
    if constexpr (!std::is_same_v<Epilogue, std::nullptr_t>) r = epilogue.r, ldr = epilogue.ldr;
    if (bias || r) add_bias_residual(C, ldc, bias, r, ldr, M, N);
}

/// Multi-head attention for inference (backends/reference's attention_inference): one warp per
/// (sequence, head, query), the keys in two passes (max and sum, then the weighted values).
void attention_inference(float* out, std::size_t ldo, const float* q, std::size_t ldq,
                         const float* k, const float* v, std::size_t ld, const float* key_mask,
                         float scale, std::size_t Bn, std::size_t H, std::size_t Tq, std::size_t Tn,
                         std::size_t d, bool causal = false);
/// attention_inference with q, k, v and the normalized probabilities rounded to bf16.
void attention_inference_bf16(float* out, std::size_t ldo, const float* q, std::size_t ldq,
                              const float* k, const float* v, std::size_t ld, const float* key_mask,
                              float scale, std::size_t Bn, std::size_t H, std::size_t Tq,
                              std::size_t Tn, std::size_t d, bool causal = false);
/// One new query per sequence against its key/value cache (reference attention_decode).
void attention_decode(float* out, const float* q, const float* k, const float* v, std::size_t cap,
                      const float* key_mask, float scale, std::size_t Bn, std::size_t H,
                      std::size_t Hkv, std::size_t S, std::size_t d);

}  // namespace backends::cuda

FTUNE_NAMESPACE_END
