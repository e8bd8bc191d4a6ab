// Every CPU primitive against the reference backend, on sizes that are not multiples of the SIMD
// width, empty and one-row cases, in float and double, with tolerances scaled by the type.
#include <ftune/backends/cpu/primitives.hpp>
#include <ftune/backends/reference/primitives.hpp>

#include <cmath>
#include <limits>
#include <tuple>

#include "util.hpp"

namespace ref = ftune::backends::reference;
namespace cpu = ftune::backends::cpu;
using test::require_close;
using test::tol;

TEMPLATE_TEST_CASE("bias add, bias backward, residual add", "[primitives]", float, double) {
    using T = TestType;
    for (std::size_t cols : test::awkward_sizes())
        for (std::size_t rows : {0, 1, 3, 70}) {
            INFO("rows=" << rows << " cols=" << cols);
            auto y = test::randn<T>(rows * cols, 1), bias = test::randn<T>(cols, 2);
            auto y2 = y;
            ref::bias_add(y.data(), bias.data(), rows, cols);
            cpu::bias_add(y2.data(), bias.data(), rows, cols);
            require_close(y2, y, tol<T>(4), "bias_add");
            auto db = test::randn<T>(cols, 3), db2 = db;
            ref::bias_backward(db.data(), y.data(), rows, cols);
            cpu::bias_backward(db2.data(), y.data(), rows, cols);
            require_close(db2, db, tol<T>(8.0 * (rows + 1)), "bias_backward");
            auto other = test::randn<T>(rows * cols, 5);
            std::vector<T> out(rows * cols, T(0)), out2 = out;
            ref::residual_add(out.data(), y.data(), other.data(), rows * cols);
            cpu::residual_add(out2.data(), y.data(), other.data(), rows * cols);
            require_close(out2, out, tol<T>(2), "residual_add");
            auto inplace = y;  // out aliasing a
            cpu::residual_add(inplace.data(), inplace.data(), other.data(), rows * cols);
            require_close(inplace, out, tol<T>(2), "residual_add in place");
        }
}

TEST_CASE("float GELU: x Phi(x) within 3e-7 max(1, |x|) of libm's erf in double, special values",
          "[primitives]") {
    // a dense grid over [-12, 12] (Phi's rational approximation holds on +-5.6); 1.9e-7 with
    // FMA, 2.3e-7 at the baseline ISA (test_sanitized), where a multiply-add rounds twice
    const std::size_t n = 240001;
    std::vector<float> x(n), y(n);
    for (std::size_t i = 0; i < n; ++i) x[i] = -12.0f + 24.0f * float(i) / float(n - 1);
    cpu::gelu_forward(y.data(), x.data(), n);
    double worst = 0, at = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double v = x[i], want = v * 0.5 * (1.0 + std::erf(v / std::sqrt(2.0)));
        const double err = std::abs(double(y[i]) - want) / std::max(1.0, std::abs(v));
        if (err > worst) worst = err, at = v;
    }
    INFO("worst error " << worst << " at x = " << at);
    CHECK(worst < 3e-7);
    // far left exactly -0 (not a huge x times a tiny error), far right x, NaN and -inf give NaN
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> sx{-3e38f, -100.0f, -6.0f, 6.0f, 100.0f, 3e38f, inf, -inf, NAN, 0.0f},
        sy(sx.size());
    cpu::gelu_forward(sy.data(), sx.data(), sx.size());
    CHECK(sy[0] == 0.0f);
    CHECK(std::signbit(sy[0]));
    CHECK(sy[1] == 0.0f);
    CHECK(std::abs(sy[2]) < 1e-7f);
    CHECK(sy[3] == Approx(6.0f).epsilon(1e-6));
    CHECK(sy[4] == 100.0f);
    CHECK(sy[5] == Approx(3e38f).epsilon(1e-6));
    CHECK(sy[6] == inf);
    CHECK(std::isnan(sy[7]));
    CHECK(std::isnan(sy[8]));
    CHECK(sy[9] == 0.0f);
}

