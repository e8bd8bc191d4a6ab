// Losses, optimizers, schedules and clipping against PyTorch / Transformers
// (tests/reference/optim_parity.py): loss values and gradients, AdamW and SGD step for step with
// parameter groups, frozen parameters, clipping and schedules; and the losses' gradients against
// central differences.
#include <ftune/loss.hpp>
#include <ftune/optim.hpp>
#include <ftune/io/safetensors.hpp>
#include <ftune/testing/check_gradients.hpp>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {

using ftune::dynamic;
const ftune::io::safetensors_file& fixture() {
    static const ftune::io::safetensors_file f(std::string(FTUNE_REFERENCE_DIR) +
                                               "/optim_parity.safetensors");
    return f;
}
std::vector<double> get(const char* name) {
    return fixture().read<double>(fixture().at(name));
}
std::vector<double> get(const std::string& name) {
    return get(name.c_str());
}
std::vector<ftune::token_id> ints(const char* name) {
    const auto& t = fixture().at(name);
    std::vector<ftune::token_id> v(t.numel());
    std::memcpy(v.data(), fixture().bytes(t).data(), v.size() * sizeof(ftune::token_id));
    return v;
}
double max_diff(const std::vector<double>& a, const std::vector<double>& b) {
    REQUIRE(a.size() == b.size());
    double d = 0;
    for (std::size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
    return d;
}

}  // namespace

TEST_CASE("losses: values and gradients equal PyTorch's", "[parity][losses]") {
    const auto z = get("ce_logits");
    const auto y = ints("ce_targets");
    const ftune::matrix_view<const double> logits(z.data(), 6, 5);
    const ftune::view<const ftune::token_id, ftune::shape<dynamic>> targets(y.data(), 6);
    const auto w = get("ce_weights");
    struct variant {
        const char* name;
        ftune::loss::cross_entropy_options o;
    };
    for (const auto& v :
         {variant{"plain", {}}, variant{"smooth", {.label_smoothing = 0.1}},
          variant{"weighted", {.class_weights = w}},
          variant{"weighted_smooth", {.label_smoothing = 0.1, .class_weights = w}}}) {
        INFO(v.name);
        ftune::loss::cross_entropy<double> ce(v.o);
        const double l = ce.forward(logits, targets);
        CHECK(std::abs(l - get(std::string("ce_") + v.name + "_loss")[0]) <= 1e-12);
        std::vector<double> d(30, 0.0);
        ce.backward({d.data(), 6, 5}, 1.0);
        CHECK(max_diff(d, get(std::string("ce_") + v.name + "_grad")) <= 1e-12);
        // backward accumulates and scales
        ce.backward({d.data(), 6, 5}, 2.0);
        auto three = get(std::string("ce_") + v.name + "_grad");
        for (auto& x : three) x *= 3;
        CHECK(max_diff(d, three) <= 1e-12);
    }
    {
        const auto bz = get("bce_logits"), by = get("bce_targets");
        ftune::loss::bce_with_logits<double> bce;
        CHECK(std::abs(bce.forward({bz.data(), 4, 3}, {by.data(), 4, 3}) - get("bce_loss")[0]) <=
              1e-12);
        std::vector<double> d(12, 0.0);
        bce.backward({d.data(), 4, 3}, 1.0);
        CHECK(max_diff(d, get("bce_grad")) <= 1e-12);
    }
    {
        const auto mz = get("mse_pred"), my = get("mse_targets");
        ftune::loss::mse<double> m;
        CHECK(std::abs(m.forward({mz.data(), 4, 2}, {my.data(), 4, 2}) - get("mse_loss")[0]) <=
              1e-12);
        std::vector<double> d(8, 0.0);
        m.backward({d.data(), 4, 2}, 1.0);
        CHECK(max_diff(d, get("mse_grad")) <= 1e-12);
    }
    // bad targets are errors naming the row
    std::vector<ftune::token_id> bad{1, 4, 7, 0, 2, 4};
    ftune::loss::cross_entropy<double> ce;
    CHECK_THROWS_WITH(ce.forward(logits, {bad.data(), 6}),
                      Catch::Contains("target 7 of row 2 is outside [0, 5)"));
    ftune::loss::cross_entropy<double> short_w({.class_weights = {1, 2}});
    CHECK_THROWS_AS(short_w.forward(logits, targets), ftune::error);
    // every row ignored: loss 0 and no gradient (PyTorch gives NaN; a batch of padding is not an
    // error)
    std::vector<ftune::token_id> none(6, -100);
    CHECK(ce.forward(logits, {none.data(), 6}) == 0);
}

