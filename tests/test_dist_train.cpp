// What data-parallel training rests on, in one process (no MPI): the slices of a batch that
// ranks compute, each weighed by its share of the batch's loss (head.loss_weight), add up to the
// whole batch's loss and gradient for every head (class weights, padding, labelled positions,
// shifted causal-LM labels), with dropout active: each example draws its own mask
// (context::dropout_examples), so a row gets the same mask in a slice as in the whole batch;
// and the trainer's virtual ranks (what an N-rank run computes) follow the one-process run.
#include <ftune/io/hf.hpp>
#include <ftune/llama/tasks.hpp>
#include <ftune/train/trainer.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {
namespace fs = std::filesystem;
const fs::path fixtures = fs::path(FTUNE_REFERENCE_DIR);

enum class labels { row, token, span, multi };

// A batch of B rows of random ids in [4, vocab) and lengths from 3 to T (padding after), with
// labels of the given kind (token: about half the positions labelled, -100 elsewhere).
ftune::train::batch random_batch(std::size_t B, std::size_t T, std::size_t vocab, std::size_t L,
                                 labels kind, std::uint64_t seed) {
    const ftune::random_stream s(seed, 1);
    ftune::train::batch b;
    b.B = B, b.T = T;
    b.ids.assign(B * T, 0), b.mask.assign(B * T, 0), b.types.assign(B * T, 0);
    if (kind == labels::token) b.labels.assign(B * T, -100);
    std::uint64_t k = 0;
    for (std::size_t r = 0; r < B; ++r) {
        const std::size_t len = 3 + s.below(k++, std::uint32_t(T - 2));
        for (std::size_t t = 0; t < len; ++t) {
            b.ids[r * T + t] = ftune::token_id(4 + s.below(k++, std::uint32_t(vocab - 4)));
            b.mask[r * T + t] = 1;
            if (kind == labels::token && s.uniform(k++) < 0.5f)
                b.labels[r * T + t] = ftune::token_id(s.below(k++, std::uint32_t(L)));
        }
        if (kind == labels::row)
            b.labels.push_back(ftune::token_id(s.below(k++, std::uint32_t(L))));
        if (kind == labels::span) {
            const auto a = ftune::token_id(s.below(k++, std::uint32_t(len)));
            b.labels.push_back(a),
                b.labels.push_back(a + ftune::token_id(s.below(k++, 2)) % ftune::token_id(len));
        }
        if (kind == labels::multi)
            for (std::size_t j = 0; j < L; ++j)
                b.targets.push_back(s.uniform(k++) < 0.4f ? 1.f : 0.f);
    }
    return b;
}

// One training batch as the trainer computes it (forward, the head's loss with `scale`,
// backward): the loss.
template <class Model>
double train_batch(Model& m, ftune::context& ctx, const ftune::train::batch& b, float scale) {
    if constexpr (requires { m.loss_backward(ctx, b, scale); }) {
        return m.loss_backward(ctx, b, scale);
    } else {
        const auto y = m.forward(ctx, {b.ids.data(), b.B, b.T}, {b.mask.data(), b.B, b.T},
                                 {b.types.data(), b.B, b.T});
        std::vector<float> d(y.size(), 0.0f);
        const double l = m.head.loss(y, b, d.data(), scale);
        m.backward(ctx, typename Model::output_view(d.data(), y.shape()));
        return l;
    }
}

template <class Model>
std::vector<float> gradients(Model& m) {
    std::vector<float> g;
    m.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        g.insert(g.end(), p.grad.begin(), p.grad.end());
    });
    return g;
}

// The largest |a - b| over the largest |a|.
double relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
    REQUIRE(a.size() == b.size());
    double d = 0, scale = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        d = std::max(d, double(std::abs(a[i] - b[i]))),
        scale = std::max(scale, double(std::abs(a[i])));
    return scale > 0 ? d / scale : d;
}