TEMPLATE_TEST_CASE("activations forward and backward (accumulating)", "[primitives]", float,
                   double) {
    using T = TestType;
    for (std::size_t n : test::awkward_sizes()) {
        INFO("n=" << n);
        auto x = test::randn<T>(n, 10, 3.0), dy = test::randn<T>(n, 11);
        std::vector<T> y(n), y2(n);
        auto dx = test::randn<T>(n, 12), dx2 = dx;
        // GELU (erf)
        ref::gelu_forward(y.data(), x.data(), n);
        cpu::gelu_forward(y2.data(), x.data(), n);
        require_close(y2, y, tol<T>(64), "gelu_forward");
        ref::gelu_backward(dx.data(), x.data(), dy.data(), n);
        cpu::gelu_backward(dx2.data(), x.data(), dy.data(), n);
        require_close(dx2, dx, tol<T>(64), "gelu_backward");
        // GELU (tanh)
        ref::gelu_tanh_forward(y.data(), x.data(), n);
        cpu::gelu_tanh_forward(y2.data(), x.data(), n);
        require_close(y2, y, tol<T>(64), "gelu_tanh_forward");
        ref::gelu_tanh_backward(dx.data(), x.data(), dy.data(), n);
        cpu::gelu_tanh_backward(dx2.data(), x.data(), dy.data(), n);
        require_close(dx2, dx, tol<T>(64), "gelu_tanh_backward");
        // tanh (backward from the output)
        ref::tanh_forward(y.data(), x.data(), n);
        cpu::tanh_forward(y2.data(), x.data(), n);
        require_close(y2, y, tol<T>(16), "tanh_forward");
        ref::tanh_backward(dx.data(), y.data(), dy.data(), n);
        cpu::tanh_backward(dx2.data(), y.data(), dy.data(), n);
        require_close(dx2, dx, tol<T>(64), "tanh_backward");
        // ReLU (exact)
        ref::relu_forward(y.data(), x.data(), n);
        cpu::relu_forward(y2.data(), x.data(), n);
        require_close(y2, y, T(0), "relu_forward");
        ref::relu_backward(dx.data(), x.data(), dy.data(), n);
        cpu::relu_backward(dx2.data(), x.data(), dy.data(), n);
        require_close(dx2, dx, tol<T>(64), "relu_backward");  // dx carries the error above
        // SiLU (the SIMD exp against std::exp)
        ref::silu_forward(y.data(), x.data(), n);
        cpu::silu_forward(y2.data(), x.data(), n);
        require_close(y2, y, tol<T>(64), "silu_forward");
        dx2 = dx;
        ref::silu_backward(dx.data(), x.data(), dy.data(), n);
        cpu::silu_backward(dx2.data(), x.data(), dy.data(), n);
        require_close(dx2, dx, tol<T>(64), "silu_backward");
    }
}

TEST_CASE("ReLU: max(x, 0) and a zero derivative at 0", "[primitives]") {
    double x[] = {-2.0, 0.0, 3.0}, y[3], dx[] = {1.0, 1.0, 1.0}, dy[] = {5.0, 5.0, 5.0};
    cpu::relu_forward(y, x, 3);
    CHECK(y[0] == 0.0);
    CHECK(y[1] == 0.0);
    CHECK(y[2] == 3.0);
    cpu::relu_backward(dx, x, dy, 3);
    CHECK(dx[0] == 1.0);
    CHECK(dx[1] == 1.0);
    CHECK(dx[2] == 6.0);
}

TEST_CASE("GELU reference agrees with known values", "[primitives]") {
    // gelu(1) = 0.5 (1 + erf(1/sqrt 2)) = 0.8413447460685429 (Φ(1), standard normal tables)
    double x[] = {1.0, 0.0, -1.0}, y[3];
    ref::gelu_forward(y, x, 3);
    CHECK(std::abs(y[0] - 0.8413447460685429) < 1e-15);
    CHECK(y[1] == 0.0);
    CHECK(std::abs(y[2] - (-1.0 + 0.8413447460685429)) < 1e-15);
}

TEMPLATE_TEST_CASE("layer norm forward and backward", "[primitives]", float, double) {
    using T = TestType;
    for (std::size_t C : {1, 2, 3, 7, 8, 9, 17, 64, 100, 384})
        for (std::size_t rows : {0, 1, 5, 67}) {
            INFO("rows=" << rows << " C=" << C);
            auto x = test::randn<T>(rows * C, 20, 2.0);
            for (std::size_t i = 0; i < x.size(); ++i) x[i] += T(3);  // non-zero mean
            auto w = test::randn<T>(C, 21), b = test::randn<T>(C, 22);
            std::vector<T> out(rows * C), out2(rows * C), mean(rows), mean2(rows), rstd(rows),
                rstd2(rows);
            ref::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(),
                                    b.data(), rows, C, T(1e-5));
            cpu::layer_norm_forward(out2.data(), mean2.data(), rstd2.data(), x.data(), w.data(),
                                    b.data(), rows, C, T(1e-5));
            require_close(mean2, mean, tol<T>(4.0 * C), "layer_norm mean");
            require_close(rstd2, rstd, tol<T>(8.0 * C), "layer_norm rstd");
            require_close(out2, out, tol<T>(8.0 * C), "layer_norm out");
            auto dout = test::randn<T>(rows * C, 23);
            auto dx = test::randn<T>(rows * C, 24), dx2 = dx;
            auto dw = test::randn<T>(C, 25), dw2 = dw, db = test::randn<T>(C, 26), db2 = db;
            ref::layer_norm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(),
                                     w.data(), mean.data(), rstd.data(), rows, C);
            cpu::layer_norm_backward(dx2.data(), dw2.data(), db2.data(), dout.data(), x.data(),
                                     w.data(), mean.data(), rstd.data(), rows, C);
            require_close(dx2, dx, tol<T>(16.0 * C), "layer_norm dx");
            require_close(dw2, dw, tol<T>(16.0 * (rows + 1)), "layer_norm dweight");
            require_close(db2, db, tol<T>(8.0 * (rows + 1)), "layer_norm dbias");
        }
}

