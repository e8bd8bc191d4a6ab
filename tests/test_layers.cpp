// Layers: gradients checked with ftune::testing::check_layer_gradients (parameters and inputs,
// sentinel-filled, accumulation), dropout under a fixed seed, eval mode, frozen parameters, names.
#include <ftune/layers.hpp>
#include <ftune/testing/check_gradients.hpp>

#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "layer_util.hpp"

using ftune::dynamic;
using ftune::shape;
namespace layers = ftune::layers;

namespace {
// Checks a layer's gradients at x and reports the checker's findings.
template <class L, class X>
void require_layer_gradients(L& layer, ftune::context& ctx, X x) {
    const auto res = ftune::testing::check_layer_gradients(layer, ctx, x);
    INFO(res.report);
    CHECK(res.checked > 0);
    REQUIRE(res.ok);
}
}  // namespace

static_assert(ftune::layer<layers::linear<double>>);
static_assert(ftune::layer<layers::layer_norm<float, 384>>);
static_assert(ftune::layer<layers::rms_norm<float, 576>>);
static_assert(ftune::layer<layers::gelu<double>>);
static_assert(ftune::layer<layers::dropout<float>>);
static_assert(ftune::layer<layers::embedding<double, 8>>);
static_assert(ftune::layer<layers::self_attention<float, 384>>);

TEST_CASE("linear: gradients of weight, bias and input; static and dynamic sizes",
          "[gradcheck][layers]") {
    ftune::context ctx;
    layers::linear<double> dyn(7, 5);
    test::randomize(dyn, 1);
    auto xs = test::randn<double>(4 * 7, 2);
    require_layer_gradients(dyn, ctx,
                            ftune::view<double, shape<dynamic, dynamic>>(xs.data(), 4, 7));
    layers::linear<double, 7, 5> st;
    test::randomize(st, 3);
    require_layer_gradients(st, ctx, ftune::view<double, shape<dynamic, 7>>(xs.data(), 4, 7));
}

TEST_CASE("layer norm: gradients of weight, bias and input", "[gradcheck][layers]") {
    ftune::context ctx;
    layers::layer_norm<double> ln(9, 1e-5);
    test::randomize(ln, 4);
    auto xs = test::randn<double>(3 * 9, 5, 2.0);
    require_layer_gradients(ln, ctx, ftune::view<double, shape<dynamic, dynamic>>(xs.data(), 3, 9));
}

TEST_CASE("RMSNorm: gradients of weight and input; a frozen weight gets none",
          "[gradcheck][layers]") {
    ftune::context ctx;
    layers::rms_norm<double> n(9, 1e-5);
    test::randomize(n, 8);
    auto xs = test::randn<double>(3 * 9, 9, 2.0);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 3, 9);
    require_layer_gradients(n, ctx, x);
    n.weight.trainable = false;
    n.zero_grad();
    const auto y = n.forward(ctx, x);
    const std::vector<double> dy(y.size(), 1.0);
    std::vector<double> dx(y.size(), 0.0);
    n.backward(ctx, {dy.data(), 3, 9}, {dx.data(), 3, 9});
    CHECK(n.weight.grad.data() == nullptr);  // zero_grad freed it; backward wrote none
}

TEST_CASE("linear without a bias (Llama's projections): y = x Wᵀ, gradients, prepared inference",
          "[gradcheck][layers]") {
    ftune::context ctx;
    layers::linear<double, dynamic, dynamic, ftune::device::cpu, false> l(7, 5);
    static_assert(!decltype(l)::has_bias);
    test::randomize(l, 12);
    std::vector<std::string> names;
    l.visit_parameters("q_proj", [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names == std::vector<std::string>{"q_proj.weight"});
    auto xs = test::randn<double>(4 * 7, 13);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 4, 7);
    require_layer_gradients(l, ctx, x);
    const auto y = l.forward(ctx, x);
    const std::vector<double> plain(y.data(), y.data() + y.size());
    for (std::size_t i = 0; i < 4; ++i)
        for (std::size_t o = 0; o < 5; ++o) {
            double want = 0;
            for (std::size_t k = 0; k < 7; ++k) want += xs[i * 7 + k] * l.weight.value(o, k);
            CHECK(std::abs(plain[i * 5 + o] - want) < 1e-12);
        }
    l.prepare_inference();
    const auto yp = l.forward(ctx, x);
    CHECK(std::vector<double>(yp.data(), yp.data() + yp.size()) == plain);
}

