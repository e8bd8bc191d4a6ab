// Typed primitives: the calls layers make. Each takes views (or buffers) with static or dynamic
// extents, checks that their shapes fit — at compile time where extents are static, with an
// ftune::error naming both shapes otherwise — and runs the backend of the tensors' device.
//
//   ftune::ops::matmul<ftune::transpose::no, ftune::transpose::yes>(x, w, y);  // y = x wᵀ
//   ftune::ops::bias_add(y, b);
//   ftune::ops::activate(ftune::ops::activation::gelu, y, y);
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>

#include "ftune/backends/cpu/primitives.hpp"
#include "ftune/backends/reference/primitives.hpp"
#include "ftune/core/tensor.hpp"
#if FTUNE_WITH_CUDA
#include "ftune/backends/cuda/primitives.hpp"
#include "ftune/cuda/copy.hpp"
#endif

FTUNE_NAMESPACE_BEGIN

/// True for ftune::view and ftune::buffer types.
template <class X>
concept tensor_like = requires(X& x) {
    typename std::remove_cvref_t<X>::shape_type;
    typename std::remove_cvref_t<X>::device_type;
    x.data();
    x.shape();
};

namespace ops {

namespace detail {
/// The shape type of a view or buffer.
template <class X>
using shape_of = typename std::remove_cvref_t<X>::shape_type;
/// The element type (without const) of a view or buffer.
template <class X>
using scalar_of = std::remove_cv_t<std::remove_pointer_t<decltype(std::declval<X&>().data())>>;
/// The device of a view or buffer.
template <class X>
using device_of = typename std::remove_cvref_t<X>::device_type;

/// Fails the build with a message naming the two static extents when they differ.
template <std::size_t A, std::size_t B>
constexpr void static_extents_agree() {
    static_assert(A == dynamic || B == dynamic || A == B,
                  "ftune: two tensors passed to one primitive have different compile-time extents "
                  "on an axis they must share (the two numbers are the template arguments of "
                  "static_extents_agree above). Make the dimensions of the model types agree, or "
                  "declare the axis ftune::dynamic to check it at run time.");
}

/// Static extent `I` of shape S.
template <class S, std::size_t I>
inline constexpr std::size_t sx = S::static_extents[I];

/// Throws shape_mismatch about `what`: axis ia of a (named na) differs from axis ib of b. Out of
/// line and cold, so that the checks inline only their comparison.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_axis_mismatch(
    const char* what, const char* na, std::span<const std::size_t> a, std::size_t ia,
    const char* nb, std::span<const std::size_t> b, std::size_t ib) {
    throw error(errc::shape_mismatch, what,
                ftune::detail::cat(na, " has shape ", ftune::detail::format_extents(a), " and ", nb,
                                   " has shape ", ftune::detail::format_extents(b), ": axis ", ia,
                                   " of ", na, " (", a[ia], ") must equal axis ", ib, " of ", nb,
                                   " (", b[ib], ")"));
}
/// Throws shape_mismatch about `what`: x (named name) has extents e, not n elements. Cold.
[[noreturn, gnu::cold, gnu::noinline]] inline void throw_size_mismatch(
    const char* what, const char* name, std::span<const std::size_t> e, std::size_t n,
    const char* expected) {
    std::size_t size = 1;
    for (auto x : e) size *= x;
    throw error(errc::shape_mismatch, what,
                ftune::detail::cat(name, " has shape ", ftune::detail::format_extents(e), " (",
                                   size, " elements) but ", expected, " needs ", n));
}

/// Throws shape_mismatch about `what` naming both shapes unless a.extent(ia) == b.extent(ib).
template <class X, class Y>
void check_axis(const char* what, const char* na, const X& a, std::size_t ia, const char* nb,
                const Y& b, std::size_t ib) {
    if (a.shape().extent(ia) != b.shape().extent(ib))
        throw_axis_mismatch(what, na, a.shape().extents(), ia, nb, b.shape().extents(), ib);
}

/// Throws shape_mismatch unless x has `n` elements.
template <class X>
void check_size(const char* what, const char* name, const X& x, std::size_t n,
                const char* expected) {
    if (x.shape().size() != n) throw_size_mismatch(what, name, x.shape().extents(), n, expected);
}

}  // namespace detail

/// The backend that runs the primitives on device D: a struct whose static functions forward
/// to the backend's own (one specialization per backend, next to it below; as xsimd selects
/// its kernels by architecture tag). A new device specializes it (docs/extending.md, "Add a
/// backend"); a device without one is a compile-time error.
template <class D>
struct backend_of {
    static_assert(!std::is_same_v<D, device::cuda>,
                  "ftune: primitives on device::cuda need the CUDA backend: build with "
                  "FTUNE_WITH_CUDA (CMake -DFTUNE_WITH_CUDA=ON, docs/cuda.md), or keep the "
                  "tensors on device::cpu.");
    static_assert(std::is_same_v<D, device::cuda>,
                  "ftune: no backend for this device: specialize ftune::ops::backend_of<D> "
                  "(docs/extending.md, \"Add a backend\")");
};

// backend_of's members: one forwarding function per primitive
// clang-format off
#define FTUNE_OPS_FORWARD(NS, F)             \
    template <class... A>                    \
    static decltype(auto) F(A&&... a) {      \
        return NS::F(std::forward<A>(a)...); \
    }
#define FTUNE_OPS_TRAINING_PRIMITIVES(NS) \
    FTUNE_OPS_FORWARD(NS, gemm) \
    FTUNE_OPS_FORWARD(NS, gemm_strided_batched) \
    FTUNE_OPS_FORWARD(NS, bias_add) \
    FTUNE_OPS_FORWARD(NS, bias_backward) \
    FTUNE_OPS_FORWARD(NS, residual_add) \
    FTUNE_OPS_FORWARD(NS, gelu_forward) \
    FTUNE_OPS_FORWARD(NS, gelu_backward) \
    FTUNE_OPS_FORWARD(NS, gelu_tanh_forward) \
    FTUNE_OPS_FORWARD(NS, gelu_tanh_backward) \
    FTUNE_OPS_FORWARD(NS, tanh_forward) \
    FTUNE_OPS_FORWARD(NS, tanh_backward) \
    FTUNE_OPS_FORWARD(NS, relu_forward) \
    FTUNE_OPS_FORWARD(NS, relu_backward) \
    FTUNE_OPS_FORWARD(NS, silu_forward) \
    FTUNE_OPS_FORWARD(NS, silu_backward) \
    FTUNE_OPS_FORWARD(NS, multiply) \
    FTUNE_OPS_FORWARD(NS, multiply_backward) \
    FTUNE_OPS_FORWARD(NS, layer_norm_forward) \
    FTUNE_OPS_FORWARD(NS, layer_norm_backward) \
    FTUNE_OPS_FORWARD(NS, rms_norm_forward) \
    FTUNE_OPS_FORWARD(NS, rms_norm_backward) \
    FTUNE_OPS_FORWARD(NS, rope_table) \
    FTUNE_OPS_FORWARD(NS, rope_apply) \
    FTUNE_OPS_FORWARD(NS, repeat_heads) \
    FTUNE_OPS_FORWARD(NS, repeat_heads_backward) \
    FTUNE_OPS_FORWARD(NS, softmax_forward) \
    FTUNE_OPS_FORWARD(NS, softmax_backward) \
    FTUNE_OPS_FORWARD(NS, dropout_forward) \
    FTUNE_OPS_FORWARD(NS, dropout_backward) \
    FTUNE_OPS_FORWARD(NS, embedding_forward) \
    FTUNE_OPS_FORWARD(NS, embedding_backward) \
    FTUNE_OPS_FORWARD(NS, cross_entropy_forward) \
    FTUNE_OPS_FORWARD(NS, cross_entropy_backward) \
    FTUNE_OPS_FORWARD(NS, sum_squares) \
    FTUNE_OPS_FORWARD(NS, scale) \
    FTUNE_OPS_FORWARD(NS, adamw_update) \
    FTUNE_OPS_FORWARD(NS, sgd_update) \
    FTUNE_OPS_FORWARD(NS, key_mask) \
    FTUNE_OPS_FORWARD(NS, position_ids) \
    FTUNE_OPS_FORWARD(NS, copy) \
    FTUNE_OPS_FORWARD(NS, copy_ids) \
    FTUNE_OPS_FORWARD(NS, gather_rows)
// clang-format on

/// device::cpu: the SIMD CPU backend, which also runs the fused inference primitives.
template <>
struct backend_of<device::cpu> {
    FTUNE_OPS_TRAINING_PRIMITIVES(backends::cpu)
    FTUNE_OPS_FORWARD(backends::cpu, attention_inference)
    FTUNE_OPS_FORWARD(backends::cpu, attention_inference_bf16)
    FTUNE_OPS_FORWARD(backends::cpu, attention_decode)
    FTUNE_OPS_FORWARD(backends::cpu, gemm_packed)
    FTUNE_OPS_FORWARD(backends::cpu, gemm_thin)
    FTUNE_OPS_FORWARD(backends::cpu, gemm_bf16)
    FTUNE_OPS_FORWARD(backends::cpu, gemm_strided_batched_bf16)
    FTUNE_OPS_FORWARD(backends::cpu, gemm_heads)
};
/// device::reference: the scalar reference backend, the same primitives as plain loops.
template <>
struct backend_of<device::reference> {
    FTUNE_OPS_TRAINING_PRIMITIVES(backends::reference)
    FTUNE_OPS_FORWARD(backends::reference, attention_inference)
    FTUNE_OPS_FORWARD(backends::reference, attention_inference_bf16)
    FTUNE_OPS_FORWARD(backends::reference, attention_decode)
    FTUNE_OPS_FORWARD(backends::reference, gemm_packed)
    FTUNE_OPS_FORWARD(backends::reference, gemm_bf16)
    FTUNE_OPS_FORWARD(backends::reference, gemm_strided_batched_bf16)
};
#if FTUNE_WITH_CUDA
/// device::cuda: the CUDA backend (float; cuBLAS products, ftune's kernels; FTUNE_WITH_CUDA).
template <>
struct backend_of<device::cuda> {
    FTUNE_OPS_TRAINING_PRIMITIVES(backends::cuda)
    FTUNE_OPS_FORWARD(backends::cuda, attention_inference)
    FTUNE_OPS_FORWARD(backends::cuda, attention_inference_bf16)
    FTUNE_OPS_FORWARD(backends::cuda, attention_decode)
    FTUNE_OPS_FORWARD(backends::cuda, gemm_packed)
    FTUNE_OPS_FORWARD(backends::cuda, gemm_bf16)
    FTUNE_OPS_FORWARD(backends::cuda, gemm_strided_batched_bf16)
    FTUNE_OPS_FORWARD(backends::cuda, gemm_heads)
    FTUNE_OPS_FORWARD(backends::cuda, sum_squares_list)
};
#endif
#undef FTUNE_OPS_TRAINING_PRIMITIVES
#undef FTUNE_OPS_FORWARD