TEMPLATE_TEST_CASE("RMSNorm forward and backward", "[primitives]", float, double) {
    using T = TestType;
    for (std::size_t C : {1, 2, 3, 7, 8, 9, 17, 64, 100, 576})
        for (std::size_t rows : {0, 1, 5, 67}) {
            INFO("rows=" << rows << " C=" << C);
            auto x = test::randn<T>(rows * C, 30, 2.0);
            for (std::size_t i = 0; i < x.size(); ++i) x[i] += T(1);  // non-zero mean
            auto w = test::randn<T>(C, 31);
            std::vector<T> out(rows * C), out2(rows * C), rstd(rows), rstd2(rows);
            ref::rms_norm_forward(out.data(), rstd.data(), x.data(), w.data(), rows, C, T(1e-5));
            cpu::rms_norm_forward(out2.data(), rstd2.data(), x.data(), w.data(), rows, C, T(1e-5));
            require_close(rstd2, rstd, tol<T>(8.0 * C), "rms_norm rstd");
            require_close(out2, out, tol<T>(8.0 * C), "rms_norm out");
            for (std::size_t r = 0; r < rows; ++r) {  // the definition, in double
                double ms = 0;
                for (std::size_t c = 0; c < C; ++c)
                    ms += double(x[r * C + c]) * double(x[r * C + c]);
                CHECK(std::abs(double(rstd[r]) * std::sqrt(ms / double(C) + 1e-5) - 1) <
                      16 * double(std::numeric_limits<T>::epsilon()) * double(C));
            }
            auto dout = test::randn<T>(rows * C, 33);
            auto dx = test::randn<T>(rows * C, 34), dx2 = dx;
            auto dw = test::randn<T>(C, 35), dw2 = dw;
            ref::rms_norm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(),
                                   rstd.data(), rows, C);
            cpu::rms_norm_backward(dx2.data(), dw2.data(), dout.data(), x.data(), w.data(),
                                   rstd.data(), rows, C);
            require_close(dx2, dx, tol<T>(16.0 * C), "rms_norm dx");
            require_close(dw2, dw, tol<T>(16.0 * (rows + 1)), "rms_norm dweight");
        }
}

TEMPLATE_TEST_CASE("masked scaled softmax forward and backward", "[primitives]", float, double) {
    using T = TestType;
    const T ninf = -std::numeric_limits<T>::infinity();
    for (std::size_t Tk : {1, 2, 5, 8, 9, 16, 33, 128})
        for (auto [B, H, Tq] :
             {std::tuple<std::size_t, std::size_t, std::size_t>{0, 2, 3}, {1, 1, 1}, {3, 2, 5}}) {
            INFO("B=" << B << " H=" << H << " Tq=" << Tq << " Tk=" << Tk);
            const std::size_t n = B * H * Tq * Tk;
            auto s = test::randn<T>(n, 30, 4.0);
            // mask: batch b keeps its first Tk - b keys (b = 2 with Tk <= 2 masks everything)
            std::vector<T> mask(B * Tk, T(0));
            for (std::size_t b = 0; b < B; ++b)
                for (std::size_t k = 0; k < Tk; ++k)
                    if (k + b >= Tk) mask[b * Tk + k] = b == 1 ? T(-10000) : ninf;
            std::vector<T> p(n), p2(n);
            const T scale = T(0.125);
            ref::softmax_forward(p.data(), s.data(), mask.data(), scale, B, H, Tq, Tk);
            cpu::softmax_forward(p2.data(), s.data(), mask.data(), scale, B, H, Tq, Tk);
            require_close(p2, p, tol<T>(16.0 * Tk), "softmax_forward");
            for (T v : p2) REQUIRE(std::isfinite(v));
            // rows sum to 1, or to 0 when every key is masked with -inf
            for (std::size_t r = 0; r < B * H * Tq; ++r) {
                T sum = 0;
                for (std::size_t k = 0; k < Tk; ++k) sum += p2[r * Tk + k];
                const bool all_masked = (r / (H * Tq)) == 2 && Tk <= 2;
                CHECK(std::abs(sum - (all_masked ? T(0) : T(1))) < tol<T>(16.0 * Tk));
            }
            ref::softmax_forward(p.data(), s.data(), static_cast<const T*>(nullptr), scale, B, H,
                                 Tq, Tk);
            cpu::softmax_forward(p2.data(), s.data(), static_cast<const T*>(nullptr), scale, B, H,
                                 Tq, Tk);
            require_close(p2, p, tol<T>(16.0 * Tk), "softmax_forward without mask");
            auto dp = test::randn<T>(n, 31), ds = test::randn<T>(n, 32), ds2 = ds;
            ref::softmax_backward(ds.data(), p.data(), dp.data(), scale, B * H * Tq, Tk);
            cpu::softmax_backward(ds2.data(), p.data(), dp.data(), scale, B * H * Tq, Tk);
            require_close(ds2, ds, tol<T>(16.0 * Tk), "softmax_backward");
            // through a dropout on the probabilities (mask `keep`), written instead of added:
            // against the two steps done separately by the reference (dropout_backward into
            // zeros, then softmax_backward onto zeros)
            std::vector<std::uint8_t> keep(n);
            for (std::size_t i = 0; i < n; ++i) keep[i] = (i * 7 + i / 3) % 5 != 0;
            const T p_drop = T(0.2), keep_scale = T(1) / (T(1) - p_drop);
            std::vector<T> g(n, T(0)), want(n, T(0));
            ref::dropout_backward(g.data(), keep.data(), dp.data(), p_drop, n);
            ref::softmax_backward(want.data(), p.data(), g.data(), scale, B * H * Tq, Tk);
            for (const bool on_ref : {true, false}) {
                std::vector<T> got = test::randn<T>(n, 33);  // overwritten, whatever it held
                if (on_ref)
                    ref::softmax_backward(got.data(), p.data(), dp.data(), scale, B * H * Tq, Tk,
                                          keep.data(), keep_scale, false);
                else
                    cpu::softmax_backward(got.data(), p.data(), dp.data(), scale, B * H * Tq, Tk,
                                          keep.data(), keep_scale, false);
                require_close(got, want, tol<T>(16.0 * Tk),
                              on_ref ? "reference softmax_backward through dropout"
                                     : "cpu softmax_backward through dropout");
            }
            // without a mask, accumulate = false gives what accumulating onto zeros gives
            std::vector<T> zeros_then_add(n, T(0)), written = test::randn<T>(n, 34);
            cpu::softmax_backward(zeros_then_add.data(), p.data(), dp.data(), scale, B * H * Tq,
                                  Tk);
            cpu::softmax_backward(written.data(), p.data(), dp.data(), scale, B * H * Tq, Tk,
                                  nullptr, T(1), false);
            require_close(written, zeros_then_add, T(0), "softmax_backward written");
        }
}