TEST_CASE("gated MLP (Llama's SwiGLU): gradients of every projection and the input, names",
          "[gradcheck][layers]") {
    ftune::context ctx;
    layers::gated_mlp<double> mlp(6, 10);
    test::randomize(mlp, 14);
    std::vector<std::string> names;
    mlp.visit_parameters("mlp", [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names == std::vector<std::string>{"mlp.gate_proj.weight", "mlp.up_proj.weight",
                                            "mlp.down_proj.weight"});
    auto xs = test::randn<double>(3 * 6, 15, 2.0);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 3, 6);
    require_layer_gradients(mlp, ctx, x);
    // y = down(silu(gate x) ⊙ up x), from the definition
    const auto y = mlp.forward(ctx, x);
    for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t o = 0; o < 6; ++o) {
            double want = 0;
            for (std::size_t f = 0; f < 10; ++f) {
                double g = 0, u = 0;
                for (std::size_t k = 0; k < 6; ++k) {
                    g += xs[i * 6 + k] * mlp.gate_proj.weight.value(f, k);
                    u += xs[i * 6 + k] * mlp.up_proj.weight.value(f, k);
                }
                want += mlp.down_proj.weight.value(o, f) * (g / (1 + std::exp(-g))) * u;
            }
            CHECK(std::abs(y(i, o) - want) < 1e-12);
        }
}

namespace {
// rotary_attention with a fixed key mask, as check_layer_gradients calls a layer
struct masked_attention {
    using attention = layers::rotary_attention<double>;
    using value_type = double;
    using input_view = ftune::view<double, shape<dynamic, dynamic, dynamic>>;
    using d_input_view = attention::d_input_view;
    using output_view = attention::output_view;
    attention& a;
    attention::mask_view m;
    output_view forward(ftune::context& ctx, input_view x) { return a.forward(ctx, x, m); }
    void backward(ftune::context& ctx, output_view dy, d_input_view dx,
                  ftune::grad_write w = ftune::grad_write::accumulate) {
        a.backward(ctx, dy, dx, w);
    }
    void zero_grad() { a.zero_grad(); }
    template <class F>
    void visit_parameters(std::string_view p, F&& f) {
        a.visit_parameters(p, f);
    }
};
}  // namespace

TEST_CASE("rotary attention (Llama's, grouped-query): gradients with a padding mask; causal",
          "[gradcheck][layers]") {
    using attention = layers::rotary_attention<double>;
    for (std::size_t kv : {4, 2, 1}) {  // multi-head, groups of 2, one key/value head
        INFO("kv heads " << kv);
        attention a({.hidden = 8, .heads = 4, .kv_heads = kv, .head_dim = 4, .rope_theta = 100.0});
        test::randomize(a, 20 + int(kv));
        const std::size_t B = 2, T = 5, C = 8;
        auto xs = test::randn<double>(B * T * C, 30);
        // the second row's last two positions are padding
        std::vector<double> mask(B * T, 0.0);
        mask[8] = mask[9] = std::numeric_limits<double>::lowest();
        masked_attention b{a, {mask.data(), B, T}};
        ftune::context ctx;
        require_layer_gradients(b, ctx, masked_attention::input_view(xs.data(), B, T, C));
        // causal: changing the last position changes no earlier output
        const auto y = a.forward(ctx, {xs.data(), B, T, C});
        const std::vector<double> before(y.data(), y.data() + y.size());
        for (std::size_t c = 0; c < C; ++c) xs[(T - 1) * C + c] += 1.0;  // row 0, position 4
        const auto y2 = a.forward(ctx, {xs.data(), B, T, C});
        for (std::size_t i = 0; i < (T - 1) * C; ++i) CHECK(y2.data()[i] == before[i]);
        CHECK(y2.data()[(T - 1) * C] != before[(T - 1) * C]);
    }
    layers::rotary_attention<double> a({.hidden = 8, .heads = 4, .kv_heads = 2, .head_dim = 4});
    std::vector<std::string> names;
    a.visit_parameters("self_attn", [&](ftune::parameter_ref<double> p) {
        names.push_back(p.name + " " + p.shape_string());
    });
    CHECK(names == std::vector<std::string>{
                       "self_attn.q_proj.weight [16, 8]", "self_attn.k_proj.weight [8, 8]",
                       "self_attn.v_proj.weight [8, 8]", "self_attn.o_proj.weight [8, 16]"});
    CHECK_THROWS_AS(attention({.hidden = 8, .heads = 4, .kv_heads = 3, .head_dim = 2}),
                    ftune::error);
}