/// Sets every element of x to zero (buffer::fill's way: large ones by the OpenMP threads).
template <tensor_like X>
void zero(X&& x) {
    fill_on<detail::device_of<X>>(x.data(), x.shape().size(),
                                  std::remove_const_t<detail::scalar_of<X>>(0));
}

namespace detail {
/// The backend of tensor type X's device.
template <class X>
using backend_for = backend_of<device_of<X>>;

/// Requires that all arguments live on the same device (whose backend then runs the primitive).
template <class... X>
constexpr void same_device() {
    using D = device_of<std::tuple_element_t<0, std::tuple<X...>>>;
    static_assert((std::is_same_v<D, device_of<X>> && ...),
                  "ftune: tensors on different devices passed to one primitive; copy them to the "
                  "same device first.");
}

/// Prepares dx for a gradient primitive writing it as w says: nothing to do on the CPU, whose
/// primitives take the overwrite flag (returned); elsewhere dx is zeroed and the primitive adds
/// (false returned).
template <class DX>
bool overwrite_in_place(DX& dx, grad_write w) {
    if (w == grad_write::accumulate) return false;
    if constexpr (std::is_same_v<device_of<DX>, device::cpu>) {
        return true;
    } else {
        ops::zero(dx);
        return false;
    }
}

/// matmul's checks of devices, ranks and extents; returns {M, N, K}.
template <transpose TA, transpose TB, class A, class B, class C>
std::array<std::size_t, 3> matmul_extents(const A& a, const B& b, const C& c) {
    using SA = detail::shape_of<A>;
    using SB = detail::shape_of<B>;
    using SC = detail::shape_of<C>;
    detail::same_device<A, B, C>();
    static_assert(SA::rank == 2 && SB::rank == 2 && SC::rank == 2,
                  "ftune::ops::matmul multiplies matrices (rank-2 views); reshape batched tensors "
                  "to (rows, features) first, or use batched_matmul.");
    constexpr std::size_t am = TA == transpose::no ? 0 : 1, ak = 1 - am;     // axes of M and K in a
    constexpr std::size_t bk = TB == transpose::no ? 0 : 1, bn = 1 - bk;     // axes of K and N in b
    detail::static_extents_agree<detail::sx<SA, ak>, detail::sx<SB, bk>>();  // K
    detail::static_extents_agree<detail::sx<SA, am>, detail::sx<SC, 0>>();   // M
    detail::static_extents_agree<detail::sx<SB, bn>, detail::sx<SC, 1>>();   // N
    detail::check_axis("matmul (inner dimension K)", "A", a, ak, "B", b, bk);
    detail::check_axis("matmul (rows M)", "A", a, am, "C", c, 0);
    detail::check_axis("matmul (columns N)", "B", b, bn, "C", c, 1);
    return {c.shape().extent(0), c.shape().extent(1), a.shape().extent(ak)};
}
}  // namespace detail

namespace detail {
/// The error of a bf16 product on a scalar type other than float.
inline error bf16_needs_float(const char* where) {
    return error(errc::unsupported, where,
                 "bf16 products take float operands; use precision::fp32 with this scalar type");
}

/// The batched product of backend Bk in precision p (gemm_strided_batched, or its bf16 form).
/// A may be kept in bf16 (TA = bf16), which only a bf16 product reads.
template <class Bk, class T, class TA>
void strided_batched(precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                     std::size_t K, T alpha, const TA* A, std::size_t lda, std::size_t sa,
                     const T* B, std::size_t ldb, std::size_t sb, T beta, T* C, std::size_t ldc,
                     std::size_t sc, std::size_t batch) {
    if constexpr (std::is_same_v<TA, bf16>) {
        if (p != precision::bf16)
            throw error(errc::invalid_argument, "head products",
                        "an operand kept in bf16 is multiplied in precision::bf16 only");
    } else if (p == precision::fp32) {
        return Bk::gemm_strided_batched(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C,
                                        ldc, sc, batch);
    }
    if constexpr (std::is_same_v<T, float>)
        Bk::gemm_strided_batched_bf16(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                                      sc, batch);
    else
        throw bf16_needs_float("head products");
}

/// Attention's products for every head h of every sequence s: matrix (s, h) of operand X starts
/// s x_seq + h x_head elements in. One call where backend Bk has gemm_heads (the CUDA backend:
/// one launch instead of one per sequence, which left a GPU waiting on the host; the CPU: one
/// parallel pass over all of them), else one strided batch per sequence.
template <class Bk, class TA, class T>
void head_products(precision p, transpose ta, transpose tb, std::size_t M, std::size_t N,
                   std::size_t K, T alpha, const TA* A, std::size_t lda, std::size_t a_seq,
                   std::size_t a_head, const T* B, std::size_t ldb, std::size_t b_seq,
                   std::size_t b_head, T beta, T* C, std::size_t ldc, std::size_t c_seq,
                   std::size_t c_head, std::size_t sequences, std::size_t heads) {
    if constexpr (requires {
                      Bk::gemm_heads(p, ta, tb, M, N, K, alpha, A, lda, a_seq, a_head, B, ldb,
                                     b_seq, b_head, beta, C, ldc, c_seq, c_head, sequences, heads);
                  }) {
        if (std::is_same_v<TA, bf16> && p != precision::bf16)
            throw error(errc::invalid_argument, "head products",
                        "an operand kept in bf16 is multiplied in precision::bf16 only");
        if (!std::is_same_v<T, float> && p == precision::bf16)
            throw bf16_needs_float("head products");
        Bk::gemm_heads(p, ta, tb, M, N, K, alpha, A, lda, a_seq, a_head, B, ldb, b_seq, b_head,
                       beta, C, ldc, c_seq, c_head, sequences, heads);
    } else {
        for (std::size_t i = 0; i < sequences; ++i)
            strided_batched<Bk>(p, ta, tb, M, N, K, alpha, A + i * a_seq, lda, a_head,
                                B + i * b_seq, ldb, b_head, beta, C + i * c_seq, ldc, c_head,
                                heads);
    }
}
}  // namespace detail

/// Whether device D's backend runs products in precision p (bf16 on the CPU: AVX512-BF16; the
/// reference backend emulates it everywhere).
template <class D = device::cpu>
bool supports(precision p) {
    if (p == precision::fp32 || !std::is_same_v<D, device::cpu>) return true;
    return backends::cpu::bf16_supported();
}

/// Throws errc::unsupported, naming `where`, the CPU and the fix, unless device D runs p.
template <class D = device::cpu>
void require(precision p, const char* where) {
    if (!supports<D>(p)) throw backends::cpu::bf16_detail::unsupported(where);
}

/// c = alpha * op(a) * op(b) + beta * c, with op = transpose when TA/TB say so, in precision p
/// (bf16: both operands rounded to bf16, fp32 sums; float only). In bf16 on the CPU, either
/// operand may be kept in bf16 already (the activations a bf16 training step keeps so).
/// Shapes: op(a) (M, K), op(b) (K, N), c (M, N).
template <transpose TA = transpose::no, transpose TB = transpose::no, tensor_like A, tensor_like B,
          tensor_like C>
void matmul(const A& a, const B& b, C&& c, detail::scalar_of<C> alpha = 1,
            detail::scalar_of<C> beta = 0, precision p = precision::fp32) {
    const auto [M, N, K] = detail::matmul_extents<TA, TB>(a, b, c);
    constexpr bool kept_bf16 =
        std::is_same_v<detail::scalar_of<A>, bf16> || std::is_same_v<detail::scalar_of<B>, bf16>;
    if (p == precision::bf16) {
        if constexpr (std::is_same_v<detail::scalar_of<C>, float>)
            return detail::backend_for<A>::gemm_bf16(TA, TB, M, N, K, alpha, a.data(),
                                                     a.shape().extent(1), b.data(),
                                                     b.shape().extent(1), beta, c.data(), N);
        else
            throw detail::bf16_needs_float("matmul");
    }
    if constexpr (kept_bf16)
        throw error(errc::invalid_argument, "matmul",
                    "an operand kept in bf16 is multiplied in precision::bf16 only");
    else
        detail::backend_for<A>::gemm(TA, TB, M, N, K, alpha, a.data(), a.shape().extent(1),
                                     b.data(), b.shape().extent(1), beta, c.data(), N);
}

/// matmul for a thin product, where M or N is small (a low-rank adapter's rank): backends with a
/// kernel for such shapes run it (the CPU's gemm_thin reads the large operand once, in place);
/// the others run gemm. Sums may be in another order than matmul's.
template <transpose TA = transpose::no, transpose TB = transpose::no, tensor_like A, tensor_like B,
          tensor_like C>
