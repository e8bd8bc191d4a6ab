// Every backward primitive of the CPU backend checked against central differences in double with
// ftune::testing::check_gradients (loss = Σ R ⊙ output for a fixed random R, so d output = R),
// and the checker itself shown to catch wrong and overwriting backward passes.
#include <ftune/backends/cpu/primitives.hpp>
#include <ftune/testing/check_gradients.hpp>

#include <numeric>

#include "util.hpp"

namespace cpu = ftune::backends::cpu;
using ftune::testing::check_gradients;
using ftune::testing::gradient_target;

namespace {
// Σ r ⊙ y.
double dot(const std::vector<double>& r, const std::vector<double>& y) {
    return std::inner_product(r.begin(), r.end(), y.begin(), 0.0);
}
// Runs the checker and reports its findings on failure.
template <class L, class Bw>
void require_gradients(std::vector<gradient_target> targets, L&& loss, Bw&& backward) {
    const auto res = check_gradients(std::span<gradient_target>(targets), loss, backward);
    INFO(res.report);
    CHECK(res.checked > 0);
    REQUIRE(res.ok);
}
}  // namespace

TEST_CASE("gradcheck: GELU (erf and tanh) and tanh", "[gradcheck]") {
    const std::size_t n = 37;
    auto x = test::randn<double>(n, 1, 2.0), r = test::randn<double>(n, 2);
    std::vector<double> y(n), dx(n);
    using F = void (*)(double*, const double*, std::size_t);
    using G = void (*)(double*, const double*, const double*, std::size_t, bool);
    const std::pair<F, G> fns[] = {
        {cpu::gelu_forward<double>, cpu::gelu_backward<double>},
        {cpu::gelu_tanh_forward<double>, cpu::gelu_tanh_backward<double>}};
    for (auto [f, g] : fns)
        require_gradients(
            {{"x", x, dx}},
            [&] {
                f(y.data(), x.data(), n);
                return dot(r, y);
            },
            [&] { g(dx.data(), x.data(), r.data(), n, false); });
    require_gradients(
        {{"x", x, dx}},
        [&] {
            cpu::tanh_forward(y.data(), x.data(), n);
            return dot(r, y);
        },
        [&] { cpu::tanh_backward(dx.data(), y.data(), r.data(), n); });
}

TEST_CASE("gradcheck: layer norm (input, weight, bias)", "[gradcheck]") {
    const std::size_t rows = 5, C = 19;
    auto x = test::randn<double>(rows * C, 3, 2.0), w = test::randn<double>(C, 4),
         b = test::randn<double>(C, 5), r = test::randn<double>(rows * C, 6);
    std::vector<double> y(rows * C), mean(rows), rstd(rows), dx(rows * C), dw(C), db(C);
    require_gradients(
        {{"x", x, dx}, {"weight", w, dw}, {"bias", b, db}},
        [&] {
            cpu::layer_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                    b.data(), rows, C, 1e-5);
            return dot(r, y);
        },
        [&] {
            cpu::layer_norm_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(),
                                     mean.data(), rstd.data(), rows, C);
        });
}

TEST_CASE("gradcheck: masked scaled softmax", "[gradcheck]") {
    const std::size_t B = 2, H = 2, Tq = 3, Tk = 11, n = B * H * Tq * Tk;
    auto s = test::randn<double>(n, 7), r = test::randn<double>(n, 8);
    std::vector<double> mask(B * Tk, 0.0), p(n), ds(n);
    for (std::size_t k = 7; k < Tk; ++k) mask[Tk + k] = -10000.0;  // batch 1 has 7 keys
    require_gradients(
        {{"scores", s, ds}},
        [&] {
            cpu::softmax_forward(p.data(), s.data(), mask.data(), 0.3, B, H, Tq, Tk);
            return dot(r, p);
        },
        [&] { cpu::softmax_backward(ds.data(), p.data(), r.data(), 0.3, B * H * Tq, Tk); });
}