TEST_CASE("activations: GELU, GELU (tanh), tanh, ReLU, SiLU", "[gradcheck][layers]") {
    ftune::context ctx;
    auto xs = test::randn<double>(3 * 11, 6, 2.0);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 3, 11);
    layers::gelu<double> g;
    require_layer_gradients(g, ctx, x);
    layers::gelu_tanh<double> gt;
    require_layer_gradients(gt, ctx, x);
    layers::tanh<double> t;
    require_layer_gradients(t, ctx, x);
    layers::relu<double> r;  // no input lies within the difference step of the kink at 0
    require_layer_gradients(r, ctx, x);
    layers::silu<double> si;
    require_layer_gradients(si, ctx, x);
}

TEST_CASE("dropout: gradients under a fixed seed; eval mode is the identity",
          "[gradcheck][layers]") {
    ftune::context ctx{.mode = ftune::mode::train, .rng = ftune::generator(42)};
    layers::dropout<double> d(0.3);
    auto xs = test::randn<double>(5 * 13, 7);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 5, 13);
    require_layer_gradients(d, ctx, x);
    // same seed and position: same output; next stream: a different mask
    ftune::context a{.mode = ftune::mode::train, .rng = ftune::generator(1)}, b = a;
    layers::dropout<double> da(0.5), db(0.5);
    const auto ya = da.forward(a, x), yb = db.forward(b, x);
    CHECK(std::equal(ya.data(), ya.data() + ya.size(), yb.data()));
    const auto yc = db.forward(b, x);
    CHECK_FALSE(std::equal(ya.data(), ya.data() + ya.size(), yc.data()));
    ftune::context eval;
    CHECK(d.forward(eval, x).data() == x.data());
    require_layer_gradients(d, eval, x);
}

TEST_CASE("embedding: table gradient with repeated ids; bad ids throw", "[gradcheck][layers]") {
    ftune::context ctx;
    layers::embedding<double, 6> e(10);
    test::randomize(e, 8);
    std::vector<ftune::token_id> ids{3, 1, 3, 9, 0};
    require_layer_gradients(e, ctx,
                            ftune::view<const ftune::token_id, shape<dynamic>>(ids.data(), 5));
    ids[2] = 10;
    CHECK_THROWS_AS(
        e.forward(ctx, ftune::view<const ftune::token_id, shape<dynamic>>(ids.data(), 5)),
        ftune::error);
}

TEST_CASE("frozen parameters get no gradient; names follow the prefix", "[layers]") {
    ftune::context ctx;
    layers::linear<float> lin(4, 3);
    lin.weight.trainable = false;
    std::vector<float> xs(2 * 4, 1.0f), dys(2 * 3, 1.0f), dxs(2 * 4, 0.0f);
    lin.forward(ctx, ftune::view<const float, shape<dynamic, dynamic>>(xs.data(), 2, 4));
    lin.backward(ctx, ftune::view<const float, shape<dynamic, dynamic>>(dys.data(), 2, 3),
                 ftune::view<float, shape<dynamic, dynamic>>(dxs.data(), 2, 4));
    for (float g : lin.weight.grad.span()) CHECK(g == 0.0f);
    for (float g : lin.bias.grad.span()) CHECK(g == 2.0f);  // Σ over 2 rows of 1
    std::vector<std::string> names;
    std::vector<bool> decay;
    lin.visit_parameters("encoder.layer.0.attention.self.query",
                         [&](ftune::parameter_ref<float> p) {
                             names.push_back(p.name);
                             decay.push_back(p.decay);
                         });
    CHECK(names == std::vector<std::string>{"encoder.layer.0.attention.self.query.weight",
                                            "encoder.layer.0.attention.self.query.bias"});
    CHECK(decay == std::vector<bool>{true, false});
}