void matmul_thin(const A& a, const B& b, C&& c, detail::scalar_of<C> alpha = 1,
                 detail::scalar_of<C> beta = 0) {
    const auto extents = detail::matmul_extents<TA, TB>(a, b, c);
    // Plain names, not a structured binding: clang 14 rejects bindings inside a
    // requires-expression.
    const std::size_t M = extents[0], N = extents[1], K = extents[2];
    using backend = detail::backend_for<A>;
    const std::size_t lda = a.shape().extent(1), ldb = b.shape().extent(1);
    if constexpr (requires {
                      backend::gemm_thin(TA, TB, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta,
                                         c.data(), N);
                  })
        backend::gemm_thin(TA, TB, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), N);
    else
        backend::gemm(TA, TB, M, N, K, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), N);
}

/// y(rows, C) += bias(C).
template <tensor_like Y, tensor_like Bias>
void bias_add(Y&& y, const Bias& bias) {
    using SY = detail::shape_of<Y>;
    detail::same_device<Y, Bias>();
    static_assert(SY::rank == 2 && detail::shape_of<Bias>::rank == 1,
                  "ftune::ops::bias_add: y is (rows, C) and bias is (C)");
    detail::static_extents_agree<detail::sx<SY, 1>, detail::sx<detail::shape_of<Bias>, 0>>();
    detail::check_axis("bias_add", "y", y, 1, "bias", bias, 0);
    detail::backend_for<Y>::bias_add(y.data(), bias.data(), y.shape().extent(0),
                                     y.shape().extent(1));
}

/// dbias(C) += Σ_rows dy(rows, C).
template <tensor_like DBias, tensor_like DY>
void bias_backward(DBias&& dbias, const DY& dy) {
    using SY = detail::shape_of<DY>;
    detail::same_device<DY, DBias>();
    static_assert(SY::rank == 2 && detail::shape_of<DBias>::rank == 1,
                  "ftune::ops::bias_backward: dy is (rows, C) and dbias is (C)");
    detail::static_extents_agree<detail::sx<SY, 1>, detail::sx<detail::shape_of<DBias>, 0>>();
    detail::check_axis("bias_backward", "dy", dy, 1, "dbias", dbias, 0);
    detail::backend_for<DY>::bias_backward(dbias.data(), dy.data(), dy.shape().extent(0),
                                           dy.shape().extent(1));
}

/// A linear layer's parameter gradients from dy (N, Out) and its input x (N, In): dw (Out, In) +=
/// dyᵀ x in precision p, and db (Out) += Σ_rows dy: matmul<yes, no> and bias_backward, the same
/// values bit for bit. On the CPU in bf16 the bias's sums are taken in the pass that rounds and
/// packs dyᵀ for the product (one read of dy instead of two), and x may be kept in bf16.
template <tensor_like DY, tensor_like X, tensor_like DW, tensor_like DB>
void weight_and_bias_gradients(const DY& dy, const X& x, DW&& dw, DB&& db,
                               precision p = precision::fp32) {
    if constexpr (std::is_same_v<detail::device_of<DY>, device::cpu> &&
                  std::is_same_v<detail::scalar_of<DW>, float>) {
        if (p == precision::bf16) {
            const auto [M, N, K] = detail::matmul_extents<transpose::yes, transpose::no>(dy, x, dw);
            detail::same_device<DY, DB>();
            static_assert(detail::shape_of<DB>::rank == 1,
                          "ftune::ops::weight_and_bias_gradients: db is (Out)");
            detail::check_axis("weight_and_bias_gradients", "dy", dy, 1, "db", db, 0);
            return backends::cpu::gemm_bf16(transpose::yes, transpose::no, M, N, K, 1.0f, dy.data(),
                                            dy.shape().extent(1), x.data(), x.shape().extent(1),
                                            1.0f, dw.data(), N, db.data());
        }
    }
    matmul<transpose::yes, transpose::no>(dy, x, dw, detail::scalar_of<DW>(1),
                                          detail::scalar_of<DW>(1), p);  // (throws for bf16 x)
    bias_backward(db, dy);
}

/// out = a + b (same shapes; out may alias a or b).
template <tensor_like Out, tensor_like A, tensor_like B>
void residual_add(Out&& out, const A& a, const B& b) {
    detail::same_device<Out, A, B>();
    check_same_shape(a.shape(), b.shape(), "residual_add (a vs b)");
    check_same_shape(out.shape(), a.shape(), "residual_add (out vs a)");
    detail::backend_for<Out>::residual_add(out.data(), a.data(), b.data(), a.shape().size());
}

/// mask (B, T) = 0 where attention (B, T) is nonzero, the lowest value where it is 0 (padding);
/// an empty attention: every position is a token. The additive key mask attention adds.
template <tensor_like M, tensor_like A>
void key_mask(M&& mask, const A& attention) {
    detail::same_device<M, A>();
    if (!attention.empty()) check_same_shape(mask.shape(), attention.shape(), "key_mask");
    detail::backend_for<M>::key_mask(mask.data(), attention.empty() ? nullptr : attention.data(),
                                     mask.shape().size());
}

/// ids (N) = start, start + 1, .., start + t - 1, repeated for each of the N / t rows.
template <tensor_like I>
void position_ids(I&& ids, std::size_t t, std::size_t start) {
    if (t == 0 || ids.shape().size() % t != 0)
        throw error(errc::shape_mismatch, "position_ids",
                    ftune::detail::cat(ids.shape().size(), " ids are not rows of ", t));
    detail::backend_for<I>::position_ids(ids.data(), ids.shape().size(), t, start);
}

/// out = in (same shapes).
template <tensor_like O, tensor_like I>
void copy(O&& out, const I& in) {
    detail::same_device<O, I>();
    check_same_shape(out.shape(), in.shape(), "copy");
    detail::backend_for<O>::copy(out.data(), in.data(), in.shape().size());
}

/// out (N) = in (N), or zeros when in is empty.
template <tensor_like O, tensor_like I>
void copy_ids(O&& out, const I& in) {
    detail::same_device<O, I>();
    if (!in.empty()) detail::check_size("copy_ids", "in", in, out.shape().size(), "out");
    detail::backend_for<O>::copy_ids(out.data(), in.empty() ? nullptr : in.data(),
                                     out.shape().size());
}

/// out (B, C) = x (B, T, C) at position 0 of each sequence.
template <tensor_like O, tensor_like X>
void first_tokens(O&& out, const X& x) {
    detail::same_device<O, X>();
    static_assert(detail::shape_of<O>::rank == 2 && detail::shape_of<X>::rank == 3,
                  "ftune::ops::first_tokens: out is (B, C) and x is (B, T, C)");
    detail::check_axis("first_tokens (B)", "out", out, 0, "x", x, 0);
    detail::check_axis("first_tokens (C)", "out", out, 1, "x", x, 2);
    detail::backend_for<O>::gather_rows(out.data(), x.data(), x.shape().extent(0),
                                        x.shape().extent(2), x.shape().extent(1));
}

/// x (B, T, C) at position 0 of each sequence += rows (B, C): first_tokens' way back (the
/// gradient of a [CLS]-only read into the whole sequence's).
template <tensor_like X, tensor_like R>
void add_first_tokens(X&& x, const R& rows) {
    detail::same_device<X, R>();
    static_assert(detail::shape_of<X>::rank == 3 && detail::shape_of<R>::rank == 2,
                  "ftune::ops::add_first_tokens: x is (B, T, C) and rows is (B, C)");
    detail::check_axis("add_first_tokens (B)", "rows", rows, 0, "x", x, 0);
    detail::check_axis("add_first_tokens (C)", "rows", rows, 1, "x", x, 2);
    using T = detail::scalar_of<R>;
    using D = detail::device_of<X>;
    const std::size_t B = x.shape().extent(0), Tn = x.shape().extent(1), Cn = x.shape().extent(2);
    for (std::size_t b = 0; b < B; ++b) {  // one row per sequence: B short sums
        const view<T, shape<dynamic>, D> row(x.data() + b * Tn * Cn, Cn);
        residual_add(row, row, view<const T, shape<dynamic>, D>(rows.data() + b * Cn, Cn));
    }
}

/// The activations ops::activation / activation_backward apply.
enum class activation { gelu, gelu_tanh, tanh, relu, silu };

namespace detail {
/// y(n) = f(x(n)) on arrays (y may be x) with backend Bk: activate()'s switch.
template <class Bk, scalar T>
void activate_n(activation f, T* y, const T* x, std::size_t n) {
    switch (f) {
        case activation::gelu:
            Bk::gelu_forward(y, x, n);
            break;
        case activation::gelu_tanh:
            Bk::gelu_tanh_forward(y, x, n);
            break;
        case activation::tanh:
            Bk::tanh_forward(y, x, n);
            break;
        case activation::relu:
            Bk::relu_forward(y, x, n);
            break;
        case activation::silu:
            Bk::silu_forward(y, x, n);
            break;
    }
}
}  // namespace detail

/// y = f(x) element-wise (same shapes; y may alias x). On the CPU, y may be bf16 for a float x:
/// f(x) rounded to nearest even (an activation that only bf16 products read; y must not overlap
/// x then).
template <tensor_like Y, tensor_like X>
void activate(activation f, Y&& y, const X& x) {
    detail::same_device<Y, X>();
    check_same_shape(y.shape(), x.shape(), "activate (y vs x)");
    using Bk = detail::backend_for<Y>;
    if constexpr (std::is_same_v<detail::scalar_of<Y>, bf16>) {
        static_assert(std::is_same_v<detail::device_of<Y>, device::cpu> &&
                          std::is_same_v<detail::scalar_of<X>, float>,
                      "ftune::ops::activate: a bf16 y takes a float x, on the CPU");
        backends::cpu::map_to_bf16(y.data(), x.data(), x.shape().size(),
                                   [&](float* out, const float* in, std::size_t m) {
                                       detail::activate_n<Bk>(f, out, in, m);
                                   });
    } else {
        detail::activate_n<Bk>(f, y.data(), x.data(), x.shape().size());
    }
}