// The loss and gradient of batch b whole, and as `parts` slices each weighed by its share, in
// training mode (dropout keyed per example unless `keyed` is false); returns the relative
// difference of the gradients and checks the losses.
template <class Model>
double whole_vs_slices(Model& m, const ftune::train::batch& b, std::size_t parts,
                       bool keyed = true) {
    ftune::context ctx{.mode = ftune::mode::train, .rng = ftune::generator(5)};
    m.zero_grad();
    ctx.rng.set_position(3 << 16);
    ctx.dropout_examples = keyed ? b.B : 0, ctx.first_example = 0;
    const double whole = train_batch(m, ctx, b, 1.0f);
    const auto g = gradients(m);
    m.zero_grad();
    const double w = m.head.loss_weight(b);
    REQUIRE(w > 0);
    double sum = 0;
    ftune::train::batch slice;
    for (std::size_t r = 0; r < parts; ++r) {
        const std::size_t r0 = b.B * r / parts, r1 = b.B * (r + 1) / parts;
        ftune::train::slice_rows(slice, b, r0, r1);
        CHECK(slice.T == b.T);
        ctx.rng.set_position(3 << 16);
        ctx.dropout_examples = keyed ? r1 - r0 : 0, ctx.first_example = r0;
        const double share = m.head.loss_weight(slice) / w;
        sum += train_batch(m, ctx, slice, float(share)) * share;
    }
    INFO("loss " << whole << " whole, " << sum << " from " << parts << " slices");
    if (keyed) CHECK(std::abs(whole - sum) <= 1e-5 * std::max(1.0, std::abs(whole)));
    return relative_difference(g, gradients(m));
}

template <class Model>
auto load(const fs::path& dir, std::size_t labels_count = 0) {
    std::vector<std::string> names;
    for (std::size_t i = 0; i < labels_count; ++i) names.push_back("L" + std::to_string(i));
    return ftune::io::load_hf<Model>(dir, {.labels = names, .seed = 7});
}
}  // namespace

TEST_CASE("slices of a batch, weighed by their loss share, add up to the batch: every head",
          "[unit][dist]") {
    const auto heads = fixtures / "hf_heads";
    SECTION("sequence classification: single label, class weights, multi-label, regression") {
        auto m = load<ftune::bert::sequence_classifier<>>(heads / "seq", 3);
        const auto b = random_batch(7, 12, 35, 3, labels::row, 1);
        CHECK(whole_vs_slices(m.model, b, 2) <= 1e-5);
        CHECK(whole_vs_slices(m.model, b, 3) <= 1e-5);
        m.model.head.set_loss_options({.class_weights = {0.5, 2.0, 1.0}});
        CHECK(whole_vs_slices(m.model, b, 3) <= 1e-5);
        m.model.head.set_loss_options({});
        m.model.head.problem = ftune::heads::problem::multi_label_classification;
        CHECK(whole_vs_slices(m.model, random_batch(5, 9, 35, 3, labels::multi, 2), 2) <= 1e-5);
        // the same without per-example dropout masks: a slice draws other masks, so the test
        // can tell (what the keyed masks are for)
        m.model.head.problem = ftune::heads::problem::single_label_classification;
        CHECK(whole_vs_slices(m.model, b, 2, false) > 1e-3);
    }
    SECTION("token classification with class weights, masked LM, question answering") {
        auto t = load<ftune::bert::token_classifier<>>(heads / "token", 5);
        t.model.head.set_loss_options({.class_weights = {1.0, 3.0, 0.5, 1.0, 2.0}});
        CHECK(whole_vs_slices(t.model, random_batch(6, 10, 35, 5, labels::token, 3), 4) <= 1e-5);
        auto mlm = load<ftune::bert::masked_lm<>>(heads / "mlm");
        CHECK(whole_vs_slices(mlm.model, random_batch(5, 10, 35, 35, labels::token, 4), 2) <= 1e-5);
        auto qa = load<ftune::bert::question_answering<>>(heads / "qa");
        CHECK(whole_vs_slices(qa.model, random_batch(5, 11, 35, 0, labels::span, 5), 3) <= 1e-5);
    }
    SECTION("decoders: causal LM (shifted labels, the chunked loss) and last-token classifier") {
        auto lm = load<ftune::llama::causal_lm<>>(fixtures / "hf_llama" / "untied");
        lm.model.head.loss_chunk_rows = 5;
        CHECK(whole_vs_slices(lm.model, random_batch(5, 9, 48, 48, labels::token, 6), 2) <= 1e-5);
        auto cls = load<ftune::llama::sequence_classifier<>>(fixtures / "hf_llama" / "untied", 3);
        CHECK(whole_vs_slices(cls.model, random_batch(5, 9, 48, 3, labels::row, 8), 2) <= 1e-5);
    }
}

