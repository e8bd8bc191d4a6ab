// train::trainer with a dist::mpi_group under `mpirun -np N` (ctest: N = 2 and 3): a user
// callback that asks for a stop on one rank only stops every rank at the same step (the flags
// are agreed, not left to hang the others in the next sum); the sharded evaluation of a token
// classifier (per-word NER report) and of a masked LM (masks drawn per evaluation batch) equals,
// bit for bit, the evaluation of the same model in one process. Exits 0 and prints
// "dist trainer: all checks passed" on rank 0 when every rank passed.
#include <ftune/dist/mpi.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/train/trainer.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {

int failures = 0;

void expect(bool ok, const std::string& what, std::size_t rank) {
    if (ok) return;
    std::fprintf(stderr, "rank %zu: FAILED: %s\n", rank, what.c_str());
    ++failures;
}

// n examples of random ids in [4, 35) and lengths 3..12; per-token labels in [0, L) on about
// half the positions (-100 elsewhere), or one label per example.
std::vector<ftune::train::example> examples(std::size_t n, std::size_t L, bool per_token,
                                            std::uint64_t seed) {
    const ftune::random_stream s(seed, 3);
    std::vector<ftune::train::example> xs(n);
    std::uint64_t k = 0;
    for (auto& x : xs) {
        const std::size_t len = 3 + s.below(k++, 10);
        for (std::size_t t = 0; t < len; ++t) {
            x.ids.push_back(ftune::token_id(4 + s.below(k++, 31)));
            x.types.push_back(0);
            if (per_token)
                x.labels.push_back(s.uniform(k++) < 0.5f ? ftune::token_id(s.below(k++, 5))
                                                         : ftune::token_id(-100));
        }
        if (!per_token) x.labels = {ftune::token_id(s.below(k++, std::uint32_t(L)))};
    }
    return xs;
}

// Bitwise equality of two evaluations' numbers and lists.
bool same(const ftune::train::evaluation& a, const ftune::train::evaluation& b) {
    auto bits = [](double x, double y) { return std::memcmp(&x, &y, sizeof x) == 0; };
    return bits(a.loss, b.loss) && bits(a.accuracy, b.accuracy) && bits(a.f1, b.f1) &&
           bits(a.metric, b.metric) && a.gold == b.gold && a.predicted == b.predicted &&
           a.gold_tags == b.gold_tags && a.predicted_tags == b.predicted_tags;
}

// Asks for a stop at step `at` on rank `on` only.
struct stop_on_one_rank : ftune::train::callback {
    std::size_t at, on, me;
    stop_on_one_rank(std::size_t a, std::size_t o, std::size_t m) : at(a), on(o), me(m) {}
    void on_step_end(const ftune::train::state& s, ftune::train::control& c) override {
        if (me == on && s.step == at) c.should_stop = true;
    }
};

}  // namespace

int main(int argc, char** argv) {
    ftune::dist::mpi_session mpi(argc, argv);
    ftune::dist::mpi_group g;
    g.set_timeout(std::chrono::seconds(30));
    const std::size_t me = g.rank(), N = g.size();
    const std::filesystem::path heads = std::filesystem::path(FTUNE_REFERENCE_DIR) / "hf_heads";
    const std::vector<std::string> five{"O", "B-PER", "I-PER", "B-LOC", "I-LOC"};
    try {
        {  // a stop asked on the last rank alone, at step 3 of 12: every rank stops there
            using Model = ftune::bert::sequence_classifier<>;
            auto m = ftune::io::load_hf<Model>(heads / "seq", {.labels = {"a", "b", "c"}});
            ftune::train::trainer<Model> t(
                m.model, {.epochs = 2, .batch_size = 8, .progress = nullptr, .group = &g});
            t.callbacks.push_back(std::make_unique<stop_on_one_rank>(3, N - 1, me));
            const auto r = t.fit(examples(48, 3, false, 1), {});
            expect(r.steps == 3 && r.interrupted, "every rank stopped at step 3", me);
        }
        {  // the sharded evaluation of a token classifier: one process's report, bit for bit
            using Model = ftune::bert::token_classifier<>;
            auto m = ftune::io::load_hf<Model>(heads / "token", {.labels = five});
            const auto xs = examples(37, 5, true, 2);
            ftune::train::trainer<Model> alone(m.model, {.batch_size = 4, .progress = nullptr},
                                               five);
            ftune::train::trainer<Model> sharded(
                m.model, {.batch_size = 4, .progress = nullptr, .group = &g}, five);
            const auto a = alone.evaluate(xs), b = sharded.evaluate(xs);
            expect(same(a, b) && !a.gold_tags.empty(), "token classification evaluation", me);
        }
        {  // the same for a masked LM (the masks of each evaluation batch)
            using Model = ftune::bert::masked_lm<>;
            auto m = ftune::io::load_hf<Model>(heads / "mlm");
            auto xs = examples(29, 0, true, 3);
            for (auto& x : xs) x.labels.assign(x.ids.size(), -100);
            const ftune::train::mlm_masking masking{
                .mask_id = 3, .vocab_size = 35, .special = {0, 1, 2, 3}};
            ftune::train::trainer<Model> alone(m.model, {.batch_size = 5, .progress = nullptr});
            ftune::train::trainer<Model> sharded(
                m.model, {.batch_size = 5, .progress = nullptr, .group = &g});
            alone.masking = sharded.masking = masking;
            const auto a = alone.evaluate(xs), b = sharded.evaluate(xs);
            expect(same(a, b) && a.loss > 0, "masked-LM evaluation", me);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %zu: FAILED: %s\n", me, e.what());
        ++failures;
    }
    // every rank's verdict, so that rank 0 reports the job's
    const double mine = failures;
    const auto all = g.all_gather(std::span<const double>(&mine, 1));
    double total = 0;
    for (const double f : all) total += f;
    if (me == 0) {
        if (total == 0)
            std::printf("dist trainer: all checks passed (%zu ranks)\n", N);
        else
            std::printf("dist trainer: %g failures\n", total);
    }
    return total == 0 ? 0 : 1;
}