/// dx += f'(·) * dy (grad_write::overwrite: dx =, its old content not read), where · is the
/// forward input x (GELUs, ReLU, SiLU) or the forward output y (tanh).
template <tensor_like DX, tensor_like S, tensor_like DY>
void activate_backward(activation f, DX&& dx, const S& saved, const DY& dy,
                       grad_write w = grad_write::accumulate) {
    detail::same_device<DX, S, DY>();
    check_same_shape(dx.shape(), dy.shape(), "activate_backward (dx vs dy)");
    check_same_shape(saved.shape(), dy.shape(), "activate_backward (saved vs dy)");
    const std::size_t n = dy.shape().size();
    using Bk = detail::backend_for<DX>;
    auto run = [&](auto... overwrite) {  // the CPU's primitives take the flag, the others add
        switch (f) {
            case activation::gelu:
                return Bk::gelu_backward(dx.data(), saved.data(), dy.data(), n, overwrite...);
            case activation::gelu_tanh:
                return Bk::gelu_tanh_backward(dx.data(), saved.data(), dy.data(), n, overwrite...);
            case activation::tanh:
                return Bk::tanh_backward(dx.data(), saved.data(), dy.data(), n, overwrite...);
            case activation::relu:
                return Bk::relu_backward(dx.data(), saved.data(), dy.data(), n, overwrite...);
            case activation::silu:
                return Bk::silu_backward(dx.data(), saved.data(), dy.data(), n, overwrite...);
        }
    };
    if constexpr (std::is_same_v<detail::device_of<DX>, device::cpu>)
        run(detail::overwrite_in_place(dx, w));
    else
        detail::overwrite_in_place(dx, w), run();
}

/// out = a ⊙ b element-wise (same shapes; out may alias a or b).
template <tensor_like Out, tensor_like A, tensor_like B>
void multiply(Out&& out, const A& a, const B& b) {
    detail::same_device<Out, A, B>();
    check_same_shape(a.shape(), b.shape(), "multiply (a vs b)");
    check_same_shape(out.shape(), a.shape(), "multiply (out vs a)");
    detail::backend_for<Out>::multiply(out.data(), a.data(), b.data(), a.shape().size());
}

/// da += dout ⊙ b and db += dout ⊙ a, for multiply (an empty da or db is not computed).
template <tensor_like DA, tensor_like DB, tensor_like A, tensor_like B, tensor_like DOut>
void multiply_backward(DA&& da, DB&& db, const A& a, const B& b, const DOut& dout) {
    detail::same_device<DA, DB, A, B, DOut>();
    check_same_shape(a.shape(), b.shape(), "multiply_backward (a vs b)");
    check_same_shape(dout.shape(), a.shape(), "multiply_backward (dout vs a)");
    const bool with_da = da.shape().size() != 0, with_db = db.shape().size() != 0;
    if (with_da) check_same_shape(da.shape(), a.shape(), "multiply_backward (da vs a)");
    if (with_db) check_same_shape(db.shape(), b.shape(), "multiply_backward (db vs b)");
    detail::backend_for<DA>::multiply_backward(with_da ? da.data() : nullptr,
                                               with_db ? db.data() : nullptr, a.data(), b.data(),
                                               dout.data(), a.shape().size());
}

/// out(rows, C) = LayerNorm(x) * weight + bias; saves mean(rows), rstd(rows).
template <tensor_like Out, tensor_like Mean, tensor_like Rstd, tensor_like X, tensor_like W,
          tensor_like Bias>
void layer_norm(Out&& out, Mean&& mean, Rstd&& rstd, const X& x, const W& weight, const Bias& bias,
                detail::scalar_of<X> eps) {
    using SX = detail::shape_of<X>;
    detail::same_device<Out, Mean, Rstd, X, W, Bias>();
    static_assert(SX::rank == 2,
                  "ftune::ops::layer_norm normalizes the rows of a (rows, C) view; reshape first");
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<W>, 0>>();
    check_same_shape(out.shape(), x.shape(), "layer_norm (out vs x)");
    detail::check_axis("layer_norm", "x", x, 1, "weight", weight, 0);
    detail::check_axis("layer_norm", "x", x, 1, "bias", bias, 0);
    const std::size_t rows = x.shape().extent(0), C = x.shape().extent(1);
    detail::check_size("layer_norm", "mean", mean, rows, "one per row of x");
    detail::check_size("layer_norm", "rstd", rstd, rows, "one per row of x");
    detail::backend_for<Out>::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(),
                                                 weight.data(), bias.data(), rows, C, eps);
}

/// dx += ... (grad_write::overwrite: dx =, its old content not read), dweight += ..., dbias +=
/// ... for layer_norm (from its saved mean and rstd).
template <tensor_like DX, tensor_like DW, tensor_like DBias, tensor_like DOut, tensor_like X,
          tensor_like W, tensor_like Mean, tensor_like Rstd>
void layer_norm_backward(DX&& dx, DW&& dweight, DBias&& dbias, const DOut& dout, const X& x,
                         const W& weight, const Mean& mean, const Rstd& rstd,
                         grad_write w = grad_write::accumulate) {
    using SX = detail::shape_of<X>;
    detail::same_device<DX, DW, DBias, DOut, X, W, Mean, Rstd>();
    static_assert(SX::rank == 2,
                  "ftune::ops::layer_norm_backward: x, dout and dx are (rows, C); reshape first");
    static_assert(detail::shape_of<W>::rank == 1 && detail::shape_of<DW>::rank == 1 &&
                      detail::shape_of<DBias>::rank == 1,
                  "ftune::ops::layer_norm_backward: weight, dweight and dbias are (C)");
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<W>, 0>>();
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<DW>, 0>>();
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<DBias>, 0>>();
    check_same_shape(dout.shape(), x.shape(), "layer_norm_backward (dout vs x)");
    check_same_shape(dx.shape(), x.shape(), "layer_norm_backward (dx vs x)");
    detail::check_axis("layer_norm_backward", "x", x, 1, "weight", weight, 0);
    detail::check_axis("layer_norm_backward", "x", x, 1, "dweight", dweight, 0);
    detail::check_axis("layer_norm_backward", "x", x, 1, "dbias", dbias, 0);
    const std::size_t rows = x.shape().extent(0), C = x.shape().extent(1);
    detail::check_size("layer_norm_backward", "mean", mean, rows, "one per row of x");
    detail::check_size("layer_norm_backward", "rstd", rstd, rows, "one per row of x");
    auto run = [&](auto... overwrite) {  // the CPU's primitive takes the flag, the others add
        detail::backend_for<DX>::layer_norm_backward(
            dx.data(), dweight.data(), dbias.data(), dout.data(), x.data(), weight.data(),
            mean.data(), rstd.data(), rows, C, overwrite...);
    };
    if constexpr (std::is_same_v<detail::device_of<DX>, device::cpu>)
        run(detail::overwrite_in_place(dx, w));
    else
        detail::overwrite_in_place(dx, w), run();
}

/// out (rows, C) = x / sqrt(mean(x²) + eps) ⊙ weight (C) per row (RMSNorm), rstd (rows) saved.
template <tensor_like Out, tensor_like Rstd, tensor_like X, tensor_like W>
void rms_norm(Out&& out, Rstd&& rstd, const X& x, const W& weight, detail::scalar_of<X> eps) {
    using SX = detail::shape_of<X>;
    detail::same_device<Out, Rstd, X, W>();
    static_assert(SX::rank == 2,
                  "ftune::ops::rms_norm normalizes the rows of a (rows, C) view; reshape first");
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<W>, 0>>();
    check_same_shape(out.shape(), x.shape(), "rms_norm (out vs x)");
    detail::check_axis("rms_norm", "x", x, 1, "weight", weight, 0);
    const std::size_t rows = x.shape().extent(0), C = x.shape().extent(1);
    detail::check_size("rms_norm", "rstd", rstd, rows, "one per row of x");
    detail::backend_for<Out>::rms_norm_forward(out.data(), rstd.data(), x.data(), weight.data(),
                                               rows, C, eps);
}

/// dx += ..., dweight += ... for rms_norm (from its saved rstd).
template <tensor_like DX, tensor_like DW, tensor_like DOut, tensor_like X, tensor_like W,
          tensor_like Rstd>
void rms_norm_backward(DX&& dx, DW&& dweight, const DOut& dout, const X& x, const W& weight,
                       const Rstd& rstd) {
    using SX = detail::shape_of<X>;
    detail::same_device<DX, DW, DOut, X, W, Rstd>();
    static_assert(SX::rank == 2,
                  "ftune::ops::rms_norm_backward: x, dout and dx are (rows, C); reshape first");
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<W>, 0>>();
    detail::static_extents_agree<detail::sx<SX, 1>, detail::sx<detail::shape_of<DW>, 0>>();
    check_same_shape(dout.shape(), x.shape(), "rms_norm_backward (dout vs x)");
    check_same_shape(dx.shape(), x.shape(), "rms_norm_backward (dx vs x)");
    detail::check_axis("rms_norm_backward", "x", x, 1, "weight", weight, 0);
    detail::check_axis("rms_norm_backward", "x", x, 1, "dweight", dweight, 0);
    const std::size_t rows = x.shape().extent(0), C = x.shape().extent(1);
    detail::check_size("rms_norm_backward", "rstd", rstd, rows, "one per row of x");
    detail::backend_for<DX>::rms_norm_backward(dx.data(), dweight.data(), dout.data(), x.data(),
                                               weight.data(), rstd.data(), rows, C);
}