TEST_CASE("slice_rows: rows of a batch at its length; bad ranges are errors", "[unit][dist]") {
    const auto b = random_batch(4, 6, 35, 3, labels::token, 9);
    ftune::train::batch s;
    ftune::train::slice_rows(s, b, 1, 3);
    CHECK(s.B == 2);
    CHECK(s.T == 6);
    CHECK(std::vector<ftune::token_id>(b.ids.begin() + 6, b.ids.begin() + 18) == s.ids);
    CHECK(std::vector<ftune::token_id>(b.labels.begin() + 6, b.labels.begin() + 18) == s.labels);
    ftune::train::slice_rows(s, b, 2, 2);
    CHECK(s.B == 0);
    CHECK(s.ids.empty());
    CHECK_THROWS_WITH(ftune::train::slice_rows(s, b, 3, 5), Catch::Contains("rows [3, 5)"));
}

TEST_CASE("virtual ranks: the N-rank computation in one process follows the one-process run",
          "[unit][dist]") {
    // a short fine-tuning with dropout, accumulation and a last batch smaller than the ranks
    using Model = ftune::bert::sequence_classifier<>;
    const auto heads = fixtures / "hf_heads";
    std::vector<ftune::train::example> xs;
    const auto b = random_batch(43, 12, 35, 3, labels::row, 10);
    for (std::size_t r = 0; r < b.B; ++r) {
        ftune::train::example x;
        for (std::size_t t = 0; t < b.T && b.mask[r * b.T + t]; ++t)
            x.ids.push_back(b.ids[r * b.T + t]), x.types.push_back(0);
        x.labels = {b.labels[r]};
        xs.push_back(x);
    }
    const auto start = [&] {
        auto m = load<Model>(heads / "seq", 3);
        std::vector<float> v;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            v.insert(v.end(), p.value.begin(), p.value.end());
        });
        return v;
    }();
    auto run = [&](std::size_t ranks, bool sgd) {
        auto m = load<Model>(heads / "seq", 3);
        ftune::train::trainer<Model> t(m.model, {.epochs = 2,
                                                 .batch_size = 7,
                                                 .lr = sgd ? 0.1 : 1e-3,
                                                 .grad_accum = 2,
                                                 .progress = nullptr,
                                                 .virtual_ranks = ranks});
        if (sgd) t.optimizer.emplace(ftune::optim::sgd<float>({.lr = 0.1, .momentum = 0.9}), "sgd");
        const auto r = t.fit(xs, {});
        CHECK(r.steps == 8);
        std::vector<float> v;
        m.model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
            v.insert(v.end(), p.value.begin(), p.value.end());
        });
        return std::pair{v, t.history.back().loss};
    };
    for (const bool sgd : {true, false}) {
        const auto [one, loss1] = run(1, sgd);
        for (const std::size_t n : {2, 3, 8}) {
            INFO(n << " virtual ranks, " << (sgd ? "SGD" : "AdamW"));
            const auto [v, loss] = run(n, sgd);
            // the same run up to the order of float sums: the weights' distance from the
            // one-process run against how far 8 steps moved them. SGD is linear in the
            // gradients, so that is the gradients' float error; AdamW divides each coordinate
            // by its own scale, so a last-bit difference in a gradient near zero moves that
            // coordinate by up to 2 lr: a looser bound
            double d = 0, moved = 0;
            for (std::size_t i = 0; i < one.size(); ++i)
                d += std::pow(double(one[i] - v[i]), 2),
                    moved += std::pow(double(one[i] - start[i]), 2);
            d = std::sqrt(d), moved = std::sqrt(moved);
            INFO("|w - w1| " << d << ", |w1 - w0| " << moved);
            CHECK(d <= (sgd ? 1e-5 : 1e-2) * moved);
            CHECK(d > 0);  // the sums did run in another order
            CHECK(std::abs(loss - loss1) <= (sgd ? 1e-5 : 1e-3) * std::abs(loss1));
        }
    }
}