TEST_CASE("gradcheck: masked scaled softmax followed by dropout (the fused backward)",
          "[gradcheck]") {
    const std::size_t B = 2, H = 2, Tq = 3, Tk = 11, n = B * H * Tq * Tk;
    auto s = test::randn<double>(n, 17), r = test::randn<double>(n, 18);
    std::vector<double> mask(B * Tk, 0.0), p(n), y(n), ds(n);
    for (std::size_t k = 7; k < Tk; ++k) mask[Tk + k] = -10000.0;  // batch 1 has 7 keys
    std::vector<std::uint8_t> keep(n);
    for (std::size_t i = 0; i < n; ++i) keep[i] = i % 4 != 1;  // a fixed dropout mask
    const double p_drop = 0.25, keep_scale = 1.0 / (1.0 - p_drop);
    require_gradients(
        {{"scores", s, ds}},
        [&] {
            cpu::softmax_forward(p.data(), s.data(), mask.data(), 0.3, B, H, Tq, Tk);
            for (std::size_t i = 0; i < n; ++i) y[i] = keep[i] ? p[i] * keep_scale : 0.0;
            return dot(r, y);
        },
        [&] {
            cpu::softmax_backward(ds.data(), p.data(), r.data(), 0.3, B * H * Tq, Tk, keep.data(),
                                  keep_scale);  // accumulating (the checker requires it)
        });
}

TEST_CASE("gradcheck: cross-entropy with an ignored row", "[gradcheck]") {
    const std::size_t rows = 4, V = 9;
    auto z = test::randn<double>(rows * V, 9, 3.0), w = test::randn<double>(rows, 10);
    const std::vector<ftune::token_id> t{3, -100, 0, 8};
    std::vector<double> l(rows), dz(rows * V);
    require_gradients(
        {{"logits", z, dz}},
        [&] {
            cpu::cross_entropy_forward(l.data(), z.data(), t.data(), rows, V);
            return dot(w, l);
        },
        [&] { cpu::cross_entropy_backward(dz.data(), z.data(), t.data(), w.data(), rows, V); });
}