TEMPLATE_TEST_CASE("causal softmax: keys after the query get 0, the rest match a key-masked row",
                   "[primitives]", float, double) {
    using T = TestType;
    const T ninf = -std::numeric_limits<T>::infinity();
    for (auto [Tq, Tk] :
         {std::pair<std::size_t, std::size_t>{1, 1}, {5, 5}, {17, 17}, {40, 40}, {3, 7}, {7, 3}}) {
        INFO("Tq=" << Tq << " Tk=" << Tk);
        const std::size_t B = 2, H = 3, n = B * H * Tq * Tk;
        auto s = test::randn<T>(n, 40, 3.0);
        std::vector<T> mask(B * Tk, T(0));
        mask[Tk - 1] = ninf;  // batch 0 also drops its last key
        std::vector<T> p(n), p2(n);
        ref::softmax_forward(p.data(), s.data(), mask.data(), T(0.5), B, H, Tq, Tk, true);
        cpu::softmax_forward(p2.data(), s.data(), mask.data(), T(0.5), B, H, Tq, Tk, true);
        require_close(p2, p, tol<T>(16.0 * Tk), "causal softmax_forward");
        // each row equals a one-query softmax whose key mask also drops k > q + Tk - Tq
        for (std::size_t b = 0; b < B; ++b)
            for (std::size_t h = 0; h < H; ++h)
                for (std::size_t q = 0; q < Tq; ++q) {
                    std::vector<T> row_mask(mask.begin() + b * Tk, mask.begin() + (b + 1) * Tk);
                    for (std::size_t k = 0; k < Tk; ++k)
                        if (k + Tq > q + Tk) row_mask[k] = ninf;
                    const std::size_t off = ((b * H + h) * Tq + q) * Tk;
                    std::vector<T> want(Tk);
                    ref::softmax_forward(want.data(), s.data() + off, row_mask.data(), T(0.5), 1, 1,
                                         1, Tk);
                    for (std::size_t k = 0; k < Tk; ++k)
                        CHECK(std::abs(p2[off + k] - want[k]) <= tol<T>(16.0 * Tk));
                }
    }
}

TEMPLATE_TEST_CASE("softmax: fully masked rows give zeros on the SIMD and parallel paths",
                   "[primitives]", float, double) {
    using T = TestType;
    const T ninf = -std::numeric_limits<T>::infinity();
    const std::size_t B = 3, H = 4, Tq = 40, Tk = 40, n = B * H * Tq * Tk;  // 480 rows: 2 chunks
    auto s = test::randn<T>(n, 33);
    std::vector<T> mask(B * Tk, T(0));
    for (std::size_t k = 0; k < Tk; ++k) mask[2 * Tk + k] = ninf;  // batch 2: every key masked
    s[2 * H * Tq * Tk + 5] = std::numeric_limits<T>::quiet_NaN();  // a NaN score in a masked row
    std::vector<T> p(n), p2(n);
    ref::softmax_forward(p.data(), s.data(), mask.data(), T(0.5), B, H, Tq, Tk);
    cpu::softmax_forward(p2.data(), s.data(), mask.data(), T(0.5), B, H, Tq, Tk);
    for (std::size_t i = 2 * H * Tq * Tk; i < n; ++i) REQUIRE(p2[i] == T(0));
    require_close(p2, p, tol<T>(16.0 * Tk), "softmax_forward with masked batches");
}

