// The typed wrappers of ftune::ops against the reference backend called on the same raw data:
// every wrapper, on awkward sizes (3 rows of 5 or 17 columns, ...), with static, dynamic and mixed
// extents, plus one runtime shape mismatch per wrapper that must throw ftune::error.
#include <ftune/ftune.hpp>
#include <ftune/backends/reference/primitives.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "util.hpp"

namespace ref = ftune::backends::reference;
namespace ops = ftune::ops;
using ftune::buffer;
using ftune::dynamic;
using ftune::dynamic_shape;
using ftune::shape;
using ftune::token_id;
using ftune::transpose;
using test::require_close;
using test::tol;

namespace {

/// Copies v into the elements of a buffer or view of the same size.
template <class X, class T>
void set(X&& x, const std::vector<T>& v) {
    REQUIRE(x.size() == v.size());
    std::copy(v.begin(), v.end(), x.data());
}

/// The elements of a buffer or view as a vector.
template <class X>
auto vec(const X& x) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(x.data())>>;
    return std::vector<T>(x.data(), x.data() + x.size());
}

/// A buffer of the given shape filled with normal values times `scale`.
template <class S, class... I>
buffer<float, S> randn_buffer(std::uint64_t seed, double scale, I... extents) {
    buffer<float, S> b(extents...);
    set(b, test::randn<float>(b.size(), seed, scale));
    return b;
}