/// cos, sin (rows, half) = the rotary angles positions (rows) · theta^(-2i / (2 half)).
template <tensor_like Cos, tensor_like Sin, tensor_like P>
void rope_table(Cos&& cos, Sin&& sin, const P& positions, double theta) {
    detail::same_device<Cos, Sin, P>();
    static_assert(detail::shape_of<Cos>::rank == 2, "ftune::ops::rope_table: cos is (rows, half)");
    check_same_shape(cos.shape(), sin.shape(), "rope_table (cos vs sin)");
    detail::check_axis("rope_table", "cos", cos, 0, "positions", positions, 0);
    detail::backend_for<Cos>::rope_table(cos.data(), sin.data(), positions.data(),
                                         cos.shape().extent(0), cos.shape().extent(1), theta);
}

/// Rotates x (rows, heads · 2 half) in place by the angles of cos, sin (rows, half) (RoPE with
/// Transformers' rotate_half pairing: i with i + half in each head); inverse rotates back (the
/// backward).
template <tensor_like X, tensor_like Cos, tensor_like Sin>
void rope(X&& x, const Cos& cos, const Sin& sin, bool inverse = false) {
    detail::same_device<X, Cos, Sin>();
    static_assert(detail::shape_of<X>::rank == 2, "ftune::ops::rope: x is (rows, heads * d)");
    check_same_shape(cos.shape(), sin.shape(), "rope (cos vs sin)");
    detail::check_axis("rope", "x", x, 0, "cos", cos, 0);
    const std::size_t rows = x.shape().extent(0), cols = x.shape().extent(1),
                      half = cos.shape().extent(1);
    if (half == 0 || cols % (2 * half) != 0)
        throw error(errc::shape_mismatch, "rope",
                    ftune::detail::cat(cols, " columns are not heads of ", 2 * half));
    detail::backend_for<X>::rope_apply(x.data(), cols, cos.data(), sin.data(), rows,
                                       cols / (2 * half), half, inverse);
}

/// out (rows, kv_heads · group · d) = each head of in (rows, kv_heads · d) repeated group times
/// (grouped-query attention's keys and values for every query head, as Transformers' repeat_kv).
template <tensor_like Out, tensor_like In>
void repeat_heads(Out&& out, const In& in, std::size_t kv_heads, std::size_t group) {
    detail::same_device<Out, In>();
    static_assert(detail::shape_of<Out>::rank == 2 && detail::shape_of<In>::rank == 2,
                  "ftune::ops::repeat_heads: out (rows, H d), in (rows, Hkv d)");
    const std::size_t rows = in.shape().extent(0), cols = in.shape().extent(1);
    if (kv_heads == 0 || cols % kv_heads != 0)
        throw error(errc::shape_mismatch, "repeat_heads",
                    ftune::detail::cat(kv_heads, " heads do not divide ", cols, " features"));
    detail::check_axis("repeat_heads", "out", out, 0, "in", in, 0);
    detail::check_size("repeat_heads", "out", out, rows * cols * group, "in's size times group");
    detail::backend_for<Out>::repeat_heads(out.data(), in.data(), rows, kv_heads, group,
                                           cols / kv_heads);
}

/// din (rows, kv_heads · d) += the sum over each group of dout's heads (repeat_heads' backward).
template <tensor_like DIn, tensor_like DOut>
void repeat_heads_backward(DIn&& din, const DOut& dout, std::size_t kv_heads, std::size_t group) {
    detail::same_device<DIn, DOut>();
    const std::size_t rows = din.shape().extent(0), cols = din.shape().extent(1);
    if (kv_heads == 0 || cols % kv_heads != 0)
        throw error(errc::shape_mismatch, "repeat_heads_backward",
                    ftune::detail::cat(kv_heads, " heads do not divide ", cols, " features"));
    detail::check_size("repeat_heads_backward", "dout", dout, rows * cols * group,
                       "din's size times group");
    detail::backend_for<DIn>::repeat_heads_backward(din.data(), dout.data(), rows, kv_heads, group,
                                                    cols / kv_heads);
}

/// Scaled softmax over the last axis of scores (B, H, Tq, Tk) with an additive key mask (B, Tk);
/// causal also drops the keys after each query.
template <tensor_like P, tensor_like S, tensor_like M>
void masked_softmax(P&& probs, const S& scores, const M& key_mask, detail::scalar_of<S> scale,
                    bool causal = false) {
    detail::same_device<P, S, M>();
    static_assert(detail::shape_of<S>::rank == 4 && detail::shape_of<M>::rank == 2,
                  "ftune::ops::masked_softmax: scores are (B, H, Tq, Tk) and key_mask is (B, Tk)");
    check_same_shape(probs.shape(), scores.shape(), "masked_softmax (probs vs scores)");
    detail::check_axis("masked_softmax", "scores", scores, 0, "key_mask", key_mask, 0);
    detail::check_axis("masked_softmax", "scores", scores, 3, "key_mask", key_mask, 1);
    const auto& s = scores.shape();
    detail::backend_for<P>::softmax_forward(probs.data(), scores.data(), key_mask.data(), scale,
                                            s.extent(0), s.extent(1), s.extent(2), s.extent(3),
                                            causal);
}

/// Scaled softmax over the last axis of scores (B, H, Tq, Tk) without a key mask (causal: keys
/// after each query dropped).
template <tensor_like P, tensor_like S>
void masked_softmax(P&& probs, const S& scores, detail::scalar_of<S> scale, bool causal = false) {
    detail::same_device<P, S>();
    static_assert(detail::shape_of<S>::rank == 4,
                  "ftune::ops::masked_softmax: scores are (B, H, Tq, Tk)");
    check_same_shape(probs.shape(), scores.shape(), "masked_softmax (probs vs scores)");
    const auto& s = scores.shape();
    detail::backend_for<P>::softmax_forward(
        probs.data(), scores.data(), static_cast<const detail::scalar_of<S>*>(nullptr), scale,
        s.extent(0), s.extent(1), s.extent(2), s.extent(3), causal);
}

/// dscores += scale * probs * (dprobs - Σ_k probs dprobs), all (B, H, Tq, Tk); accumulate =
/// false writes dscores instead of adding to it (no zeroing pass needed).
template <tensor_like DS, tensor_like P, tensor_like DP>
void masked_softmax_backward(DS&& dscores, const P& probs, const DP& dprobs,
                             detail::scalar_of<P> scale, bool accumulate = true) {
    detail::same_device<DS, P, DP>();
    static_assert(detail::shape_of<P>::rank == 4,
                  "ftune::ops::masked_softmax_backward: probs, dprobs and dscores are "
                  "(B, H, Tq, Tk)");
    check_same_shape(dprobs.shape(), probs.shape(), "masked_softmax_backward (dprobs vs probs)");
    check_same_shape(dscores.shape(), probs.shape(), "masked_softmax_backward (dscores vs probs)");
    const auto& s = probs.shape();
    using T = detail::scalar_of<P>;
    detail::backend_for<DS>::softmax_backward(
        dscores.data(), probs.data(), dprobs.data(), scale, s.extent(0) * s.extent(1) * s.extent(2),
        s.extent(3), static_cast<const std::uint8_t*>(nullptr), T(1), accumulate);
}

/// dscores = scale * probs * (g - Σ_k probs g), g = dprobs * keep / (1 - p): the backward of the
/// attention's dropout (probability p, mask `keep` as ops::dropout wrote it; dprobs is the
/// gradient of the dropped probabilities) and of its softmax in one pass, all (B, H, Tq, Tk).
/// dscores is written, not accumulated.
template <tensor_like DS, tensor_like P, tensor_like DP, tensor_like Mask>
void masked_softmax_dropout_backward(DS&& dscores, const P& probs, const DP& dprobs,
                                     const Mask& keep, detail::scalar_of<P> p,
                                     detail::scalar_of<P> scale) {
    detail::same_device<DS, P, DP, Mask>();
    static_assert(detail::shape_of<P>::rank == 4,
                  "ftune::ops::masked_softmax_dropout_backward: probs, dprobs, keep and dscores "
                  "are (B, H, Tq, Tk)");
    static_assert(std::is_same_v<detail::scalar_of<Mask>, std::uint8_t>,
                  "ftune::ops::masked_softmax_dropout_backward: the mask holds std::uint8_t, as "
                  "dropout wrote it");
    using T = detail::scalar_of<P>;
    check_same_shape(dprobs.shape(), probs.shape(),
                     "masked_softmax_dropout_backward (dprobs vs probs)");
    check_same_shape(dscores.shape(), probs.shape(),
                     "masked_softmax_dropout_backward (dscores vs probs)");
    check_same_shape(keep.shape(), probs.shape(),
                     "masked_softmax_dropout_backward (keep vs probs)");
    const T keep_scale = p < T(1) ? T(1) / (T(1) - p) : T(0);  // as dropout_backward
    const auto& s = probs.shape();
    detail::backend_for<DS>::softmax_backward(dscores.data(), probs.data(), dprobs.data(), scale,
                                              s.extent(0) * s.extent(1) * s.extent(2), s.extent(3),
                                              keep.data(), keep_scale, false);
}

/// y = x * mask / (1 - p), mask (std::uint8_t, 0/1) drawn from the stream; all the same shape.
template <tensor_like Y, tensor_like Mask, tensor_like X>
void dropout(Y&& y, Mask&& mask, const X& x, detail::scalar_of<X> p, const random_stream& s) {
    detail::same_device<Y, Mask, X>();
    static_assert(std::is_same_v<detail::scalar_of<Mask>, std::uint8_t>,
                  "ftune::ops::dropout: the mask holds std::uint8_t (0 dropped, 1 kept)");
    check_same_shape(y.shape(), x.shape(), "dropout (y vs x)");
    check_same_shape(mask.shape(), x.shape(), "dropout (mask vs x)");
    detail::backend_for<Y>::dropout_forward(y.data(), mask.data(), x.data(), p, x.shape().size(),
                                            s);
}