TEMPLATE_TEST_CASE("softmax: a tile of rows at once equals each row alone, bit for bit",
                   "[primitives]", float, double) {
    using T = TestType;
    constexpr std::size_t R = 8;
    const T ninf = -std::numeric_limits<T>::infinity();
    for (std::size_t Tk : {1, 7, 16, 37, 128}) {
        const std::size_t ld = Tk + 5;  // rows of a wider score tile
        auto s = test::randn<T>(R * ld, 40 + Tk);
        std::vector<T> mask(Tk, T(0));
        for (std::size_t k = Tk / 2; k < Tk; k += 3) mask[k] = ninf;  // some keys dropped
        for (std::size_t k = 0; k < Tk; ++k) s[3 * ld + k] = ninf;    // row 3: every key dropped
        s[5 * ld + Tk / 2] = std::numeric_limits<T>::quiet_NaN();     // a NaN score
        for (std::size_t L : {Tk, (Tk + 1) / 2})
            for (const T* m :
                 {static_cast<const T*>(mask.data()), static_cast<const T*>(nullptr)}) {
                std::vector<T> tile(R * ld, T(7)), rows(R * ld, T(7));
                cpu::detail::softmax_rows<R>(tile.data(), ld, s.data(), ld, m, T(0.3), L, Tk);
                for (std::size_t r = 0; r < R; ++r)
                    cpu::detail::softmax_rows<1>(rows.data() + r * ld, ld, s.data() + r * ld, ld, m,
                                                 T(0.3), L, Tk);
                INFO("Tk=" << Tk << " L=" << L << " mask=" << (m != nullptr));
                for (std::size_t i = 0; i < R * ld; ++i)  // NaN rows compare as NaN
                    REQUIRE((tile[i] == rows[i] || (std::isnan(tile[i]) && std::isnan(rows[i]))));
                for (std::size_t k = 0; k < Tk; ++k) REQUIRE(tile[3 * ld + k] == T(0));
            }
    }
}

TEST_CASE("exp_nonpositive: within 2 ulp of std::exp on [-88, 0]; 0 below, NaN stays NaN",
          "[primitives]") {
    using B = cpu::detail::batch<float>;
    constexpr std::size_t W = cpu::detail::width<float>;
    std::vector<float> x;
    for (double v = -88.0; v <= 0.0; v += 0.0013) x.push_back(float(v));
    for (float v : {0.0f, -0.0f, -1e-30f, -1e-7f, -0.5f, -87.3f, -88.3f}) x.push_back(v);
    while (x.size() % W) x.push_back(-1.0f);
    std::vector<float> y(x.size());
    for (std::size_t i = 0; i < x.size(); i += W)
        cpu::detail::exp_nonpositive<float>(B::load_unaligned(x.data() + i))
            .store_unaligned(y.data() + i);
    double worst = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double want = std::exp(double(x[i]));
        if (want < double(std::numeric_limits<float>::min()) * 2) continue;  // near the cutoff
        const double ulp = double(std::nextafter(float(want), INFINITY)) - double(float(want));
        worst = std::max(worst, std::abs(double(y[i]) - want) / ulp);
    }
    INFO("worst error " << worst << " ulp");
    CHECK(worst <= 2.0);
    float special[W];
    std::fill_n(special, W, -100.0f);
    special[1] = -std::numeric_limits<float>::infinity();
    special[2] = std::numeric_limits<float>::quiet_NaN();
    special[3] = 0.0f;
    float out[W];
    cpu::detail::exp_nonpositive<float>(B::load_unaligned(special)).store_unaligned(out);
    CHECK(out[0] == 0.0f);
    CHECK(out[1] == 0.0f);
    CHECK(std::isnan(out[2]));
    CHECK(out[3] == 1.0f);
}

