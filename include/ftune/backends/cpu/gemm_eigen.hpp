// CPU GEMM through Eigen's blocked, vectorized kernels (multi-threaded by Eigen when OpenMP is on).
//
// Kept beside ftune's own packed GEMM (gemm.hpp) as an alternative and for side-by-side
// benchmarks: on this project's machines Eigen 3.4 reaches about 55-60% of the FMA peak at BERT
// shapes, ftune's kernel more (see docs/performance.md). Not included by ftune.hpp; Eigen is not
// a dependency of ftune's CMake target, so a program including this header links Eigen3::Eigen.
#pragma once

#include <cstddef>

#include <Eigen/Core>

#include "ftune/backends/cpu/detail.hpp"

FTUNE_NAMESPACE_BEGIN
namespace backends::cpu {

namespace eigen_detail {
template <class T>
using row_major = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using const_map = Eigen::Map<const row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class T>
using mut_map = Eigen::Map<row_major<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
}  // namespace eigen_detail

/// Eigen's C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C, row-major with row strides
/// lda/ldb/ldc. beta == 0 ignores C's previous content (even NaN), as BLAS does.
template <scalar T>
void gemm_eigen(transpose ta, transpose tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
                const T* A, std::size_t lda, const T* B, std::size_t ldb, T beta, T* C,
                std::size_t ldc) {
    using Eigen::Index;
    if (M == 0 || N == 0) return;
    eigen_detail::mut_map<T> c(C, Index(M), Index(N), Eigen::OuterStride<>(Index(ldc)));
    if (K == 0 || alpha == T(0)) {
        if (beta == T(0))
            c.setZero();
        else
            c *= beta;
        return;
    }
    // op(X) is a map of X as stored, transposed when asked: Eigen folds the transpose and alpha
    // into its packing, so no copy is made.
    const Index ar = ta == transpose::no ? Index(M) : Index(K),
                ac = ta == transpose::no ? Index(K) : Index(M);
    const Index br = tb == transpose::no ? Index(K) : Index(N),
                bc = tb == transpose::no ? Index(N) : Index(K);
    eigen_detail::const_map<T> a(A, ar, ac, Eigen::OuterStride<>(Index(lda)));
    eigen_detail::const_map<T> b(B, br, bc, Eigen::OuterStride<>(Index(ldb)));
    auto run = [&](const auto& opa, const auto& opb) {
        if (beta == T(0)) {
            c.noalias() = alpha * opa * opb;
        } else {
            if (beta != T(1)) c *= beta;
            c.noalias() += alpha * opa * opb;
        }
    };
    if (ta == transpose::no && tb == transpose::no)
        run(a, b);
    else if (ta == transpose::no)
        run(a, b.transpose());
    else if (tb == transpose::no)
        run(a.transpose(), b);
    else
        run(a.transpose(), b.transpose());
}

}  // namespace backends::cpu
FTUNE_NAMESPACE_END