TEST_CASE("losses: gradients against central differences", "[gradcheck][losses]") {
    auto z = get("ce_logits");
    const auto y = ints("ce_targets");
    const auto w = get("ce_weights");
    std::vector<double> dz(z.size());
    ftune::loss::cross_entropy<double> ce({.label_smoothing = 0.2, .class_weights = w});
    std::vector<ftune::testing::gradient_target> targets{{"logits", z, dz}};
    auto loss = [&] { return ce.forward({z.data(), 6, 5}, {y.data(), 6}); };
    auto backward = [&] { ce.backward({dz.data(), 6, 5}, 1.0); };
    const auto r = ftune::testing::check_gradients(std::span(targets), loss, backward);
    INFO(r.report);
    CHECK(r.ok);

    auto bz = get("bce_logits");
    const auto by = get("bce_targets");
    std::vector<double> dbz(bz.size());
    ftune::loss::bce_with_logits<double> bce;
    std::vector<ftune::testing::gradient_target> t2{{"logits", bz, dbz}};
    const auto r2 = ftune::testing::check_gradients(
        std::span(t2),
        [&] {
            return bce.forward({bz.data(), 4, 3}, {by.data(), 4, 3});
        },
        [&] {
            bce.backward({dbz.data(), 4, 3}, 1.0);
        });
    INFO(r2.report);
    CHECK(r2.ok);
}

namespace {
const std::vector<std::string> names{"encoder.dense.weight", "encoder.dense.bias",
                                     "encoder.LayerNorm.weight", "classifier.weight",
                                     "frozen.weight"};

// The fixture's five parameters (float), decay off for the bias and the LayerNorm weight, the
// last one frozen.
struct toy_model {
    std::vector<ftune::parameter<float, ftune::shape<dynamic>>> p;
    toy_model() {
        for (const auto& n : names) {
            const auto init = get("init." + n);
            const bool decay =
                n.find("bias") == std::string::npos && n.find("LayerNorm") == std::string::npos;
            p.emplace_back(n, ftune::shape<dynamic>(init.size()), decay);
            for (std::size_t i = 0; i < init.size(); ++i) p.back().value.data()[i] = float(init[i]);
        }
        p.back().trainable = false;
    }
    std::vector<ftune::parameter_ref<float>> refs() {
        std::vector<ftune::parameter_ref<float>> r;
        for (auto& q : p) r.push_back(q.ref(""));
        return r;
    }
    void set_grads(std::size_t step) {
        for (std::size_t i = 0; i < p.size(); ++i) {
            const auto g = get("grad." + std::to_string(step) + "." + names[i]);
            for (std::size_t j = 0; j < g.size(); ++j) p[i].grad.data()[j] = float(g[j]);
        }
    }
    // max |value - fixture| over all parameters after `step` of optimizer `tag`
    double diff(const std::string& tag, std::size_t step) {
        double d = 0;
        for (std::size_t i = 0; i < p.size(); ++i) {
            const auto want = get(tag + "." + std::to_string(step) + "." + names[i]);
            for (std::size_t j = 0; j < want.size(); ++j)
                d = std::max(d, std::abs(double(p[i].value.data()[j]) - want[j]));
        }
        return d;
    }
};

// With read_scaled, the clipping factor is applied as the optimizer reads each gradient
// (clip_scale, then step(params, scale)) instead of by clip_grad_norm.
template <class Opt, class Sched>
void run_steps(const std::string& tag, Opt& opt, const Sched& sched, bool clip,
               bool read_scaled = false) {
    toy_model m;
    const auto refs = m.refs();
    const auto lr = get(tag + ".lr"), norm = get(tag + ".norm");
    const auto frozen_before = get("init.frozen.weight");
    for (std::size_t k = 0; k < 6; ++k) {
        INFO(tag << " step " << k);
        m.set_grads(k);
        CHECK(std::abs(sched.lr_at(k) - lr[k]) <= 1e-12);
        opt.set_lr(sched.lr_at(k));
        const std::span<const ftune::parameter_ref<float>> ps(refs);
        double scale = 1;
        if (clip && read_scaled) {
            const auto c = ftune::optim::clip_scale(ps, 1.0);
            CHECK(std::abs(c.norm - norm[k]) <= 1e-5 * norm[k]);
            CHECK(c.scale == (1.0 / (c.norm + 1e-6) < 1 ? 1.0 / (c.norm + 1e-6) : 1.0));
            scale = c.scale;
        } else if (clip) {
            CHECK(std::abs(ftune::optim::clip_grad_norm(ps, 1.0) - norm[k]) <= 1e-5 * norm[k]);
        }
        opt.step(ps, scale);
        const double d = m.diff(tag, k);
        INFO("max |ftune - PyTorch| " << d);
        CHECK(d <= 1e-6);
    }
    CHECK(opt.step_count() == 6);
    // the frozen parameter did not move and owns no state
    std::size_t state = 0;
    opt.visit_state([&](const std::string& n, std::span<float> s) {
        if (n.starts_with("frozen.")) state += s.size();
    });
    CHECK(state == 0);
}
}  // namespace