/// dropout with the tensor cut into `examples` equal blocks (one per example, rows first),
/// block r drawn from s.derive(first + r); examples = 0: the whole tensor from s.
template <tensor_like Y, tensor_like Mask, tensor_like X>
void dropout(Y&& y, Mask&& mask, const X& x, detail::scalar_of<X> p, const random_stream& s,
             std::size_t examples, std::size_t first) {
    if (examples == 0) return dropout(y, mask, x, p, s);
    detail::same_device<Y, Mask, X>();
    static_assert(std::is_same_v<detail::scalar_of<Mask>, std::uint8_t>,
                  "ftune::ops::dropout: the mask holds std::uint8_t (0 dropped, 1 kept)");
    check_same_shape(y.shape(), x.shape(), "dropout (y vs x)");
    check_same_shape(mask.shape(), x.shape(), "dropout (mask vs x)");
    const std::size_t n = x.shape().size(), per = n / examples;
    if (per * examples != n)
        throw error(errc::shape_mismatch, "dropout",
                    ftune::detail::cat(n, " values are not ", examples,
                                       " equal blocks, one per example (context::"
                                       "dropout_examples must be the batch's rows)"));
    for (std::size_t r = 0; r < examples; ++r)
        detail::backend_for<Y>::dropout_forward(y.data() + r * per, mask.data() + r * per,
                                                x.data() + r * per, p, per, s.derive(first + r));
}

/// dx += dy * mask / (1 - p) (grad_write::overwrite: dx =, its old content not read), with the
/// mask dropout saved; all the same shape.
template <tensor_like DX, tensor_like Mask, tensor_like DY>
void dropout_backward(DX&& dx, const Mask& mask, const DY& dy, detail::scalar_of<DY> p,
                      grad_write w = grad_write::accumulate) {
    detail::same_device<DX, Mask, DY>();
    static_assert(std::is_same_v<detail::scalar_of<Mask>, std::uint8_t>,
                  "ftune::ops::dropout_backward: the mask holds std::uint8_t, as dropout wrote it");
    check_same_shape(dx.shape(), dy.shape(), "dropout_backward (dx vs dy)");
    check_same_shape(mask.shape(), dy.shape(), "dropout_backward (mask vs dy)");
    auto run = [&](auto... overwrite) {  // the CPU's primitive takes the flag, the others add
        detail::backend_for<DX>::dropout_backward(dx.data(), mask.data(), dy.data(), p,
                                                  dy.shape().size(), overwrite...);
    };
    if constexpr (std::is_same_v<detail::device_of<DX>, device::cpu>)
        run(detail::overwrite_in_place(dx, w));
    else
        detail::overwrite_in_place(dx, w), run();
}

/// out(n, C) = table(ids, :); ids outside the table throw out_of_range.
template <tensor_like Out, tensor_like Ids, tensor_like Table>
void embedding(Out&& out, const Ids& ids, const Table& table) {
    using ST = detail::shape_of<Table>;
    detail::same_device<Out, Ids, Table>();
    static_assert(std::is_same_v<detail::scalar_of<Ids>, token_id>,
                  "ftune::ops::embedding: ids are int32 (ftune::token_id)");
    static_assert(ST::rank == 2 && detail::shape_of<Out>::rank == 2,
                  "ftune::ops::embedding: table is (vocab, C) and out is (n, C)");
    detail::static_extents_agree<detail::sx<ST, 1>, detail::sx<detail::shape_of<Out>, 1>>();
    detail::check_axis("embedding", "out", out, 1, "table", table, 1);
    detail::check_size("embedding", "ids", ids, out.shape().extent(0), "one per row of out");
    detail::backend_for<Out>::embedding_forward(out.data(), ids.data(), table.data(),
                                                out.shape().extent(0), table.shape().extent(1),
                                                table.shape().extent(0));
}

/// dtable(vocab, C)(ids, :) += dout(n, C) (repeated ids add up); bad ids throw out_of_range.
template <tensor_like DTable, tensor_like Ids, tensor_like DOut>
void embedding_backward(DTable&& dtable, const Ids& ids, const DOut& dout,
                        token_id padding_idx = -1) {
    using ST = detail::shape_of<DTable>;
    detail::same_device<DTable, Ids, DOut>();
    static_assert(std::is_same_v<detail::scalar_of<Ids>, token_id>,
                  "ftune::ops::embedding_backward: ids are int32 (ftune::token_id)");
    static_assert(ST::rank == 2 && detail::shape_of<DOut>::rank == 2,
                  "ftune::ops::embedding_backward: dtable is (vocab, C) and dout is (n, C)");
    detail::static_extents_agree<detail::sx<ST, 1>, detail::sx<detail::shape_of<DOut>, 1>>();
    detail::check_axis("embedding_backward", "dout", dout, 1, "dtable", dtable, 1);
    detail::check_size("embedding_backward", "ids", ids, dout.shape().extent(0),
                       "one per row of dout");
    detail::backend_for<DTable>::embedding_backward(
        dtable.data(), ids.data(), dout.data(), dout.shape().extent(0), dtable.shape().extent(1),
        dtable.shape().extent(0), padding_idx);
}

/// Per-row cross-entropy of logits (rows, V) against targets (rows); returns the counted rows.
template <tensor_like L, tensor_like Z, tensor_like Tg>
std::size_t cross_entropy(L&& losses, const Z& logits, const Tg& targets,
                          token_id ignore_index = -100) {
    detail::same_device<L, Z, Tg>();
    static_assert(detail::shape_of<Z>::rank == 2,
                  "ftune::ops::cross_entropy: logits are (rows, V)");
    const std::size_t rows = logits.shape().extent(0);
    detail::check_size("cross_entropy", "targets", targets, rows, "one per row of logits");
    detail::check_size("cross_entropy", "losses", losses, rows, "one per row of logits");
    return detail::backend_for<L>::cross_entropy_forward(
        losses.data(), logits.data(), targets.data(), rows, logits.shape().extent(1), ignore_index);
}

/// dlogits(rows, V) += dlosses(rows) * (softmax(logits) - onehot(targets)); ignored rows untouched.
template <tensor_like DZ, tensor_like Z, tensor_like Tg, tensor_like DL>
void cross_entropy_backward(DZ&& dlogits, const Z& logits, const Tg& targets, const DL& dlosses,
                            token_id ignore_index = -100) {
    detail::same_device<DZ, Z, Tg, DL>();
    static_assert(detail::shape_of<Z>::rank == 2,
                  "ftune::ops::cross_entropy_backward: logits and dlogits are (rows, V)");
    static_assert(std::is_same_v<detail::scalar_of<Tg>, token_id>,
                  "ftune::ops::cross_entropy_backward: targets are int32 (ftune::token_id)");
    check_same_shape(dlogits.shape(), logits.shape(), "cross_entropy_backward (dlogits vs logits)");
    const std::size_t rows = logits.shape().extent(0);
    detail::check_size("cross_entropy_backward", "targets", targets, rows, "one per row of logits");
    detail::check_size("cross_entropy_backward", "dlosses", dlosses, rows, "one per row of logits");
    detail::backend_for<DZ>::cross_entropy_backward(dlogits.data(), logits.data(), targets.data(),
                                                    dlosses.data(), rows, logits.shape().extent(1),
                                                    ignore_index);
}

/// One AdamW step on param with its grad and moments m, v (all the same shape).
template <tensor_like P, tensor_like G, tensor_like M, tensor_like V>
void adamw_update(P&& param, const G& grad, M&& m, V&& v, const adamw_params& h) {
    detail::same_device<P, G, M, V>();
    check_same_shape(grad.shape(), param.shape(), "adamw_update (grad vs param)");
    check_same_shape(m.shape(), param.shape(), "adamw_update (m vs param)");
    check_same_shape(v.shape(), param.shape(), "adamw_update (v vs param)");
    detail::backend_for<P>::adamw_update(param.data(), grad.data(), m.data(), v.data(),
                                         param.shape().size(), h);
}

/// One SGD step on param with its grad (same shape); momentum_buffer may be empty if momentum is 0.
template <tensor_like P, tensor_like G, tensor_like Buf>
void sgd_update(P&& param, const G& grad, Buf&& momentum_buffer, const sgd_params& h) {
    detail::same_device<P, G, Buf>();
    check_same_shape(grad.shape(), param.shape(), "sgd_update (grad vs param)");
    const std::size_t n = param.shape().size();
    if (h.momentum != 0)
        detail::check_size("sgd_update", "momentum_buffer", momentum_buffer, n,
                           "momentum (one per element of param)");
    detail::backend_for<P>::sgd_update(param.data(), grad.data(),
                                       h.momentum != 0 ? momentum_buffer.data() : nullptr, n, h);
}

/// Σ x² over every element of x, in double (a reduction order independent of the thread count).
template <tensor_like X>
double sum_squares(const X& x) {
    detail::same_device<X>();
    return detail::backend_for<X>::sum_squares(x.data(), x.shape().size());
}

/// x *= alpha, element-wise.
template <tensor_like X>
void scale(X&& x, detail::scalar_of<X> alpha) {
    detail::same_device<X>();
    detail::backend_for<X>::scale(x.data(), alpha, x.shape().size());
}

// ---------------------------------------------------------------------------------------------
// Attention's per-head products. An (N, C) "head matrix" (queries, keys, values, the context)
// holds head h of each row in columns h*d .. h*d+d (d = C / H); a (B, H, Tq, Tk) tensor holds
// one (Tq, Tk) matrix per batch and head (scores, probabilities).

