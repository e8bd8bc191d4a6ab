// A build without the bf16 kernels (FTUNE_NO_BF16_KERNELS, as a compiler without AVX512-BF16
// intrinsics gives): the path every CPU without AVX512-BF16 takes, checked on any machine.
// Every bf16 request fails with errc::unsupported saying what to do; fp32 is untouched.
#include <ftune/bert/tasks.hpp>
#include <ftune/ops.hpp>
#include <ftune/train/trainer.hpp>

#include <vector>

#include "catch.hpp"

#ifndef FTUNE_NO_BF16_KERNELS
#error "test_bf16_absent is built with FTUNE_NO_BF16_KERNELS"
#endif

namespace cpu = ftune::backends::cpu;

TEST_CASE("without the bf16 kernels, bf16 requests are clear errors and fp32 still runs",
          "[bf16]") {
    CHECK_FALSE(cpu::bf16_supported());
    CHECK(ftune::ops::supports(ftune::precision::fp32));
    CHECK_FALSE(ftune::ops::supports(ftune::precision::bf16));
    CHECK(ftune::ops::supports<ftune::device::reference>(ftune::precision::bf16));
    std::vector<float> a(6, 1.0f), b(6, 2.0f), c(4, 0.0f);
    try {
        cpu::gemm_bf16(ftune::transpose::no, ftune::transpose::no, 2, 2, 3, 1.0f, a.data(), 3,
                       b.data(), 2, 0.0f, c.data(), 2);
        FAIL("gemm_bf16 ran without kernels");
    } catch (const ftune::error& e) {
        CHECK(e.id() == ftune::errc::unsupported);
        CHECK_THAT(e.what(), Catch::Contains("--precision fp32"));
    }
    // a weight packed in bf16 is refused when the product runs
    cpu::packed_b<float> packed;
    packed.pack(b.data(), 2, ftune::transpose::no, 3, 2, ftune::precision::bf16);
    CHECK_THROWS_WITH(cpu::gemm_packed(ftune::transpose::no, 2, 2, 3, 1.0f, a.data(), 3, packed,
                                       0.0f, c.data(), 2),
                      Catch::Contains("bf16"));
    // fp32 is as before
    cpu::gemm(ftune::transpose::no, ftune::transpose::no, 2, 2, 3, 1.0f, a.data(), 3, b.data(), 2,
              0.0f, c.data(), 2);
    CHECK(c == std::vector<float>(4, 6.0f));
    // a model: a bf16 forward and bf16 prepared inference fail, naming the fix
    ftune::bert::config cfg{.vocab_size = 20,
                            .hidden_size = 8,
                            .num_hidden_layers = 1,
                            .num_attention_heads = 2,
                            .intermediate_size = 16,
                            .max_position_embeddings = 8};
    cfg.num_labels = 2;
    ftune::bert::sequence_classifier<> model(cfg);
    std::vector<ftune::token_id> ids{1, 2, 3, 4}, mask(4, 1);
    ftune::context ctx{.mode = ftune::mode::train, .precision = ftune::precision::bf16};
    CHECK_THROWS_WITH(model.forward(ctx, {ids.data(), 1, 4}, {mask.data(), 1, 4}),
                      Catch::Contains("--precision fp32"));
    ctx.precision = ftune::precision::fp32;
    CHECK_NOTHROW(model.forward(ctx, {ids.data(), 1, 4}, {mask.data(), 1, 4}));
    model.prepare_inference(ftune::precision::bf16);
    ftune::context eval;
    CHECK_THROWS_WITH(model.forward(eval, {ids.data(), 1, 4}, {mask.data(), 1, 4}),
                      Catch::Contains("bf16"));
    // the trainer refuses before the first step
    ftune::train::trainer<ftune::bert::sequence_classifier<>> t(
        model, {.epochs = 1, .precision = ftune::precision::bf16, .progress = nullptr});
    std::vector<ftune::train::example> xs(2);
    for (auto& x : xs) x.ids = {1, 2, 3}, x.types = {0, 0, 0}, x.labels = {0};
    CHECK_THROWS_WITH(t.fit(xs, {}), Catch::Contains("trainer (precision bf16)"));
}