TEMPLATE_TEST_CASE("dropout: same mask as the reference, scaling, p = 0 and p = 1", "[primitives]",
                   float, double) {
    using T = TestType;
    ftune::random_stream s(1234, 5);
    for (std::size_t n : {0, 1, 3, 5, 100, 16384 + 7, 70000})
        for (T p : {T(0), T(0.1), T(0.5), T(1)}) {
            INFO("n=" << n << " p=" << p);
            auto x = test::randn<T>(n, 40);
            std::vector<T> y(n), y2(n);
            std::vector<std::uint8_t> m(n), m2(n);
            ref::dropout_forward(y.data(), m.data(), x.data(), p, n, s);
            cpu::dropout_forward(y2.data(), m2.data(), x.data(), p, n, s);
            REQUIRE(m == m2);
            require_close(y2, y, tol<T>(2), "dropout_forward");
            std::size_t kept = 0;
            for (auto k : m2) kept += k;
            if (p == T(0)) CHECK(kept == n);
            if (p == T(1)) CHECK(kept == 0);
            if (n >= 10000 && p > T(0) && p < T(1)) {  // 5-sigma binomial bound
                const double mean = double(n) * (1 - double(p)),
                             sd = std::sqrt(double(n) * double(p) * (1 - double(p)));
                CHECK(std::abs(double(kept) - mean) < 5 * sd);
            }
            auto dy = test::randn<T>(n, 41), dx = test::randn<T>(n, 42), dx2 = dx;
            ref::dropout_backward(dx.data(), m.data(), dy.data(), p, n);
            cpu::dropout_backward(dx2.data(), m2.data(), dy.data(), p, n);
            require_close(dx2, dx, tol<T>(2), "dropout_backward");
        }
    CHECK_THROWS_AS(ref::dropout_threshold(1.5), ftune::error);
    // in place (y == x) gives the same as out of place
    const std::size_t n = 70001;
    auto x = test::randn<T>(n, 44), inplace = x;
    std::vector<T> y(n, T(0));
    std::vector<std::uint8_t> m(n), m2(n);
    cpu::dropout_forward(y.data(), m.data(), x.data(), T(0.25), n, s);
    cpu::dropout_forward(inplace.data(), m2.data(), inplace.data(), T(0.25), n, s);
    CHECK(y == inplace);
}

TEST_CASE("dropout mask does not depend on the thread count", "[primitives]") {
    const std::size_t n = 200000;
    auto x = test::randn<float>(n, 43);
    std::vector<float> y1(n), y2(n);
    std::vector<std::uint8_t> m1(n), m2(n);
    ftune::random_stream s(9, 9);
    const int threads = ftune::num_threads();
    ftune::set_num_threads(1);
    cpu::dropout_forward(y1.data(), m1.data(), x.data(), 0.1f, n, s);
    ftune::set_num_threads(2);
    cpu::dropout_forward(y2.data(), m2.data(), x.data(), 0.1f, n, s);
    ftune::set_num_threads(threads);
    CHECK(m1 == m2);
    CHECK(y1 == y2);
}

TEST_CASE("reductions and GEMM give bitwise the same result on 1 and 2 threads", "[primitives]") {
    // column-parallel reductions and GEMM's fixed K blocking make the summation order independent
    // of the thread count, so training is reproducible whatever OMP_NUM_THREADS is
    const std::size_t rows = 515, C = 389, vocab = 50;
    auto x = test::randn<float>(rows * C, 100), dy = test::randn<float>(rows * C, 101),
         w = test::randn<float>(C, 102);
    std::vector<ftune::token_id> ids(rows);
    for (std::size_t i = 0; i < rows; ++i)
        ids[i] = ftune::token_id(test::rand_int(103, i, 0, vocab - 1));
    auto run = [&](int threads) {
        ftune::set_num_threads(threads);
        std::vector<float> out(rows * C), mean(rows), rstd(rows), dx(rows * C), dw(C), db(C),
            dt(vocab * C), g(rows * rows);
        cpu::layer_norm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(),
                                rows, C, 1e-5f);
        cpu::layer_norm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                                 mean.data(), rstd.data(), rows, C);
        cpu::bias_backward(db.data(), dy.data(), rows, C);
        cpu::embedding_backward(dt.data(), ids.data(), dy.data(), rows, C, vocab);
        cpu::gemm(ftune::transpose::no, ftune::transpose::yes, rows, rows, C, 1.0f, x.data(), C,
                  dy.data(), C, 0.0f, g.data(), rows);
        const double s = cpu::sum(x.data(), rows * C);
        return std::tuple{out, dx, dw, db, dt, g, s};
    };
    const int threads = ftune::num_threads();
    const auto one = run(1), two = run(2);
    ftune::set_num_threads(threads);
    CHECK(std::get<0>(one) == std::get<0>(two));
    CHECK(std::get<1>(one) == std::get<1>(two));
    CHECK(std::get<2>(one) == std::get<2>(two));
    CHECK(std::get<3>(one) == std::get<3>(two));
    CHECK(std::get<4>(one) == std::get<4>(two));
    CHECK(std::get<5>(one) == std::get<5>(two));
    CHECK(std::get<6>(one) == std::get<6>(two));
}