/// scores (B, H, Tq, Tk) = a_bh b_bhᵀ for every batch b and head h, a (B*Tq, C) and b (B*Tk, C)
/// head matrices: attention's Q Kᵀ, and dP = dctx Vᵀ in its backward. In precision p (bf16:
/// operands rounded to bf16, fp32 sums).
template <tensor_like S, tensor_like A, tensor_like Bm>
void head_scores(S&& scores, const A& a, const Bm& b, precision p = precision::fp32) {
    detail::same_device<S, A, Bm>();
    static_assert(detail::shape_of<S>::rank == 4 && detail::shape_of<A>::rank == 2 &&
                      detail::shape_of<Bm>::rank == 2,
                  "ftune::ops::head_scores: scores (B, H, Tq, Tk), a (B*Tq, C), b (B*Tk, C)");
    const auto& ss = scores.shape();
    const std::size_t B = ss.extent(0), H = ss.extent(1), Tq = ss.extent(2), Tk = ss.extent(3);
    const std::size_t Cn = a.shape().extent(1);
    detail::check_size("head_scores", "a", a, B * Tq * Cn, "(B*Tq, C) of the scores' B and Tq");
    detail::check_size("head_scores", "b", b, B * Tk * Cn, "(B*Tk, C) of the scores' B and Tk");
    if (H == 0 || Cn % H != 0)
        throw error(errc::shape_mismatch, "head_scores",
                    ftune::detail::cat(H, " heads do not divide ", Cn, " features"));
    const std::size_t d = Cn / H;
    detail::head_products<detail::backend_for<S>>(p, transpose::no, transpose::yes, Tq, Tk, d,
                                                  detail::scalar_of<S>(1), a.data(), Cn, Tq * Cn, d,
                                                  b.data(), Cn, Tk * Cn, d, detail::scalar_of<S>(0),
                                                  scores.data(), Tk, H * Tq * Tk, Tq * Tk, B, H);
}

/// out_bh = op(p_bh) v_bh for every batch b and head h, written into head h's columns of a
/// head matrix, with p (B, H, Tq, Tk): attention's context P V (out (B*Tq, C), v (B*Tk, C)), and
/// in its backward dQ = dS K (TP = no, the same shapes), dV = Pᵀ dctx and dK = dSᵀ Q (TP = yes:
/// out (B*Tk, C), v (B*Tq, C)). Tq = Tk but for a query subset (the [CLS]-only last layer:
/// Tq = 1). In precision prec (bf16: operands rounded to bf16, fp32 sums); p may be kept in
/// bf16 (ftune::bf16), read as it is, with prec bf16.
template <transpose TP = transpose::no, tensor_like Out, tensor_like P, tensor_like V>
void head_context(Out&& out, const P& p, const V& v, precision prec = precision::fp32) {
    detail::same_device<Out, P, V>();
    static_assert(detail::shape_of<Out>::rank == 2 && detail::shape_of<P>::rank == 4 &&
                      detail::shape_of<V>::rank == 2,
                  "ftune::ops::head_context: out (B*Tq, C), p (B, H, Tq, Tk), v (B*Tk, C); "
                  "transposed out (B*Tk, C), v (B*Tq, C)");
    const auto& ps = p.shape();
    const std::size_t B = ps.extent(0), H = ps.extent(1), Tq = ps.extent(2), Tk = ps.extent(3);
    const std::size_t Cn = out.shape().extent(1);
    constexpr bool tr = TP == transpose::yes;
    const std::size_t To = tr ? Tk : Tq, Tv = tr ? Tq : Tk;  // rows of out and v per sequence
    detail::check_size("head_context", "out", out, B * To * Cn,
                       tr ? "(B*Tk, C) of p's (B, H, Tq, Tk)" : "(B*Tq, C) of p's (B, H, Tq, Tk)");
    detail::check_axis("head_context", "v", v, 1, "out", out, 1);
    detail::check_size("head_context", "v", v, B * Tv * Cn,
                       tr ? "(B*Tq, C) of p's (B, H, Tq, Tk)" : "(B*Tk, C) of p's (B, H, Tq, Tk)");
    if (H == 0 || Cn % H != 0)
        throw error(errc::shape_mismatch, "head_context",
                    ftune::detail::cat(H, " heads do not divide ", Cn, " features"));
    const std::size_t d = Cn / H;
    detail::head_products<detail::backend_for<Out>>(
        prec, TP, transpose::no, To, d, Tv, detail::scalar_of<Out>(1), p.data(), Tk, H * Tq * Tk,
        Tq * Tk, v.data(), Cn, Tv * Cn, d, detail::scalar_of<Out>(0), out.data(), Cn, To * Cn, d, B,
        H);
}

/// Grouped-query attention of Tq new positions per sequence to the S positions of a key/value
/// cache, for generation: out (B*Tq, H d) holds, for each sequence b and query head h,
/// softmax(scale q_bh k_bjᵀ + key_mask_b, causal) v_bj, with j = h / (H / Hkv) the key/value head
/// h shares. q (B*Tq, H d); the caches k, v (B, capacity, Hkv d) hold each sequence's rotated
/// keys and values, of which the first S positions count; the queries are positions S - Tq ..
/// S - 1; key_mask (B, S) is additive. scores and probs (B, H, Tq, S) are scratch.
template <tensor_like Out, tensor_like Q, tensor_like K, tensor_like V, tensor_like M,
          tensor_like S1, tensor_like S2>
void cached_attention(Out&& out, const Q& q, const K& k, const V& v, std::size_t S,
                      const M& key_mask, S1&& scores, S2&& probs, detail::scalar_of<Out> scale) {
    detail::same_device<Out, Q, K, V, M, S1, S2>();
    static_assert(detail::shape_of<Out>::rank == 2 && detail::shape_of<Q>::rank == 2 &&
                      detail::shape_of<K>::rank == 3 && detail::shape_of<V>::rank == 3 &&
                      detail::shape_of<M>::rank == 2 && detail::shape_of<S1>::rank == 4,
                  "ftune::ops::cached_attention: out and q (B*Tq, H d), k and v (B, capacity, "
                  "Hkv d), key_mask (B, S), scores and probs (B, H, Tq, S)");
    using T = detail::scalar_of<Out>;
    const auto& ss = scores.shape();
    const std::size_t B = ss.extent(0), H = ss.extent(1), Tq = ss.extent(2);
    const std::size_t cap = k.shape().extent(1), Ckv = k.shape().extent(2),
                      HD = q.shape().extent(1);
    check_same_shape(k.shape(), v.shape(), "cached_attention (k vs v)");
    check_same_shape(probs.shape(), ss, "cached_attention (probs vs scores)");
    if (ss.extent(3) != S || S > cap || Tq > S || k.shape().extent(0) != B || H == 0 ||
        HD % H != 0 || Ckv % (HD / H) != 0 || H % (Ckv / (HD / H)) != 0)
        throw error(errc::shape_mismatch, "cached_attention",
                    ftune::detail::cat("scores ", ss.to_string(), ", q ", q.shape().to_string(),
                                       ", cache ", k.shape().to_string(), " and ", S,
                                       " cached positions do not fit together"));
    detail::check_size("cached_attention", "q", q, B * Tq * HD, "(B*Tq, H d)");
    detail::check_size("cached_attention", "out", out, B * Tq * HD, "(B*Tq, H d)");
    detail::check_size("cached_attention", "key_mask", key_mask, B * S, "(B, S)");
    const std::size_t d = HD / H, Hkv = Ckv / d, group = H / Hkv;
    using backend = detail::backend_for<Out>;
    if (Tq == 1) {  // a decode step: one fused primitive (no (B, H, 1, S) buffers)
        backend::attention_decode(out.data(), q.data(), k.data(), v.data(), cap, key_mask.data(),
                                  scale, B, H, Hkv, S, d);
        return;
    }
    // scores: head h = j group + g of sequence b is Q_bh (Tq, d) K_bjᵀ, batched over j
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t g = 0; g < group; ++g)
            backend::gemm_strided_batched(
                transpose::no, transpose::yes, Tq, S, d, T(1), q.data() + b * Tq * HD + g * d, HD,
                group * d, k.data() + b * cap * Ckv, Ckv, d, T(0),
                scores.data() + (b * H + g) * Tq * S, S, group * Tq * S, Hkv);
    backend::softmax_forward(probs.data(), scores.data(), key_mask.data(), scale, B, H, Tq, S,
                             /*causal=*/true);
    // context: P_bh (Tq, S) V_bj (S, d) into head h's columns
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t g = 0; g < group; ++g)
            backend::gemm_strided_batched(transpose::no, transpose::no, Tq, d, S, T(1),
                                          probs.data() + (b * H + g) * Tq * S, S, group * Tq * S,
                                          v.data() + b * cap * Ckv, Ckv, d, T(0),
                                          out.data() + b * Tq * HD + g * d, HD, group * d, Hkv);
}

/// Multi-head attention for inference, nothing kept for backward: out (B, Tq, C) =
/// softmax(scale q_bh k_bhᵀ + key_mask_b [causal]) v_bh for each batch b and head h, where qkv
/// (B*T, 3C) holds each position's query, key and value side by side (the fused projection) and
/// the queries are the first Tq positions of each sequence (Tq = T, or 1 for [CLS] only).
/// key_mask (B, T) is additive (empty: none). The backend runs it fused (no (B, H, T, T) buffer).
/// precision::bf16 (float only): the two products in bf16 with fp32 sums, as head_scores and
/// head_context take them in bf16.
template <tensor_like Out, tensor_like QKV, tensor_like M>
void attention_inference(Out&& out, const QKV& qkv, const M& key_mask, std::size_t heads,
                         detail::scalar_of<Out> scale, bool causal = false,
                         precision p = precision::fp32) {
    detail::same_device<Out, QKV, M>();
    static_assert(detail::shape_of<Out>::rank == 3 && detail::shape_of<QKV>::rank == 2,
                  "ftune::ops::attention_inference: out (B, Tq, C), qkv (B*T, 3C)");
    const std::size_t B = out.shape().extent(0), Tq = out.shape().extent(1),
                      Cn = out.shape().extent(2);
    if (qkv.shape().extent(1) != 3 * Cn || B == 0 || qkv.shape().extent(0) % B != 0)
        throw error(errc::shape_mismatch, "attention_inference",
                    "qkv has shape " + qkv.shape().to_string() + " but out " +
                        out.shape().to_string() + " needs (B*T, 3C)");
    const std::size_t Tn = qkv.shape().extent(0) / B;
    if (!key_mask.empty())
        detail::check_size("attention_inference", "key_mask", key_mask, B * Tn, "(B, T)");
    if (heads == 0 || Cn % heads != 0)
        throw error(errc::shape_mismatch, "attention_inference",
                    ftune::detail::cat(heads, " heads do not divide ", Cn, " features"));
    const auto* q = qkv.data();
    // the queries' row stride: a row, or (one query per sequence) a whole sequence
    const std::size_t ldq = Tq == Tn ? 3 * Cn : Tn * 3 * Cn;
    const auto* mask = key_mask.empty() ? nullptr : key_mask.data();
    if (p == precision::bf16) {
        if constexpr (std::is_same_v<detail::scalar_of<Out>, float>)
            return detail::backend_for<Out>::attention_inference_bf16(
                out.data(), Cn, q, ldq, q + Cn, q + 2 * Cn, 3 * Cn, mask, scale, B, heads, Tq, Tn,
                Cn / heads, causal);
        else
            throw error(errc::unsupported, "attention_inference",
                        "bf16 products take float tensors; use precision::fp32");
    }
    detail::backend_for<Out>::attention_inference(out.data(), Cn, q, ldq, q + Cn, q + 2 * Cn,
                                                  3 * Cn, mask, scale, B, heads, Tq, Tn, Cn / heads,
                                                  causal);
}

