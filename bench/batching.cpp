// Batching a served classifier, in process (no HTTP): the sentences of a TSV file predicted one
// at a time, then in batches of 2, 4, 8 and 16 in file order, padded to the longest of each
// batch (model.forward with a key mask) and ragged (serve::text_classifier::predict_batch:
// one after another without padding, attention within each). Prints sentences per second and
// each batch mode's speed-up over single predictions, for docs/performance.md.
//   build/bin/ftune_bench_batching MODEL_DIR SENTENCES.tsv [ROUNDS]
#include <ftune/data/readers.hpp>
#include <ftune/serve.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

int main(int argc, char** argv) try {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR SENTENCES.tsv [ROUNDS]\n", argv[0]);
        return 2;
    }
    using model_type = ftune::bert::sequence_classifier<>;
    const ftune::serve::text_classifier<model_type> clf(ftune::io::load_hf<model_type>(argv[1]));
    auto m = ftune::io::load_hf<model_type>(argv[1]);  // the padded path, on its own copy
    m.model.prepare_inference();
    ftune::context eval;
    std::vector<ftune::serve::text_input> in;
    for (const auto& r : ftune::data::read_table(argv[2]).rows)
        in.push_back({r.text, std::nullopt});
    const int rounds = argc > 3 ? std::atoi(argv[3]) : 2;
    using clock = std::chrono::steady_clock;
    auto per_second = [&](auto&& run) {
        const auto t0 = clock::now();
        run();
        return double(in.size()) / std::chrono::duration<double>(clock::now() - t0).count();
    };
    // one padded forward (B, T) of inputs [i, i + g), T their longest
    auto padded = [&](std::size_t i, std::size_t g) {
        std::vector<ftune::text::encoding> es;
        std::size_t T = 0;
        for (std::size_t k = i; k < i + g; ++k) {
            es.push_back(clf.tokenizer().encode(in[k].text, std::nullopt, clf.max_length()));
            T = std::max(T, es.back().ids.size());
        }
        std::vector<ftune::token_id> ids, mask, types;
        for (auto& e : es) {
            clf.tokenizer().pad(e, T);
            ids.insert(ids.end(), e.ids.begin(), e.ids.end());
            mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
            types.insert(types.end(), e.type_ids.begin(), e.type_ids.end());
        }
        m.model.forward(eval, {ids.data(), g, T}, {mask.data(), g, T}, {types.data(), g, T});
    };
    for (int round = 0; round < rounds; ++round) {
        const double single = per_second([&] {
            for (const auto& x : in) clf.predict(x.text);
        });
        std::printf("round %d: single %.1f sentences/s\n", round + 1, single);
        for (const std::size_t g : {2, 4, 8, 16}) {
            const double pad = per_second([&] {
                for (std::size_t i = 0; i < in.size(); i += g)
                    padded(i, std::min(g, in.size() - i));
            });
            const double ragged = per_second([&] {
                for (std::size_t i = 0; i < in.size(); i += g)
                    clf.predict_batch(std::span(in).subspan(i, std::min(g, in.size() - i)));
            });
            std::printf("  batch %2zu: padded %.1f/s (%.2fx), ragged %.1f/s (%.2fx)\n", g, pad,
                        pad / single, ragged, ragged / single);
        }
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
}