/// ops::matmul<TA, TB> with op(a) (M, K), op(b) (K, N) against ref::gemm, for beta 0 and not 0.
template <transpose TA, transpose TB>
void check_matmul(std::size_t M, std::size_t N, std::size_t K) {
    INFO("TA=" << (TA == transpose::yes) << " TB=" << (TB == transpose::yes) << " M=" << M
               << " N=" << N << " K=" << K);
    using D2 = dynamic_shape<2>;
    const std::size_t ar = TA == transpose::no ? M : K, ac = TA == transpose::no ? K : M;
    const std::size_t br = TB == transpose::no ? K : N, bc = TB == transpose::no ? N : K;
    auto a = randn_buffer<D2>(1, 1.0, ar, ac);
    auto b = randn_buffer<D2>(2, 1.0, br, bc);
    buffer<float, D2> c(M, N);
    set(c, test::randn<float>(M * N, 3));  // beta = 0 must ignore it
    std::vector<float> want(M * N);
    ref::gemm(TA, TB, M, N, K, 1.0f, a.data(), ac, b.data(), bc, 0.0f, want.data(), N);
    ops::matmul<TA, TB>(a.view(), std::as_const(b).view(), c);
    require_close(vec(c), want, tol<float>(16.0 * (K + 4)), "matmul beta=0");

    auto c0 = test::randn<float>(M * N, 4);
    set(c, c0);
    want = c0;
    ref::gemm(TA, TB, M, N, K, 0.5f, a.data(), ac, b.data(), bc, -1.5f, want.data(), N);
    ops::matmul<TA, TB>(a, b, c.view(), 0.5f, -1.5f);
    require_close(vec(c), want, tol<float>(16.0 * (K + 4)), "matmul alpha=0.5 beta=-1.5");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Existing wrappers

TEST_CASE("ops::matmul: the four transpose combinations match the reference", "[ops]") {
    for (auto [M, N, K] : {std::tuple<std::size_t, std::size_t, std::size_t>{3, 17, 5},
                           {5, 3, 17},
                           {17, 5, 3},
                           {1, 7, 2},
                           {9, 1, 33}}) {
        check_matmul<transpose::no, transpose::no>(M, N, K);
        check_matmul<transpose::no, transpose::yes>(M, N, K);
        check_matmul<transpose::yes, transpose::no>(M, N, K);
        check_matmul<transpose::yes, transpose::yes>(M, N, K);
    }
}

TEST_CASE("ops::matmul: mixed static and dynamic extents", "[ops]") {
    // y(3, 17) = x(3, 5) wᵀ with w (17, 5), as a linear layer stores it
    auto x = randn_buffer<shape<dynamic, 5>>(5, 1.0, 3, 5);
    auto w = randn_buffer<shape<17, 5>>(6, 1.0, 17, 5);
    buffer<float, shape<3, dynamic>> y(3, 17);
    ops::matmul<transpose::no, transpose::yes>(x, w, y);
    std::vector<float> want(3 * 17);
    ref::gemm(transpose::no, transpose::yes, 3, 17, 5, 1.0f, x.data(), 5, w.data(), 5, 0.0f,
              want.data(), 17);
    require_close(vec(y), want, tol<float>(16.0 * 9), "matmul x wT");
    // dw(17, 5) = dyᵀ(17, 3) x(3, 5)
    buffer<float, shape<17, 5>> dw;
    ops::matmul<transpose::yes, transpose::no>(y, x, dw);
    std::vector<float> want_dw(17 * 5);
    ref::gemm(transpose::yes, transpose::no, 17, 5, 3, 1.0f, y.data(), 17, x.data(), 5, 0.0f,
              want_dw.data(), 5);
    require_close(vec(dw), want_dw, tol<float>(16.0 * 7), "matmul yT x");
}

TEST_CASE("ops::bias_add and ops::bias_backward match the reference", "[ops]") {
    for (std::size_t cols : {1, 5, 17, 33}) {
        INFO("cols=" << cols);
        auto y = randn_buffer<dynamic_shape<2>>(10, 1.0, 3, cols);
        auto bias = randn_buffer<dynamic_shape<1>>(11, 1.0, cols);
        auto want = vec(y);
        ref::bias_add(want.data(), bias.data(), 3, cols);
        ops::bias_add(y, std::as_const(bias).view());
        require_close(vec(y), want, tol<float>(4), "bias_add");

        auto db = randn_buffer<dynamic_shape<1>>(12, 1.0, cols);  // accumulates
        auto want_db = vec(db);
        ref::bias_backward(want_db.data(), y.data(), 3, cols);
        ops::bias_backward(db.view(), std::as_const(y).view());
        require_close(vec(db), want_db, tol<float>(32), "bias_backward");
    }
    // static columns
    auto y = randn_buffer<shape<dynamic, 17>>(13, 1.0, 3, 17);
    auto bias = randn_buffer<shape<17>>(14, 1.0, 17);
    auto want = vec(y);
    ref::bias_add(want.data(), bias.data(), 3, 17);
    ops::bias_add(y, bias);
    require_close(vec(y), want, tol<float>(4), "bias_add static");
    buffer<float, shape<17>> db;
    set(db, test::randn<float>(17, 15));
    auto want_db = vec(db);
    ref::bias_backward(want_db.data(), y.data(), 3, 17);
    ops::bias_backward(db, y);
    require_close(vec(db), want_db, tol<float>(32), "bias_backward static");
}

TEST_CASE("ops::residual_add matches the reference, also in place", "[ops]") {
    auto a = randn_buffer<shape<dynamic, 17>>(20, 1.0, 3, 17);
    auto b = randn_buffer<dynamic_shape<2>>(21, 1.0, 3, 17);
    buffer<float, shape<3, 17>> out;
    std::vector<float> want(3 * 17);
    ref::residual_add(want.data(), a.data(), b.data(), want.size());
    ops::residual_add(out, std::as_const(a).view(), b);
    require_close(vec(out), want, tol<float>(2), "residual_add");
    ops::residual_add(a, a, b);  // out aliases a
    require_close(vec(a), want, tol<float>(2), "residual_add in place");
}

TEST_CASE("ops::activate and ops::activate_backward match the reference", "[ops]") {
    using ops::activation;
    for (std::size_t cols : {5, 17}) {
        INFO("cols=" << cols);
        auto x = randn_buffer<dynamic_shape<2>>(30, 3.0, 3, cols);
        auto dy = randn_buffer<dynamic_shape<2>>(31, 1.0, 3, cols);
        const std::size_t n = x.size();
        for (auto f : {activation::gelu, activation::gelu_tanh, activation::tanh, activation::relu,
                       activation::silu}) {
            INFO("activation " << int(f));
            buffer<float, dynamic_shape<2>> y(3, cols);
            std::vector<float> want(n);
            switch (f) {
                case activation::gelu:
                    ref::gelu_forward(want.data(), x.data(), n);
                    break;
                case activation::gelu_tanh:
                    ref::gelu_tanh_forward(want.data(), x.data(), n);
                    break;
                case activation::tanh:
                    ref::tanh_forward(want.data(), x.data(), n);
                    break;
                case activation::relu:
                    ref::relu_forward(want.data(), x.data(), n);
                    break;
                case activation::silu:
                    ref::silu_forward(want.data(), x.data(), n);
                    break;
            }
            ops::activate(f, y, std::as_const(x).view());
            require_close(vec(y), want, tol<float>(64), "activate");

            // the saved tensor: the input for the GELUs and SiLU, the output for tanh
            const auto& saved = f == activation::tanh ? y : x;
            auto dx = randn_buffer<dynamic_shape<2>>(32, 1.0, 3, cols);  // accumulates
            auto want_dx = vec(dx);
            switch (f) {
                case activation::gelu:
                    ref::gelu_backward(want_dx.data(), saved.data(), dy.data(), n);
                    break;
                case activation::gelu_tanh:
                    ref::gelu_tanh_backward(want_dx.data(), saved.data(), dy.data(), n);
                    break;
                case activation::tanh:
                    ref::tanh_backward(want_dx.data(), saved.data(), dy.data(), n);
                    break;
                case activation::relu:
                    ref::relu_backward(want_dx.data(), saved.data(), dy.data(), n);
                    break;
                case activation::silu:
                    ref::silu_backward(want_dx.data(), saved.data(), dy.data(), n);
                    break;
            }
            ops::activate_backward(f, dx, saved, dy);
            require_close(vec(dx), want_dx, tol<float>(64), "activate_backward");
        }
    }
    // in place, static shape
    auto x = randn_buffer<shape<3, 17>>(33, 3.0, 3, 17);
    std::vector<float> want(x.size());
    ref::gelu_forward(want.data(), x.data(), x.size());
    ops::activate(activation::gelu, x, x);
    require_close(vec(x), want, tol<float>(64), "activate in place");
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

TEST_CASE("ops::layer_norm and ops::layer_norm_backward match the reference", "[ops]") {
    const float eps = 1e-2f;  // large enough that a wrapper dropping eps would fail
    auto run = [&](auto& x, auto& weight, auto& bias, auto& out, auto& mean, auto& rstd, auto& dx,
                   auto& dw, auto& db, const auto& dout) {
        const std::size_t rows = x.shape().extent(0), C = x.shape().extent(1);
        INFO("rows=" << rows << " C=" << C);
        std::vector<float> want(rows * C), want_mean(rows), want_rstd(rows);
        ref::layer_norm_forward(want.data(), want_mean.data(), want_rstd.data(), x.data(),
                                weight.data(), bias.data(), rows, C, eps);
        ops::layer_norm(out, mean, rstd, std::as_const(x).view(), weight, bias, eps);
        require_close(vec(out), want, tol<float>(8.0 * C), "layer_norm out");
        require_close(vec(mean), want_mean, tol<float>(4.0 * C), "layer_norm mean");
        require_close(vec(rstd), want_rstd, tol<float>(8.0 * C), "layer_norm rstd");

        auto want_dx = vec(dx), want_dw = vec(dw), want_db = vec(db);
        ref::layer_norm_backward(want_dx.data(), want_dw.data(), want_db.data(), dout.data(),
                                 x.data(), weight.data(), want_mean.data(), want_rstd.data(), rows,
                                 C);
        ops::layer_norm_backward(dx, dw.view(), db, dout, x, std::as_const(weight).view(), mean,
                                 rstd);
        require_close(vec(dx), want_dx, tol<float>(16.0 * C), "layer_norm_backward dx");
        require_close(vec(dw), want_dw, tol<float>(16.0 * (rows + 1)), "layer_norm_backward dw");
        require_close(vec(db), want_db, tol<float>(8.0 * (rows + 1)), "layer_norm_backward db");
    };
    using D1 = dynamic_shape<1>;
    using D2 = dynamic_shape<2>;
    for (std::size_t C : {1, 5, 17, 33}) {
        auto x = randn_buffer<D2>(40, 2.0, 3, C);
        auto weight = randn_buffer<D1>(41, 1.0, C), bias = randn_buffer<D1>(42, 1.0, C);
        buffer<float, D2> out(3, C);
        buffer<float, D1> mean(3), rstd(3);
        auto dx = randn_buffer<D2>(43, 1.0, 3, C), dout = randn_buffer<D2>(44, 1.0, 3, C);
        auto dw = randn_buffer<D1>(45, 1.0, C), db = randn_buffer<D1>(46, 1.0, C);
        run(x, weight, bias, out, mean, rstd, dx, dw, db, dout);
    }
    // static C, dynamic rows
    using R = shape<dynamic, 17>;
    auto x = randn_buffer<R>(50, 2.0, 3, 17);
    auto weight = randn_buffer<shape<17>>(51, 1.0, 17), bias = randn_buffer<shape<17>>(52, 1.0, 17);
    buffer<float, R> out(3, 17);
    buffer<float, shape<3>> mean, rstd;
    auto dx = randn_buffer<R>(53, 1.0, 3, 17);
    auto dout = randn_buffer<D2>(54, 1.0, 3, 17);
    auto dw = randn_buffer<shape<17>>(55, 1.0, 17);
    auto db = randn_buffer<D1>(56, 1.0, 17);
    run(x, weight, bias, out, mean, rstd, dx, dw, db, dout);
}

// ---------------------------------------------------------------------------------------------
// Attention softmax

TEST_CASE("ops::masked_softmax (with and without a mask) and its backward match the reference",
          "[ops]") {
    const float scale = 0.37f;
    const float ninf = -std::numeric_limits<float>::infinity();
    for (std::size_t Tk : {5, 17}) {
        const std::size_t B = 3, H = 2, Tq = 3;
        INFO("Tk=" << Tk);
        using S4 = dynamic_shape<4>;
        auto scores = randn_buffer<S4>(60, 2.0, B, H, Tq, Tk);
        buffer<float, shape<dynamic, dynamic>> mask(B, Tk);
        set(mask, test::randn<float>(B * Tk, 61));
        mask(0, 1) = ninf;
        mask(0, Tk - 1) = -1e4f;
        for (std::size_t k = 0; k < Tk; ++k) mask(2, k) = ninf;  // all keys masked: zeros
        const std::size_t n = scores.size();

        buffer<float, S4> probs(B, H, Tq, Tk);
        std::vector<float> want(n);
        ref::softmax_forward(want.data(), scores.data(), mask.data(), scale, B, H, Tq, Tk);
        ops::masked_softmax(probs, std::as_const(scores).view(), mask, scale);
        require_close(vec(probs), want, tol<float>(16.0 * Tk), "masked_softmax");
        for (std::size_t i = 0; i < n / 3; ++i) REQUIRE(probs.data()[2 * n / 3 + i] == 0.0f);

        buffer<float, S4> probs_nomask(B, H, Tq, Tk);
        std::vector<float> want_nomask(n);
        ref::softmax_forward(want_nomask.data(), scores.data(), static_cast<const float*>(nullptr),
                             scale, B, H, Tq, Tk);
        ops::masked_softmax(probs_nomask.view(), scores, scale);
        require_close(vec(probs_nomask), want_nomask, tol<float>(16.0 * Tk),
                      "masked_softmax without mask");

        auto dprobs = randn_buffer<S4>(62, 1.0, B, H, Tq, Tk);
        auto dscores = randn_buffer<S4>(63, 1.0, B, H, Tq, Tk);  // accumulates
        auto want_ds = vec(dscores);
        ref::softmax_backward(want_ds.data(), probs_nomask.data(), dprobs.data(), scale, B * H * Tq,
                              Tk);
        ops::masked_softmax_backward(dscores, std::as_const(probs_nomask).view(), dprobs, scale);
        require_close(vec(dscores), want_ds, tol<float>(16.0 * Tk), "masked_softmax_backward");

        // through the dropout of the probabilities, in one pass (dscores written): against the
        // reference's dropout_backward then softmax_backward, each onto zeros
        buffer<std::uint8_t, S4> keep(B, H, Tq, Tk);
        for (std::size_t i = 0; i < n; ++i) keep.data()[i] = i % 3 != 0;
        std::vector<float> g(n, 0.0f), want_fused(n, 0.0f);
        ref::dropout_backward(g.data(), keep.data(), dprobs.data(), 0.1f, n);
        ref::softmax_backward(want_fused.data(), probs_nomask.data(), g.data(), scale, B * H * Tq,
                              Tk);
        auto fused = randn_buffer<S4>(64, 1.0, B, H, Tq, Tk);  // overwritten
        ops::masked_softmax_dropout_backward(fused, std::as_const(probs_nomask).view(), dprobs,
                                             std::as_const(keep).view(), 0.1f, scale);
        require_close(vec(fused), want_fused, tol<float>(16.0 * Tk),
                      "masked_softmax_dropout_backward");
        // accumulate = false: what accumulating onto zeros gives
        std::vector<float> onto_zeros(n, 0.0f);
        ref::softmax_backward(onto_zeros.data(), probs_nomask.data(), dprobs.data(), scale,
                              B * H * Tq, Tk);
        auto written = randn_buffer<S4>(65, 1.0, B, H, Tq, Tk);
        ops::masked_softmax_backward(written, std::as_const(probs_nomask).view(), dprobs, scale,
                                     false);
        require_close(vec(written), onto_zeros, tol<float>(16.0 * Tk),
                      "masked_softmax_backward written");
    }
    // static head and key extents
    using S = shape<dynamic, 2, dynamic, 17>;
    auto scores = randn_buffer<S>(64, 2.0, 2, 2, 3, 17);
    auto mask = randn_buffer<shape<dynamic, 17>>(65, 1.0, 2, 17);
    buffer<float, S> probs(2, 2, 3, 17);
    std::vector<float> want(probs.size());
    ref::softmax_forward(want.data(), scores.data(), mask.data(), scale, 2, 2, 3, 17);
    ops::masked_softmax(probs, scores, mask, scale);
    require_close(vec(probs), want, tol<float>(16.0 * 17), "masked_softmax static");
    auto dprobs = randn_buffer<dynamic_shape<4>>(66, 1.0, 2, 2, 3, 17);
    auto dscores = randn_buffer<S>(67, 1.0, 2, 2, 3, 17);
    auto want_ds = vec(dscores);
    ref::softmax_backward(want_ds.data(), probs.data(), dprobs.data(), scale, 2 * 2 * 3, 17);
    ops::masked_softmax_backward(dscores, probs, dprobs, scale);
    require_close(vec(dscores), want_ds, tol<float>(16.0 * 17), "masked_softmax_backward static");
}

// ---------------------------------------------------------------------------------------------
// Dropout

TEST_CASE("ops::dropout and ops::dropout_backward match the reference", "[ops]") {
    for (auto [rows, cols, p] : {std::tuple<std::size_t, std::size_t, float>{3, 5, 0.3f},
                                 {3, 17, 0.5f},
                                 {5, 33, 0.1f},
                                 {3, 17, 0.0f},
                                 {3, 17, 1.0f}}) {
        INFO("rows=" << rows << " cols=" << cols << " p=" << p);
        const ftune::random_stream s(1234, 7);
        auto x = randn_buffer<dynamic_shape<2>>(70, 1.0, rows, cols);
        buffer<float, dynamic_shape<2>> y(rows, cols);
        buffer<std::uint8_t, dynamic_shape<2>> mask(rows, cols);
        const std::size_t n = x.size();
        std::vector<float> want(n);
        std::vector<std::uint8_t> want_mask(n);
        ref::dropout_forward(want.data(), want_mask.data(), x.data(), p, n, s);
        ops::dropout(y, mask.view(), std::as_const(x).view(), p, s);
        CHECK(vec(mask) == want_mask);
        require_close(vec(y), want, tol<float>(2), "dropout");

        auto dy = randn_buffer<dynamic_shape<2>>(71, 1.0, rows, cols);
        auto dx = randn_buffer<dynamic_shape<2>>(72, 1.0, rows, cols);  // accumulates
        auto want_dx = vec(dx);
        ref::dropout_backward(want_dx.data(), want_mask.data(), dy.data(), p, n);
        ops::dropout_backward(dx, std::as_const(mask).view(), dy, p);
        require_close(vec(dx), want_dx, tol<float>(2), "dropout_backward");
    }
    // mixed static/dynamic, rank 3 (B, T, C)
    using S = shape<dynamic, 3, 17>;
    const ftune::random_stream s(99, 3);
    auto x = randn_buffer<S>(73, 1.0, 2, 3, 17);
    buffer<float, dynamic_shape<3>> y(2, 3, 17);
    buffer<std::uint8_t, S> mask(2, 3, 17);
    std::vector<float> want(x.size());
    std::vector<std::uint8_t> want_mask(x.size());
    ref::dropout_forward(want.data(), want_mask.data(), x.data(), 0.25f, x.size(), s);
    ops::dropout(y, mask, x, 0.25f, s);
    CHECK(vec(mask) == want_mask);
    require_close(vec(y), want, tol<float>(2), "dropout rank 3");
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST_CASE("ops::embedding and ops::embedding_backward match the reference", "[ops]") {
    const std::vector<token_id> id_values{3, 0, 10, 3, 7, 3, 1};  // repeats add up in backward
    for (std::size_t C : {1, 5, 17}) {
        INFO("C=" << C);
        const std::size_t vocab = 11, n = id_values.size();
        auto table = randn_buffer<dynamic_shape<2>>(80, 1.0, vocab, C);
        buffer<token_id, dynamic_shape<1>> ids(n);
        set(ids, id_values);
        buffer<float, dynamic_shape<2>> out(n, C);
        std::vector<float> want(n * C);
        ref::embedding_forward(want.data(), ids.data(), table.data(), n, C, vocab);
        ops::embedding(out, std::as_const(ids).view(), std::as_const(table).view());
        require_close(vec(out), want, 0.0, "embedding");

        auto dout = randn_buffer<dynamic_shape<2>>(81, 1.0, n, C);
        auto dtable = randn_buffer<dynamic_shape<2>>(82, 1.0, vocab, C);  // accumulates
        auto want_dt = vec(dtable);
        ref::embedding_backward(want_dt.data(), ids.data(), dout.data(), n, C, vocab);
        ops::embedding_backward(dtable.view(), ids, std::as_const(dout).view());
        require_close(vec(dtable), want_dt, tol<float>(4.0 * (n + 1)), "embedding_backward");
    }
    // static C and vocab
    auto table = randn_buffer<shape<11, 17>>(83, 1.0, 11, 17);
    buffer<token_id, shape<7>> ids;
    set(ids, id_values);
    buffer<float, shape<dynamic, 17>> out(7, 17);
    std::vector<float> want(7 * 17);
    ref::embedding_forward(want.data(), ids.data(), table.data(), 7, 17, 11);
    ops::embedding(out, ids, table);
    require_close(vec(out), want, 0.0, "embedding static");
    buffer<float, shape<11, 17>> dtable;
    ops::embedding_backward(dtable, ids, out);
    std::vector<float> want_dt(11 * 17);
    ref::embedding_backward(want_dt.data(), ids.data(), out.data(), 7, 17, 11);
    require_close(vec(dtable), want_dt, tol<float>(32), "embedding_backward static");
    // an id outside the table throws out_of_range before any write
    ids(4) = 11;
    CHECK_THROWS_AS(ops::embedding_backward(dtable, ids, out), ftune::error);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST_CASE("ops::cross_entropy and ops::cross_entropy_backward match the reference", "[ops]") {
    for (std::size_t V : {5, 17}) {
        for (token_id ignore : {token_id(-100), token_id(-1), token_id(2)}) {
            INFO("V=" << V << " ignore_index=" << ignore);
            const std::size_t rows = 5;
            auto logits = randn_buffer<shape<dynamic, dynamic>>(90, 3.0, rows, V);
            buffer<token_id, dynamic_shape<1>> targets(rows);
            set(targets,
                std::vector<token_id>{0, token_id(V - 1), ignore, 2, ignore == 2 ? 3 : ignore});
            buffer<float, dynamic_shape<1>> losses(rows);
            std::vector<float> want(rows);
            const std::size_t want_count = ref::cross_entropy_forward(
                want.data(), logits.data(), targets.data(), rows, V, ignore);
            const std::size_t count =
                ops::cross_entropy(losses, std::as_const(logits).view(), targets, ignore);
            CHECK(count == want_count);
            require_close(vec(losses), want, tol<float>(32.0 * V), "cross_entropy");

            buffer<float, dynamic_shape<1>> dlosses(rows);
            set(dlosses, test::randu<float>(rows, 91, -1.0, 2.0));
            auto dlogits = randn_buffer<dynamic_shape<2>>(92, 1.0, rows, V);  // accumulates
            auto want_dz = vec(dlogits);
            ref::cross_entropy_backward(want_dz.data(), logits.data(), targets.data(),
                                        dlosses.data(), rows, V, ignore);
            ops::cross_entropy_backward(dlogits, logits, std::as_const(targets).view(), dlosses,
                                        ignore);
            require_close(vec(dlogits), want_dz, tol<float>(32.0 * V), "cross_entropy_backward");
        }
    }
    // default ignore index, static vocabulary
    auto logits = randn_buffer<shape<dynamic, 17>>(93, 3.0, 3, 17);
    buffer<token_id, shape<3>> targets;
    set(targets, std::vector<token_id>{16, -100, 4});
    buffer<float, shape<3>> losses, dlosses;
    set(dlosses, std::vector<float>{0.5f, 2.0f, -1.0f});
    std::vector<float> want(3);
    CHECK(ops::cross_entropy(losses, logits, targets) ==
          ref::cross_entropy_forward(want.data(), logits.data(), targets.data(), 3, 17));
    require_close(vec(losses), want, tol<float>(32.0 * 17), "cross_entropy default ignore");
    buffer<float, shape<3, 17>> dlogits;
    std::vector<float> want_dz(3 * 17);
    ref::cross_entropy_backward(want_dz.data(), logits.data(), targets.data(), dlosses.data(), 3,
                                17);
    ops::cross_entropy_backward(dlogits, logits, targets, dlosses);
    require_close(vec(dlogits), want_dz, tol<float>(32.0 * 17), "cross_entropy_backward default");
}

// ---------------------------------------------------------------------------------------------
// Optimizers

TEST_CASE("ops::adamw_update matches the reference over several steps", "[ops]") {
    using S = shape<dynamic, 17>;
    auto param = randn_buffer<S>(100, 1.0, 3, 17);
    auto m = randn_buffer<dynamic_shape<2>>(101, 0.1, 3, 17);
    buffer<float, shape<3, 17>> v;
    set(v, test::randu<float>(v.size(), 102, 0.0, 0.5));
    auto want_p = vec(param), want_m = vec(m), want_v = vec(v);
    ftune::adamw_params h;
    h.lr = 3e-2;
    h.weight_decay = 0.1;
    h.beta1 = 0.8;
    h.beta2 = 0.95;
    h.eps = 1e-6;
    for (std::size_t step = 1; step <= 3; ++step) {
        INFO("step " << step);
        h.step = step;
        auto grad = randn_buffer<dynamic_shape<2>>(103 + step, 1.0, 3, 17);
        ref::adamw_update(want_p.data(), grad.data(), want_m.data(), want_v.data(), want_p.size(),
                          h);
        ops::adamw_update(param, std::as_const(grad).view(), m.view(), v, h);
        require_close(vec(param), want_p, tol<float>(8), "adamw param");
        require_close(vec(m), want_m, tol<float>(8), "adamw m");
        require_close(vec(v), want_v, tol<float>(8), "adamw v");
    }
}

TEST_CASE("ops::sgd_update matches the reference, with and without momentum", "[ops]") {
    using D2 = dynamic_shape<2>;
    SECTION("no momentum: the buffer may be an empty view") {
        auto param = randn_buffer<shape<dynamic, 5>>(110, 1.0, 3, 5);
        auto grad = randn_buffer<D2>(111, 1.0, 3, 5);
        auto want = vec(param);
        ftune::sgd_params h;
        h.lr = 0.1;
        h.weight_decay = 0.05;
        ref::sgd_update(want.data(), grad.data(), static_cast<float*>(nullptr), want.size(), h);
        ops::sgd_update(param, grad, ftune::view<float, D2>{}, h);
        require_close(vec(param), want, tol<float>(8), "sgd param");
    }
    SECTION("momentum, dampening, Nesterov, first step then later steps") {
        for (bool nesterov : {false, true}) {
            INFO("nesterov=" << nesterov);
            auto param = randn_buffer<D2>(112, 1.0, 3, 17);
            buffer<float, shape<3, 17>> buf;
            auto want_p = vec(param), want_buf = vec(buf);
            ftune::sgd_params h;
            h.lr = 0.05;
            h.momentum = 0.9;
            h.dampening = 0.1;
            h.weight_decay = 0.01;
            h.nesterov = nesterov;
            for (int step = 0; step < 3; ++step) {
                INFO("step " << step);
                h.first_step = step == 0;
                auto grad = randn_buffer<shape<dynamic, 17>>(113 + step, 1.0, 3, 17);
                ref::sgd_update(want_p.data(), grad.data(), want_buf.data(), want_p.size(), h);
                ops::sgd_update(param.view(), std::as_const(grad).view(), buf, h);
                require_close(vec(param), want_p, tol<float>(8), "sgd param");
                require_close(vec(buf), want_buf, tol<float>(8), "sgd momentum buffer");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Runtime shape mismatches of the new wrappers

TEST_CASE("ops: the backward and optimizer wrappers throw ftune::error on shape mismatches",
          "[ops]") {
    using D1 = dynamic_shape<1>;
    using D2 = dynamic_shape<2>;
    using D4 = dynamic_shape<4>;
    SECTION("layer_norm_backward: weight has C + 1 elements, names both shapes") {
        buffer<float, D2> dx(3, 17), x(3, 17), dout(3, 17);
        buffer<float, D1> dw(17), db(17), weight(18), mean(3), rstd(3);
        try {
            ops::layer_norm_backward(dx, dw, db, dout, x, weight, mean, rstd);
            FAIL("no throw");
        } catch (const ftune::error& e) {
            CHECK(e.id() == ftune::errc::shape_mismatch);
            const std::string w = e.what();
            INFO(w);
            CHECK(w.find("[3, 17]") != std::string::npos);
            CHECK(w.find("[18]") != std::string::npos);
        }
        buffer<float, D1> rstd2(2);
        CHECK_THROWS_AS(ops::layer_norm_backward(dx, dw, db, dout, x, dw, mean, rstd2),
                        ftune::error);
    }
    SECTION("masked_softmax without mask, and masked_softmax_backward") {
        buffer<float, D4> probs(2, 2, 3, 17), scores(2, 2, 3, 5), dprobs(2, 2, 3, 5);
        CHECK_THROWS_AS(ops::masked_softmax(probs, scores, 1.0f), ftune::error);
        CHECK_THROWS_AS(ops::masked_softmax_backward(probs, probs, dprobs, 1.0f), ftune::error);
        CHECK_THROWS_AS(ops::masked_softmax_backward(dprobs, probs, probs, 1.0f), ftune::error);
        buffer<std::uint8_t, D4> keep(2, 2, 3, 5), keep17(2, 2, 3, 17);
        buffer<float, D4> ds(2, 2, 3, 17), dp17(2, 2, 3, 17);
        CHECK_THROWS_AS(ops::masked_softmax_dropout_backward(ds, probs, dp17, keep, 0.1f, 1.0f),
                        ftune::error);  // keep's shape
        CHECK_THROWS_AS(ops::masked_softmax_dropout_backward(ds, probs, dprobs, keep17, 0.1f, 1.0f),
                        ftune::error);  // dprobs' shape
        CHECK_THROWS_AS(
            ops::masked_softmax_dropout_backward(dprobs, probs, dp17, keep17, 0.1f, 1.0f),
            ftune::error);  // dscores' shape
    }
    SECTION("dropout and dropout_backward") {
        buffer<float, D2> x(3, 17), y(3, 17);
        buffer<std::uint8_t, D2> mask(3, 5);
        CHECK_THROWS_AS(ops::dropout(y, mask, x, 0.1f, ftune::random_stream(1, 2)), ftune::error);
        CHECK_THROWS_AS(ops::dropout_backward(y, mask, x, 0.1f), ftune::error);
    }
    SECTION("embedding_backward") {
        buffer<float, D2> dtable(11, 17), dout(7, 5);
        buffer<token_id, D1> ids(7);
        CHECK_THROWS_AS(ops::embedding_backward(dtable, ids, dout), ftune::error);
        buffer<float, D2> dout2(6, 17);
        CHECK_THROWS_AS(ops::embedding_backward(dtable, ids, dout2), ftune::error);
    }
    SECTION("cross_entropy_backward") {
        buffer<float, D2> logits(5, 17), dlogits(5, 16);
        buffer<token_id, D1> targets(5);
        buffer<float, D1> dlosses(5), dlosses4(4);
        CHECK_THROWS_AS(ops::cross_entropy_backward(dlogits, logits, targets, dlosses),
                        ftune::error);
        CHECK_THROWS_AS(ops::cross_entropy_backward(logits, logits, targets, dlosses4),
                        ftune::error);
    }
    SECTION("adamw_update") {
        buffer<float, D2> p(3, 17), g(3, 17), m(3, 17), v(17, 3);
        CHECK_THROWS_AS(ops::adamw_update(p, g, m, v, ftune::adamw_params{}), ftune::error);
    }
    SECTION("sgd_update: the buffer is checked only when momentum is not 0") {
        buffer<float, D2> p(3, 17), g(3, 17), g2(3, 5);
        ftune::sgd_params h;
        CHECK_THROWS_AS(ops::sgd_update(p, g2, ftune::view<float, D2>{}, h), ftune::error);
        CHECK_NOTHROW(ops::sgd_update(p, g, ftune::view<float, D2>{}, h));
        h.momentum = 0.9;
        CHECK_THROWS_AS(ops::sgd_update(p, g, ftune::view<float, D2>{}, h), ftune::error);
        buffer<float, D1> flat(3 * 17);  // any layout with one element per parameter will do
        CHECK_NOTHROW(ops::sgd_update(p, g, flat, h));
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatch on the device tag, and attention's per-head products

TEST_CASE("ops dispatch on the tensors' device: device::reference runs the reference backend",
          "[ops]") {
    using R = ftune::device::reference;
    namespace cpu = ftune::backends::cpu;
    const std::size_t M = 7, N = 45, K = 300;
    const auto a = test::randn<float>(M * K, 50), b = test::randn<float>(K * N, 51);
    buffer<float, dynamic_shape<2>, R> ar(M, K), br(K, N), cr(M, N);
    set(ar, a), set(br, b);
    buffer<float, dynamic_shape<2>> ac(M, K), bc(K, N), cc(M, N);
    set(ac, a), set(bc, b);
    // the CPU backend counts its GEMM calls (each packs B): the reference device leaves the
    // count alone, device::cpu adds one
    auto& calls = cpu::packing_stats().per_call;
    const auto before = calls.load();
    ops::matmul(ar, br, cr);
    CHECK(calls.load() == before);
    ops::matmul(ac, bc, cc);
    CHECK(calls.load() == before + 1);
    std::vector<float> want(M * N);
    ref::gemm(transpose::no, transpose::no, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f,
              want.data(), N);
    require_close(vec(cr), want, tol<float>(16.0 * K), "matmul on device::reference");
    require_close(vec(cc), want, tol<float>(16.0 * K), "matmul on device::cpu");
    // an element-wise primitive and a reduction through the same dispatch
    buffer<float, dynamic_shape<2>, R> g(M, N);
    set(g, test::randn<float>(M * N, 52));
    want = vec(g);
    ref::gelu_forward(want.data(), want.data(), want.size());
    ops::activate(ops::activation::gelu, g, g);
    require_close(vec(g), want, tol<float>(16.0), "gelu on device::reference");
    double sq = 0;
    for (float v : want) sq += double(v) * v;
    CHECK(std::abs(ops::sum_squares(g) - sq) <= 1e-9 * sq);
}

TEST_CASE(
    "ops::matmul_prepared with apply_activation: the activation on each tile as it is stored "
    "equals matmul, bias_add and activate after it, bit for bit (CPU in fp32 and bf16, reference "
    "device)",
    "[ops]") {
    using D2 = dynamic_shape<2>;
    struct restore {  // the thread count of the other cases, however this one ends
        int threads = ftune::num_threads();
        ~restore() { ftune::set_num_threads(threads); }
    } restore_threads;
    const bool bf16_here = ftune::backends::cpu::bf16_supported();
    if (!bf16_here) WARN("bf16 not checked: this CPU has no AVX512-BF16");
    // partial register tiles (rows, columns), one and several depth blocks
    for (auto [M, N, K] : {std::tuple<std::size_t, std::size_t, std::size_t>{1, 5, 3},
                           {13, 50, 70},
                           {128, 1536, 384},
                           {37, 97, 1000}})
        for (auto f : {ops::activation::gelu, ops::activation::gelu_tanh, ops::activation::tanh,
                       ops::activation::relu, ops::activation::silu})
            for (int t : {1, 2}) {
                ftune::set_num_threads(t);
                INFO("M=" << M << " N=" << N << " K=" << K << " f=" << int(f) << " threads=" << t);
                const auto x = randn_buffer<D2>(M + N, 1.0, M, K);
                const auto w = randn_buffer<D2>(M * N + 1, 0.1, N, K);
                const auto b = randn_buffer<dynamic_shape<1>>(K, 1.0, N);
                for (auto p : {ftune::precision::fp32, ftune::precision::bf16}) {
                    if (p == ftune::precision::bf16 && !bf16_here) continue;
                    INFO("bf16=" << (p == ftune::precision::bf16));
                    ops::prepared_weight<float> pw;
                    ops::prepare_weight(pw, w, p);
                    buffer<float, D2> want(M, N), got(M, N);
                    ops::matmul_prepared(x, pw, want, b);  // the product, then f over it
                    ops::activate(f, want, want);
                    ops::matmul_prepared(x, pw, got, b, ops::apply_activation{f});
                    REQUIRE(vec(got) == vec(want));
                    if (p == ftune::precision::fp32) {  // and the unprepared path's values
                        buffer<float, D2> plain(M, N);
                        ops::matmul<transpose::no, transpose::yes>(x, w, plain);
                        ops::bias_add(plain, b);
                        ops::activate(f, plain, plain);
                        REQUIRE(vec(got) == vec(plain));
                    }
                }
                if (t != 1 || M * N * K > 1'000'000) continue;  // the reference loops are slow
                // the reference device: its product's epilogue over the whole C
                using R = ftune::device::reference;
                buffer<float, D2, R> xr(M, K), wr(N, K), yr(M, N), yw(M, N);
                buffer<float, dynamic_shape<1>, R> br(N);
                set(xr, vec(x)), set(wr, vec(w)), set(br, vec(b));
                ops::matmul<transpose::no, transpose::yes>(xr, wr, yw);
                ops::bias_add(yw, br);
                ops::activate(f, yw, yw);
                ops::prepared_weight<float, R> pr;
                ops::prepare_weight(pr, wr);
                ops::matmul_prepared(xr, pr, yr, br, ops::apply_activation{f});
                REQUIRE(vec(yr) == vec(yw));
            }
}

TEST_CASE("ops::head_scores and ops::head_context: per-head products of interleaved heads",
          "[ops]") {
    const std::size_t B = 2, H = 3, Tn = 5, d = 4, Cn = H * d;
    auto q = randn_buffer<dynamic_shape<2>>(60, 1.0, B * Tn, Cn);
    auto k = randn_buffer<dynamic_shape<2>>(61, 1.0, B * Tn, Cn);
    auto p = randn_buffer<dynamic_shape<4>>(62, 1.0, B, H, Tn, Tn);
    buffer<float, dynamic_shape<4>> s(B, H, Tn, Tn);
    buffer<float, dynamic_shape<2>> out(B * Tn, Cn), out_t(B * Tn, Cn);
    ops::head_scores(s, q, k);
    ops::head_context(out, p, k);
    ops::head_context<transpose::yes>(out_t, p, k);
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t h = 0; h < H; ++h)
            for (std::size_t i = 0; i < Tn; ++i)
                for (std::size_t j = 0; j < Tn; ++j) {  // S = Q_bh K_bhᵀ
                    double want = 0;
                    for (std::size_t c = 0; c < d; ++c)
                        want += double(q.data()[(b * Tn + i) * Cn + h * d + c]) *
                                k.data()[(b * Tn + j) * Cn + h * d + c];
                    REQUIRE(std::abs(s.data()[((b * H + h) * Tn + i) * Tn + j] - want) < 1e-5);
                }
    for (std::size_t b = 0; b < B; ++b)
        for (std::size_t h = 0; h < H; ++h)
            for (std::size_t i = 0; i < Tn; ++i)
                for (std::size_t c = 0; c < d; ++c) {  // P K and Pᵀ K into head h's columns
                    double want = 0, want_t = 0;
                    for (std::size_t j = 0; j < Tn; ++j) {
                        const double kv = k.data()[(b * Tn + j) * Cn + h * d + c];
                        want += p.data()[((b * H + h) * Tn + i) * Tn + j] * kv;
                        want_t += p.data()[((b * H + h) * Tn + j) * Tn + i] * kv;
                    }
                    REQUIRE(std::abs(out.data()[(b * Tn + i) * Cn + h * d + c] - want) < 1e-5);
                    REQUIRE(std::abs(out_t.data()[(b * Tn + i) * Cn + h * d + c] - want_t) < 1e-5);
                }
    buffer<float, dynamic_shape<4>> wrong(B, H, Tn + 1, Tn);
    CHECK_THROWS_AS(ops::head_scores(wrong, q, k), ftune::error);
    buffer<float, dynamic_shape<4>> five_heads(B, 5, Tn, Tn);  // 5 does not divide 12
    CHECK_THROWS_AS(ops::head_scores(five_heads, q, k), ftune::error);
    CHECK_THROWS_AS(ops::head_context(out, wrong, k), ftune::error);
}