// ---------------------------------------------------------------------------------------------
// Weights prepared once for inference products

/// The prepared-weight type of a device (each backend specializes it; a new device too, with
/// `type` holding pack(B, ldb, transpose, K, N), rows() and cols()).
template <class T, class D>
struct prepared_weight_of {
    static_assert(!std::is_same_v<D, device::cuda>,
                  "ftune: prepared weights on device::cuda need the CUDA backend: build with "
                  "FTUNE_WITH_CUDA (docs/cuda.md)");
};
template <class T>
struct prepared_weight_of<T, device::cpu> {
    using type = backends::cpu::packed_b<T>;  ///< packed in the GEMM's panel layout
};
template <class T>
struct prepared_weight_of<T, device::reference> {
    using type = backends::reference::prepared_b<T>;  ///< op(W) copied row-major
};
#if FTUNE_WITH_CUDA
template <class T>
struct prepared_weight_of<T, device::cuda> {
    using type = backends::cuda::prepared_b<T>;  ///< op(W) copied row-major in device memory
};
#endif

/// A weight matrix prepared once for inference products on device D: the CPU backend packs it in
/// its GEMM's panel layout. Each backend has its own type.
template <scalar T, class D = device::cpu>
using prepared_weight = typename prepared_weight_of<T, D>::type;

/// Prepares w (N, K), stored as a linear layer stores its weight (out, in), for y = x wᵀ
/// (matmul_prepared) in precision p (bf16: w rounded to bf16 now, x at each product, fp32
/// sums); grows the prepared storage only.
template <tensor_like W>
void prepare_weight(prepared_weight<detail::scalar_of<W>, detail::device_of<W>>& prepared,
                    const W& w, precision p = precision::fp32) {
    detail::same_device<W>();
    static_assert(detail::shape_of<W>::rank == 2, "ftune::ops::prepare_weight: w is (N, K)");
    const std::size_t N = w.shape().extent(0), K = w.shape().extent(1);
    prepared.pack(w.data(), K, transpose::yes, K, N, p);
}

/// Prepares w (K, N), stored as a linear layer stores its weight (out, in), for y += x w (the
/// layer's d input: matmul_prepared_add) in precision p; grows the prepared storage only.
template <tensor_like W>
void prepare_weight_for_input_gradient(
    prepared_weight<detail::scalar_of<W>, detail::device_of<W>>& prepared, const W& w,
    precision p = precision::fp32) {
    detail::same_device<W>();
    static_assert(detail::shape_of<W>::rank == 2,
                  "ftune::ops::prepare_weight_for_input_gradient: w is (K, N)");
    const std::size_t K = w.shape().extent(0), N = w.shape().extent(1);
    prepared.pack(w.data(), N, transpose::no, K, N, p);
}

/// y (M, N) += x (M, K) w with w (K, N) prepared by prepare_weight_for_input_gradient: the same
/// values as matmul(x, w, y, 1, 1) in w's precision, bit for bit (grad_write::overwrite: y =,
/// as matmul(x, w, y, 1, 0)).
template <tensor_like X, class P, tensor_like Y>
void matmul_prepared_add(const X& x, const P& w, Y&& y, grad_write gw = grad_write::accumulate) {
    detail::same_device<X, Y>();
    static_assert(std::is_same_v<P, prepared_weight<detail::scalar_of<Y>, detail::device_of<Y>>>,
                  "ftune::ops::matmul_prepared_add: w is the prepared_weight of y's type and "
                  "device");
    static_assert(detail::shape_of<X>::rank == 2 && detail::shape_of<Y>::rank == 2,
                  "ftune::ops::matmul_prepared_add: x (M, K), y (M, N)");
    const std::size_t M = x.shape().extent(0), K = x.shape().extent(1), N = w.cols();
    if (w.rows() != K)
        throw error(
            errc::shape_mismatch, "matmul_prepared_add",
            ftune::detail::cat("x has ", K, " columns but the weight was prepared for ", w.rows()));
    detail::check_size("matmul_prepared_add", "y", y, M * N, "(M, N) of x's rows and w's columns");
    using T = detail::scalar_of<Y>;
    detail::backend_for<X>::gemm_packed(transpose::no, M, N, K, T(1), x.data(), K, w,
                                        gw == grad_write::overwrite ? T(0) : T(1), y.data(), N);
}

/// Element-wise work fused into matmul_prepared: none.
struct no_epilogue {};

/// Element-wise work fused into matmul_prepared: y += r (r has y's shape: a residual
/// connection), added as each tile of the product is stored; the same values as residual_add
/// after the product, bit for bit.
template <class R>
struct add_residual {
    R r;  ///< a view (rows, N)
};
template <class R>
add_residual(R) -> add_residual<R>;

/// Element-wise work fused into matmul_prepared: y = f(y) (after the bias), applied to each tile
/// of the product while it is in L1 instead of in a pass over y afterwards; the same values as
/// activate() after the product, bit for bit.
struct apply_activation {
    activation f;  ///< the function
};

namespace detail {
/// matmul_prepared's per-tile epilogue for apply_activation on backend Bk: f on the rows of a
/// finished tile of C (c points at its first element, rows ldc apart).
template <class Bk, scalar T>
struct activate_tiles {
    activation f;  ///< the function
    /// f on the tile at c: rows x cols, rows ldc apart (its place in C unused).
    void operator()(T* c, std::size_t ldc, std::size_t, std::size_t rows, std::size_t,
                    std::size_t cols) const {
        for (std::size_t i = 0; i < rows; ++i) activate_n<Bk>(f, c + i * ldc, c + i * ldc, cols);
    }
};
}  // namespace detail

/// y (M, N) = x (M, K) wᵀ + bias (N), then the epilogue, with w (N, K) prepared by
/// prepare_weight: the same values as matmul<no, yes> in w's precision, bias_add (and
/// residual_add, or activate), bit for bit. On the CPU, x may be kept in bf16 when w is
/// prepared in bf16.
template <tensor_like X, class P, tensor_like Y, tensor_like Bias, class E = no_epilogue>
void matmul_prepared(const X& x, const P& w, Y&& y, const Bias& bias, E epilogue = {}) {
    detail::same_device<X, Y, Bias>();
    static_assert(std::is_same_v<P, prepared_weight<detail::scalar_of<Y>, detail::device_of<Y>>>,
                  "ftune::ops::matmul_prepared: w is the prepared_weight of y's type and device");
    static_assert(detail::shape_of<X>::rank == 2 && detail::shape_of<Y>::rank == 2,
                  "ftune::ops::matmul_prepared: x (M, K), y (M, N)");
    const std::size_t M = x.shape().extent(0), K = x.shape().extent(1), N = w.cols();
    if (w.rows() != K)
        throw error(errc::shape_mismatch, "matmul_prepared",
                    ftune::detail::cat("x has ", K, " features but the weight was prepared for ",
                                       w.rows()));
    detail::check_size("matmul_prepared", "y", y, M * N, "(M, N) of x's rows and w's outputs");
    const bool biased = bias.shape().size() != 0;  // empty: a projection without a bias
    if (biased) detail::check_size("matmul_prepared", "bias", bias, N, "one per output");
    const auto* b = biased ? bias.data() : nullptr;
    using Bk = detail::backend_for<X>;
    using S = detail::scalar_of<Y>;
    // the product, with the backend's per-tile epilogue when given
    auto product = [&](auto... tile_epilogue) {
        Bk::gemm_packed(transpose::no, M, N, K, S(1), x.data(), K, w, S(0), y.data(), N, b,
                        tile_epilogue...);
    };
    if constexpr (std::is_same_v<E, no_epilogue>) {
        product();
    } else if constexpr (std::is_same_v<E, apply_activation>) {
        using D = detail::device_of<Y>;
        if constexpr (std::is_same_v<D, device::cpu> || std::is_same_v<D, device::reference>) {
            product(detail::activate_tiles<Bk, S>{epilogue.f});
        } else {  // other backends run add_residual alone: the product, then f over it
            product();
            activate(epilogue.f, y, y);
        }
    } else {
        const auto& r = epilogue.r;
        detail::same_device<Y, decltype(r)>();
        static_assert(detail::shape_of<decltype(r)>::rank == 2,
                      "ftune::ops::add_residual: r is (M, N)");
        detail::check_size("matmul_prepared", "the residual", r, M * N, "y's shape (M, N)");
        product(backends::add_residual<S>{r.data(), r.shape().extent(1)});
    }
}

}  // namespace ops
FTUNE_NAMESPACE_END