TEST_CASE("self-attention: gradients with a padding mask, without and with dropout",
          "[gradcheck][layers]") {
    const std::size_t B = 3, T = 5, C = 8;
    layers::self_attention<double> att(C, 2, 0.2);
    test::randomize(att, 30);
    auto xs = test::randn<double>(B * T * C, 31);
    const ftune::view<double, shape<dynamic, dynamic, dynamic>> x(xs.data(), B, T, C);
    // rows of different lengths: 5, 3 (large negative) and 4 (-inf) keys
    std::vector<double> mask(B * T, 0.0);
    mask[1 * T + 3] = mask[1 * T + 4] = -10000.0;
    mask[2 * T + 4] = -std::numeric_limits<double>::infinity();
    test::masked<layers::self_attention<double>> m{att, {mask.data(), B, T}};
    ftune::context eval;
    require_layer_gradients(m, eval, x);
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(5)};
    require_layer_gradients(m, train, x);
    // names as Hugging Face's
    std::vector<std::string> names;
    att.visit_parameters("encoder.layer.0.attention.self",
                         [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names.front() == "encoder.layer.0.attention.self.query.weight");
    CHECK(names.back() == "encoder.layer.0.attention.self.value.bias");
    CHECK_THROWS_AS(layers::self_attention<double>(10, 3), ftune::error);
}

TEST_CASE("self-attention: a masked key does not change the other positions' output", "[layers]") {
    // padding invariance: changing the embedding of a masked position leaves the rest unchanged
    const std::size_t B = 1, T = 4, C = 6;
    layers::self_attention<double> att(C, 3, 0.0);
    test::randomize(att, 40);
    auto xs = test::randn<double>(B * T * C, 41);
    std::vector<double> mask{0, 0, 0, -10000.0};
    ftune::context ctx;
    const auto y1 = att.forward(ctx, {xs.data(), B, T, C}, {mask.data(), B, T});
    std::vector<double> first(y1.data(), y1.data() + 3 * C);
    for (std::size_t c = 0; c < C; ++c) xs[3 * C + c] += 5.0;
    const auto y2 = att.forward(ctx, {xs.data(), B, T, C}, {mask.data(), B, T});
    for (std::size_t i = 0; i < 3 * C; ++i) CHECK(std::abs(y2.data()[i] - first[i]) < 1e-12);
}

TEST_CASE("self-attention, causal: gradients with padding; later positions never reach earlier",
          "[gradcheck][layers]") {
    const std::size_t B = 2, T = 5, C = 6;
    layers::self_attention<double> att(C, 3, 0.2, true);
    test::randomize(att, 50);
    auto xs = test::randn<double>(B * T * C, 51);
    std::vector<double> mask(B * T, 0.0);
    mask[1 * T + 4] = -10000.0;  // batch 1 is one shorter
    test::masked<layers::self_attention<double>> m{att, {mask.data(), B, T}};
    const ftune::view<double, shape<dynamic, dynamic, dynamic>> x(xs.data(), B, T, C);
    ftune::context eval;
    require_layer_gradients(m, eval, x);
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(6)};
    require_layer_gradients(m, train, x);
    // changing position t changes no output before t; it does change position t's output
    for (std::size_t t = 1; t < T; ++t) {
        auto ys = xs;
        const auto y1 = att.forward(eval, {xs.data(), B, T, C}, {});
        const std::vector<double> before(y1.data(), y1.data() + y1.size());
        for (std::size_t c = 0; c < C; ++c) ys[t * C + c] += 1.0;  // batch 0, position t
        const auto y2 = att.forward(eval, {ys.data(), B, T, C}, {});
        for (std::size_t i = 0; i < t * C; ++i) CHECK(std::abs(y2.data()[i] - before[i]) < 1e-12);
        double changed = 0;
        for (std::size_t c = 0; c < C; ++c)
            changed += std::abs(y2.data()[t * C + c] - before[t * C + c]);
        CHECK(changed > 1e-6);
    }
}

TEST_CASE("pooler: gradients of dense and of the first token's hidden state",
          "[gradcheck][layers]") {
    ftune::context ctx;
    layers::pooler<double> pool(6);
    test::randomize(pool, 70);
    auto hs = test::randn<double>(3 * 4 * 6, 71);
    require_layer_gradients(
        pool, ctx, ftune::view<double, shape<dynamic, dynamic, dynamic>>(hs.data(), 3, 4, 6));
}

// ---------------------------------------------------------------------------------------------
// chain: composition of layers

static_assert(ftune::layer<layers::chain<layers::linear<float, 384, 256>, layers::gelu<float, 256>,
                                         layers::linear<float, 256, 2>>>);
static_assert(ftune::layer<layers::feed_forward<double>>);