TEMPLATE_TEST_CASE("embedding gather and scatter-add", "[primitives]", float, double) {
    using T = TestType;
    for (std::size_t C : {1, 3, 8, 17, 64, 384})
        for (std::size_t n : {0, 1, 9, 200}) {
            INFO("n=" << n << " C=" << C);
            const std::size_t vocab = 13;  // small vocabulary: many repeated ids
            std::vector<ftune::token_id> ids(n);
            for (std::size_t i = 0; i < n; ++i)
                ids[i] = ftune::token_id(test::rand_int(50, i, 0, vocab - 1));
            auto table = test::randn<T>(vocab * C, 51);
            std::vector<T> out(n * C), out2(n * C);
            ref::embedding_forward(out.data(), ids.data(), table.data(), n, C, vocab);
            cpu::embedding_forward(out2.data(), ids.data(), table.data(), n, C, vocab);
            REQUIRE(out == out2);
            auto dout = test::randn<T>(n * C, 52), dt = test::randn<T>(vocab * C, 53), dt2 = dt;
            ref::embedding_backward(dt.data(), ids.data(), dout.data(), n, C, vocab);
            cpu::embedding_backward(dt2.data(), ids.data(), dout.data(), n, C, vocab);
            require_close(dt2, dt, tol<T>(4.0 * (n + 1)), "embedding_backward");
        }
    std::vector<ftune::token_id> bad{0, -1};
    std::vector<T> table(4), out(4);
    CHECK_THROWS_AS(cpu::embedding_forward(out.data(), bad.data(), table.data(), 2, 2, 2),
                    ftune::error);
}

TEMPLATE_TEST_CASE("cross-entropy with logits and an ignore index", "[primitives]", float, double) {
    using T = TestType;
    for (std::size_t V : {1, 2, 3, 9, 16, 77, 1000})
        for (std::size_t rows : {0, 1, 5, 40}) {
            INFO("rows=" << rows << " V=" << V);
            auto z = test::randn<T>(rows * V, 60, 5.0);
            std::vector<ftune::token_id> t(rows);
            for (std::size_t r = 0; r < rows; ++r)
                t[r] = r % 4 == 3 ? -100 : ftune::token_id(test::rand_int(61, r, 0, V - 1));
            std::vector<T> l(rows), l2(rows);
            const auto c = ref::cross_entropy_forward(l.data(), z.data(), t.data(), rows, V, -100);
            const auto c2 =
                cpu::cross_entropy_forward(l2.data(), z.data(), t.data(), rows, V, -100);
            CHECK(c == c2);
            CHECK(c == rows - rows / 4);
            require_close(l2, l, tol<T>(32.0 * V), "cross_entropy_forward");
            auto dl = test::randn<T>(rows, 62), dz = test::randn<T>(rows * V, 63), dz2 = dz;
            ref::cross_entropy_backward(dz.data(), z.data(), t.data(), dl.data(), rows, V, -100);
            cpu::cross_entropy_backward(dz2.data(), z.data(), t.data(), dl.data(), rows, V, -100);
            require_close(dz2, dz, tol<T>(32.0 * V), "cross_entropy_backward");
        }
    std::vector<ftune::token_id> bad{5};
    std::vector<T> z(3), l(1);
    CHECK_THROWS_AS(cpu::cross_entropy_forward(l.data(), z.data(), bad.data(), 1, 3), ftune::error);
}

TEST_CASE("cross-entropy reference agrees with a hand computation", "[primitives]") {
    // logits (0, ln 2, ln 3), target 2: loss = ln(1 + 2 + 3) - ln 3 = ln 2
    const double z[] = {0.0, std::log(2.0), std::log(3.0)};
    const ftune::token_id t[] = {2};
    double l[1];
    ref::cross_entropy_forward(l, z, t, 1, 3);
    CHECK(std::abs(l[0] - std::log(2.0)) < 1e-15);
}

TEMPLATE_TEST_CASE("sum, sum of squares, global L2 norm, scale", "[primitives]", float, double) {
    using T = TestType;
    for (std::size_t n : {0, 1, 7, 33, 1000, 16384 * 3 + 5, 1000003}) {
        INFO("n=" << n);
        auto x = test::randn<T>(n, 70);
        // both sum in a different order: allow √n rounding steps of the magnitude involved
        const double rn = 1 + std::sqrt(double(n)), sq = ref::sum_squares(x.data(), n);
        CHECK(std::abs(cpu::sum(x.data(), n) - ref::sum(x.data(), n)) <= tol<T>(64) * rn * rn);
        CHECK(std::abs(cpu::sum_squares(x.data(), n) - sq) <= tol<T>(64) * rn * (1 + sq));
        auto x2 = x;
        ref::scale(x.data(), T(0.3), n);
        cpu::scale(x2.data(), T(0.3), n);
        require_close(x2, x, tol<T>(1), "scale");
    }
    // squares that overflow T still give the right norm (a float square of 2e19 is inf)
    if constexpr (std::is_same_v<T, float>) {
        std::vector<float> big(5000, 2e19f);
        CHECK(std::abs(cpu::sum_squares(big.data(), big.size()) / (5000 * 4e38) - 1) < 1e-6);
    }
    auto a = test::randn<T>(100, 71), b = test::randn<T>(37, 72);
    const std::span<const T> parts[] = {a, b};
    const double want = std::sqrt(ref::sum_squares(a.data(), 100) + ref::sum_squares(b.data(), 37));
    CHECK(std::abs(cpu::global_l2_norm<T>(parts) - want) <= tol<T>(64) * want);
    CHECK(std::abs(ref::global_l2_norm<T>(parts) - want) <= 1e-12 * want);
}