namespace {
// adamw's members without step(params, scale): an optimizer of one's own, as any_optimizer
// holds it
struct own_adamw {
    ftune::optim::adamw<float> a;
    void step(std::span<const ftune::parameter_ref<float>> p) { a.step(p); }
    void set_lr(double lr) { a.set_lr(lr); }
    std::size_t step_count() const { return a.step_count(); }
    void set_step_count(std::size_t n) { a.set_step_count(n); }
    void init_state(std::span<const ftune::parameter_ref<float>> p) { a.init_state(p); }
    template <class F>
    void visit_state(F&& f) {
        a.visit_state(f);
    }
};
}  // namespace

TEST_CASE("AdamW and SGD: step for step equal to PyTorch with groups, clipping and schedules",
          "[parity][optim]") {
    SECTION("AdamW, weight decay 0.01 except biases and LayerNorm, classifier x10, linear warmup") {
        ftune::optim::adamw<float> opt({.lr = 1e-2,
                                        .weight_decay = 0.01,
                                        .groups = {{.prefix = "classifier.", .lr_scale = 10}}});
        run_steps("adamw", opt, ftune::schedule::linear{.lr = 1e-2, .warmup = 2, .total = 6}, true);
    }
    SECTION("AdamW as above, the clipping applied as each gradient is read (clip_scale)") {
        ftune::optim::adamw<float> opt({.lr = 1e-2,
                                        .weight_decay = 0.01,
                                        .groups = {{.prefix = "classifier.", .lr_scale = 10}}});
        run_steps("adamw", opt, ftune::schedule::linear{.lr = 1e-2, .warmup = 2, .total = 6}, true,
                  true);
    }
    SECTION("SGD, Nesterov momentum, coupled weight decay, cosine") {
        ftune::optim::sgd<float> opt({.lr = 1e-2,
                                      .momentum = 0.9,
                                      .weight_decay = 0.01,
                                      .nesterov = true,
                                      .groups = {{.prefix = "classifier.", .lr_scale = 10}}});
        run_steps("sgd_nesterov", opt, ftune::schedule::cosine{.lr = 1e-2, .warmup = 1, .total = 6},
                  true);
    }
    SECTION("SGD as above behind any_optimizer, the clipping applied as each gradient is read") {
        ftune::optim::any_optimizer<float> opt(
            ftune::optim::sgd<float>({.lr = 1e-2,
                                      .momentum = 0.9,
                                      .weight_decay = 0.01,
                                      .nesterov = true,
                                      .groups = {{.prefix = "classifier.", .lr_scale = 10}}}),
            "sgd");
        run_steps("sgd_nesterov", opt, ftune::schedule::cosine{.lr = 1e-2, .warmup = 1, .total = 6},
                  true, true);
    }
    SECTION("an optimizer of one's own whose step takes no scale: any_optimizer scales first") {
        ftune::optim::any_optimizer<float> opt(
            own_adamw{ftune::optim::adamw<float>(
                {.lr = 1e-2,
                 .weight_decay = 0.01,
                 .groups = {{.prefix = "classifier.", .lr_scale = 10}}})},
            "own");
        run_steps("adamw", opt, ftune::schedule::linear{.lr = 1e-2, .warmup = 2, .total = 6}, true,
                  true);
    }
    SECTION("SGD, dampened momentum, constant rate, no clipping") {
        ftune::optim::sgd<float> opt({.lr = 1e-2, .momentum = 0.9, .dampening = 0.1});
        run_steps("sgd_damp", opt, ftune::schedule::constant{.lr = 1e-2}, false);
    }
}

TEST_CASE("schedules: Hugging Face's rates step by step", "[parity][optim]") {
    const auto lin = get("sched_linear"), cos = get("sched_cosine"), con = get("sched_constant"),
               poly = get("sched_polynomial");
    const ftune::schedule::linear l{.lr = 1, .warmup = 3, .total = 10};
    const ftune::schedule::cosine c{.lr = 1, .warmup = 3, .total = 10};
    const ftune::schedule::constant k{.lr = 1, .warmup = 3};
    const ftune::schedule::polynomial p{
        .lr = 1, .warmup = 3, .total = 10, .lr_end = 1e-3, .power = 2};
    for (std::size_t s = 0; s < 12; ++s) {
        INFO("step " << s);
        CHECK(std::abs(l.lr_at(s) - lin[s]) <= 1e-12);
        CHECK(std::abs(c.lr_at(s) - cos[s]) <= 1e-12);
        CHECK(std::abs(k.lr_at(s) - con[s]) <= 1e-12);
        CHECK(std::abs(p.lr_at(s) - poly[s]) <= 1e-12);
    }
    CHECK(ftune::schedule::warmup_steps(0.1, 95) == 10);  // ceil, as Hugging Face
    CHECK_THROWS_AS(ftune::schedule::warmup_steps(1.5, 10), ftune::error);
    static_assert(ftune::lr_schedule<ftune::schedule::linear> &&
                  ftune::lr_schedule<ftune::schedule::cosine>);
    static_assert(ftune::loss_function<ftune::loss::cross_entropy<float>> &&
                  ftune::loss_function<ftune::loss::mse<double>>);
    static_assert(ftune::optimizer<ftune::optim::adamw<float>, float>);
}