TEST_CASE("chain: gradients of an MLP head, without and with dropout", "[gradcheck][layers]") {
    using mlp = layers::chain<layers::linear<double>, layers::gelu<double>, layers::dropout<double>,
                              layers::linear<double, dynamic, 3>>;
    mlp head(layers::linear<double>(7, 5), {}, layers::dropout<double>(0.25),
             layers::linear<double, dynamic, 3>(5));
    test::randomize(head, 80);
    auto xs = test::randn<double>(4 * 7, 81);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 4, 7);
    ftune::context eval;
    require_layer_gradients(head, eval, x);
    ftune::context train{.mode = ftune::mode::train, .rng = ftune::generator(9)};
    require_layer_gradients(head, train, x);
    // output shape: (4, 3) with a static last extent
    const auto y = head.forward(eval, x);
    static_assert(decltype(y)::shape_type::static_extents[1] == 3);
    CHECK(y.extent(0) == 4);
}

TEST_CASE("chain: equals the layers applied by hand; nested chains; names", "[layers]") {
    auto ffn = layers::make_feed_forward<double>(6, 10);
    test::randomize(ffn, 90);
    auto xs = test::randn<double>(3 * 6, 91);
    const ftune::view<double, shape<dynamic, dynamic>> x(xs.data(), 3, 6);
    ftune::context ctx;
    const auto y = ffn.forward(ctx, x);
    // by hand, with copies of the same parameters
    auto l0 = ffn.get<0>();
    auto l2 = ffn.get<2>();
    layers::gelu<double> act;
    const auto h = l2.forward(ctx, act.forward(ctx, l0.forward(ctx, x)));
    REQUIRE(h.size() == y.size());
    for (std::size_t i = 0; i < y.size(); ++i) CHECK(h.data()[i] == y.data()[i]);
    // with the linears' weights packed for inference: the same values
    const std::vector<double> before(y.data(), y.data() + y.size());
    ffn.prepare_inference();
    const auto yp = ffn.forward(ctx, x);
    CHECK(std::vector<double>(yp.data(), yp.data() + yp.size()) == before);
    // names: positions as nn.Sequential, or the given name
    std::vector<std::string> names;
    ffn.visit_parameters("ffn", [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    CHECK(names ==
          std::vector<std::string>{"ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias"});
    using head_t =
        layers::chain<layers::named<"dense", layers::linear<double>>, layers::tanh<double>,
                      layers::named<"out_proj", layers::linear<double>>>;
    layers::chain<layers::feed_forward<double>, head_t> both(
        layers::make_feed_forward<double>(6, 10),
        head_t(layers::linear<double>(6, 4), {}, layers::linear<double>(4, 2)));
    names.clear();
    both.visit_parameters("classifier",
                          [&](ftune::parameter_ref<double> p) { names.push_back(p.name); });
    REQUIRE(names.size() == 8);
    CHECK(names[4] == "classifier.1.dense.weight");
    CHECK(names[7] == "classifier.1.out_proj.bias");
    test::randomize(both, 92);
    require_layer_gradients(both, ctx, x);
}

TEST_CASE("chain: a first layer that takes token ids (no input gradient)", "[gradcheck][layers]") {
    layers::chain<layers::embedding<double>, layers::tanh<double>, layers::linear<double>> bag(
        layers::embedding<double>(9, 4), {}, layers::linear<double>(4, 3));
    test::randomize(bag, 95);
    std::vector<ftune::token_id> ids{3, 1, 8, 3, 0};
    ftune::context ctx;
    require_layer_gradients(bag, ctx,
                            ftune::view<const ftune::token_id, shape<dynamic>>(ids.data(), 5));
}

TEST_CASE("chain: a run-time size mismatch names the member; a missing size is an error",
          "[layers]") {
    // sizes known only at run time: 6 -> 4, then a layer that takes 5
    layers::chain<layers::linear<double>, layers::named<"out", layers::linear<double>>> bad(
        layers::linear<double>(6, 4), layers::linear<double>(5, 2));
    auto xs = test::randn<double>(2 * 6, 93);
    ftune::context ctx;
    try {
        bad.forward(ctx, {xs.data(), 2, 6});
        FAIL("a chain whose neighbours disagree ran");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::shape_mismatch);
        CHECK(e.context().find("chain member out") == 0);
    }
    // ftune::dynamic is not a size
    CHECK_THROWS_AS(layers::linear<double>(), ftune::error);
    CHECK_THROWS_AS(layers::layer_norm<float>(), ftune::error);
}