TEMPLATE_TEST_CASE("AdamW and SGD updates", "[primitives][optim]", float, double) {
    using T = TestType;
    for (std::size_t n : test::awkward_sizes()) {
        INFO("n=" << n);
        auto p = test::randn<T>(n, 80), m = test::randn<T>(n, 81, 0.1),
             v = test::randu<T>(n, 82, 0.0, 0.01);
        auto p2 = p, m2 = m, v2 = v;
        for (std::size_t step = 1; step <= 3; ++step) {
            auto g = test::randn<T>(n, 83 + step);
            ftune::adamw_params h{.lr = 1e-3, .weight_decay = 0.01, .step = step};
            ref::adamw_update(p.data(), g.data(), m.data(), v.data(), n, h);
            cpu::adamw_update(p2.data(), g.data(), m2.data(), v2.data(), n, h);
        }
        require_close(p2, p, tol<T>(8), "adamw param");
        require_close(m2, m, tol<T>(8), "adamw m");
        require_close(v2, v, tol<T>(8), "adamw v");
        for (bool nesterov : {false, true}) {
            auto q = test::randn<T>(n, 90), q2 = q;
            std::vector<T> buf(n), buf2(n);
            for (std::size_t step = 1; step <= 3; ++step) {
                auto g = test::randn<T>(n, 91 + step);
                ftune::sgd_params h{.lr = 0.1,
                                    .momentum = 0.9,
                                    .dampening = nesterov ? 0.0 : 0.1,
                                    .weight_decay = 1e-4,
                                    .nesterov = nesterov,
                                    .first_step = step == 1};
                ref::sgd_update(q.data(), g.data(), buf.data(), n, h);
                cpu::sgd_update(q2.data(), g.data(), buf2.data(), n, h);
            }
            require_close(q2, q, tol<T>(8), "sgd param");
            require_close(buf2, buf, tol<T>(8), "sgd momentum buffer");
        }
    }
}

TEMPLATE_TEST_CASE(
    "a gradient scale in AdamW and SGD equals scaling the gradient first, bit "
    "for bit",
    "[primitives][optim]", float, double) {
    // grad_scale is clip_scale's factor applied as the update reads the gradient: the same
    // values as scale() (what clip_grad_norm runs) and then the update, on both backends
    using T = TestType;
    for (std::size_t n : test::awkward_sizes()) {
        INFO("n=" << n);
        const auto g = test::randn<T>(n, 95);
        for (const double s : {0.37, 1.0}) {
            INFO("scale " << s);
            auto scaled = g;
            cpu::scale(scaled.data(), T(s), n);
            auto p = test::randn<T>(n, 96), m = test::randn<T>(n, 97, 0.1),
                 v = test::randu<T>(n, 98, 0.0, 0.01);
            auto p2 = p, m2 = m, v2 = v, p3 = p, m3 = m, v3 = v, p4 = p, m4 = m, v4 = v;
            ftune::adamw_params h{.lr = 1e-3, .weight_decay = 0.01, .step = 2};
            cpu::adamw_update(p.data(), scaled.data(), m.data(), v.data(), n, h);
            ref::adamw_update(p3.data(), scaled.data(), m3.data(), v3.data(), n, h);
            h.grad_scale = s;
            cpu::adamw_update(p2.data(), g.data(), m2.data(), v2.data(), n, h);
            ref::adamw_update(p4.data(), g.data(), m4.data(), v4.data(), n, h);
            CHECK((p2 == p && m2 == m && v2 == v));
            CHECK((p4 == p3 && m4 == m3 && v4 == v3));
            auto q = test::randn<T>(n, 99), b = test::randn<T>(n, 100, 0.1);
            auto q2 = q, b2 = b, q3 = q, b3 = b, q4 = q, b4 = b;
            ftune::sgd_params k{.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4, .nesterov = true};
            cpu::sgd_update(q.data(), scaled.data(), b.data(), n, k);
            ref::sgd_update(q3.data(), scaled.data(), b3.data(), n, k);
            k.grad_scale = s;
            cpu::sgd_update(q2.data(), g.data(), b2.data(), n, k);
            ref::sgd_update(q4.data(), g.data(), b4.data(), n, k);
            CHECK((q2 == q && b2 == b));
            CHECK((q4 == q3 && b4 == b3));
        }
    }
}

TEST_CASE("AdamW reference follows the decoupled-decay formula", "[primitives][optim]") {
    // one step from m = v = 0: m = (1-b1) g, v = (1-b2) g², mhat = g, vhat = g²
    // θ' = θ (1 - lr wd) - lr g / (|g| + eps)
    double p = 2.0, g = 0.5, m = 0, v = 0;
    ftune::adamw_params h{
        .lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.01, .step = 1};
    ref::adamw_update(&p, &g, &m, &v, 1, h);
    CHECK(std::abs(p - (2.0 * (1 - 0.1 * 0.01) - 0.1 * 0.5 / (0.5 + 1e-8))) < 1e-12);
}