TEST_CASE("gradcheck: GEMM with transposes, bias, embedding, dropout, residual", "[gradcheck]") {
    // y = op(A) op(B): dA = dy op(B)ᵀ, dB = op(A)ᵀ dy, each written as a GEMM with beta = 1
    const std::size_t M = 5, N = 7, K = 6;
    for (auto ta : {ftune::transpose::no, ftune::transpose::yes})
        for (auto tb : {ftune::transpose::no, ftune::transpose::yes}) {
            auto A = test::randn<double>(M * K, 11), Bm = test::randn<double>(K * N, 12),
                 r = test::randn<double>(M * N, 13);
            std::vector<double> y(M * N), dA(M * K), dB(K * N);
            const std::size_t lda = ta == ftune::transpose::no ? K : M,
                              ldb = tb == ftune::transpose::no ? N : K;
            using ftune::transpose;
            require_gradients(
                {{"A", A, dA}, {"B", Bm, dB}},
                [&] {
                    cpu::gemm(ta, tb, M, N, K, 1.0, A.data(), lda, Bm.data(), ldb, 0.0, y.data(),
                              N);
                    return dot(r, y);
                },
                [&] {
                    // dA (stored shape): no-trans (M,K) = r Bopᵀ; trans (K,M) = Bop rᵀ
                    if (ta == transpose::no)
                        cpu::gemm(transpose::no,
                                  tb == transpose::no ? transpose::yes : transpose::no, M, K, N,
                                  1.0, r.data(), N, Bm.data(), ldb, 1.0, dA.data(), K);
                    else
                        cpu::gemm(tb, transpose::yes, K, M, N, 1.0, Bm.data(), ldb, r.data(), N,
                                  1.0, dA.data(), M);
                    // dB (stored shape): no-trans (K,N) = Aopᵀ r; trans (N,K) = rᵀ Aop
                    if (tb == transpose::no)
                        cpu::gemm(ta == transpose::no ? transpose::yes : transpose::no,
                                  transpose::no, K, N, M, 1.0, A.data(), lda, r.data(), N, 1.0,
                                  dB.data(), N);
                    else
                        cpu::gemm(transpose::yes, ta, N, K, M, 1.0, r.data(), N, A.data(), lda, 1.0,
                                  dB.data(), K);
                });
        }
    // bias add and its backward
    const std::size_t rows = 4, C = 9;
    auto b = test::randn<double>(C, 14), base = test::randn<double>(rows * C, 15),
         r = test::randn<double>(rows * C, 16);
    std::vector<double> y(rows * C), db(C);
    require_gradients(
        {{"bias", b, db}},
        [&] {
            y = base;
            cpu::bias_add(y.data(), b.data(), rows, C);
            return dot(r, y);
        },
        [&] { cpu::bias_backward(db.data(), r.data(), rows, C); });
    // embedding gather and scatter-add with repeated ids
    const std::vector<ftune::token_id> ids{2, 0, 2, 3};
    auto table = test::randn<double>(5 * C, 17);
    std::vector<double> dtable(5 * C);
    require_gradients(
        {{"table", table, dtable}},
        [&] {
            cpu::embedding_forward(y.data(), ids.data(), table.data(), rows, C, 5);
            return dot(r, y);
        },
        [&] { cpu::embedding_backward(dtable.data(), ids.data(), r.data(), rows, C, 5); });
    // dropout with a fixed stream (the mask is the same on every forward)
    auto x = test::randn<double>(rows * C, 18);
    std::vector<double> dx(rows * C);
    std::vector<std::uint8_t> mask(rows * C);
    const ftune::random_stream s(3, 4);
    require_gradients(
        {{"x", x, dx}},
        [&] {
            cpu::dropout_forward(y.data(), mask.data(), x.data(), 0.3, rows * C, s);
            return dot(r, y);
        },
        [&] { cpu::dropout_backward(dx.data(), mask.data(), r.data(), 0.3, rows * C); });
    // residual add: d a = d b = dy
    auto a2 = test::randn<double>(rows * C, 19), b2 = test::randn<double>(rows * C, 20);
    std::vector<double> da(rows * C), dbb(rows * C);
    require_gradients(
        {{"a", a2, da}, {"b", b2, dbb}},
        [&] {
            cpu::residual_add(y.data(), a2.data(), b2.data(), rows * C);
            return dot(r, y);
        },
        [&] {
            for (std::size_t i = 0; i < rows * C; ++i) da[i] += r[i], dbb[i] += r[i];
        });
}

TEST_CASE("gradcheck: the checker catches a wrong and an overwriting backward", "[gradcheck]") {
    const std::size_t n = 8;
    auto x = test::randn<double>(n, 21), r = test::randn<double>(n, 22);
    std::vector<double> y(n), dx(n);
    std::vector<gradient_target> targets{{"x", x, dx}};
    auto loss = [&] {
        cpu::tanh_forward(y.data(), x.data(), n);
        return dot(r, y);
    };
    // a wrong derivative (1 - y instead of 1 - y²)
    auto wrong = check_gradients(std::span<gradient_target>(targets), loss, [&] {
        for (std::size_t i = 0; i < n; ++i) dx[i] += r[i] * (1 - y[i]);
    });
    CHECK_FALSE(wrong.ok);
    CHECK(wrong.report.find("x[") != std::string::npos);
    // the right derivative, assigned instead of accumulated
    auto overwrite = check_gradients(std::span<gradient_target>(targets), loss, [&] {
        for (std::size_t i = 0; i < n; ++i) dx[i] = r[i] * (1 - y[i] * y[i]);
    });
    CHECK_FALSE(overwrite.ok);
    CHECK(overwrite.report.find("does not accumulate") != std::string::npos);
    // and the right one, accumulated, passes
    auto right = check_gradients(std::span<gradient_target>(targets), loss,
                                 [&] { cpu::tanh_backward(dx.data(), y.data(), r.data(), n); });
    INFO(right.report);
    CHECK(right.ok);
    CHECK(right.checked == n);
}
