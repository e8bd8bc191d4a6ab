// The pieces decoder models add (issue 16), against Transformers: rotary position embeddings as
// Llama applies them (tests/reference/rope_parity.py), and the Llama decoder composed from ftune's
// layers against LlamaModel (tests/reference/llama_parity.py).
#include <ftune/backends/cpu/primitives.hpp>
#include <ftune/backends/reference/primitives.hpp>
#include <ftune/io/safetensors.hpp>
#include <ftune/llama/decoder.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "util.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace ref = ftune::backends::reference;
namespace cpu = ftune::backends::cpu;
using test::require_close;

TEMPLATE_TEST_CASE("rotary embeddings equal Transformers' Llama; the inverse undoes them",
                   "[primitives][parity]", float, double) {
    using T = TestType;
    const ftune::io::safetensors_file f(std::string(FTUNE_REFERENCE_DIR) + "/rope.safetensors");
    const std::string suffix = std::is_same_v<T, float> ? "f32" : "f64";
    const auto q = f.read<T>(f.at("q_" + suffix));
    const auto want = f.read<T>(f.at("rotated_" + suffix));
    const auto pos = test::read_ids(f, "positions");
    const std::size_t rows = pos.size(), heads = 3, half = 8;
    REQUIRE(q.size() == rows * heads * 2 * half);
    std::vector<T> c(rows * half), s(rows * half);
    ref::rope_table(c.data(), s.data(), pos.data(), rows, half, 100000.0);
    auto x = q;
    cpu::rope_apply(x.data(), heads * 2 * half, c.data(), s.data(), rows, heads, half, false);
    // float: the float32 operations Transformers runs (cos and sin may differ by an ulp);
    // double: angles in float64 on both sides (tests/reference/hf_float64.py)
    require_close(x, want, std::is_same_v<T, float> ? 2e-6 : 1e-12, "rotated q");
    // the inverse is the transpose, the exact adjoint the backward needs
    cpu::rope_apply(x.data(), heads * 2 * half, c.data(), s.data(), rows, heads, half, true);
    require_close(x, q, std::is_same_v<T, float> ? 4e-6 : 1e-13, "rotated back");
    // position 0 is the identity
    auto y = q;
    ref::rope_apply(y.data(), heads * 2 * half, c.data(), s.data(), 1, heads, half, false);
    CHECK(std::equal(y.begin(), y.begin() + heads * 2 * half, q.begin()));
}

TEST_CASE("Llama decoder equals Transformers' LlamaModel: hidden states and every gradient",
          "[parity]") {
    // fixture: tests/reference/llama_parity.py (float64, eager attention, a padded batch)
    const ftune::io::safetensors_file f(std::string(FTUNE_REFERENCE_DIR) +
                                        "/llama_parity.safetensors");
    const ftune::llama::config cfg{.vocab_size = 40,
                                   .hidden_size = 32,
                                   .intermediate_size = 48,
                                   .num_hidden_layers = 2,
                                   .num_attention_heads = 4,
                                   .num_key_value_heads = 2,
                                   .max_position_embeddings = 64,
                                   .rms_norm_eps = 1e-5,
                                   .rope_theta = 500.0};
    ftune::llama::decoder<double> model(cfg);
    std::size_t loaded = 0;
    model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        const auto& t = f.at("param." + p.name);
        REQUIRE(t.numel() == p.value.size());
        f.read(t, p.value);
        ++loaded;
    });
    CHECK(loaded == 1 + 2 * 9 + 1);
    const auto ids = test::read_ids(f, "input_ids"), mask = test::read_ids(f, "attention_mask");
    const std::size_t B = 2, T = 7;
    ftune::context ctx;
    const auto h = model.forward(ctx, {ids.data(), B, T}, {mask.data(), B, T});
    const auto want = f.read<double>(f.at("hidden"));
    require_close(std::vector<double>(h.data(), h.data() + h.size()), want, 1e-10,
                  "last_hidden_state");
    const auto r = f.read<double>(f.at("r"));
    model.zero_grad();
    model.backward(ctx, {r.data(), B, T, 32});
    model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        const auto g = f.read<double>(f.at("grad." + p.name));
        require_close(std::vector<double>(p.grad.begin(), p.grad.end()), g, 1e-9,
                      "gradient of " + p.name);
    });
}
