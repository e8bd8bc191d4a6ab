// A consumer that compiles with -Wall -Wextra -Wpedantic -Werror, optimized: every warning from
// ftune's headers fails the build (GCC 12's AVX-512 intrinsics used to give hundreds of
// -Wmaybe-uninitialized). It instantiates the headline path for each task model: load a Hugging
// Face directory, train, evaluate, save, prepare for inference, serve. Compiled, never run.
#include <ftune/ftune.hpp>
#include <ftune/io.hpp>
#include <ftune/serve.hpp>
#include <ftune/train/trainer.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace {

// load_hf -> fit -> evaluate -> save_hf -> prepare_inference -> an eval-mode forward.
template <class Model>
void headline_path(const std::filesystem::path& dir,
                   const std::vector<ftune::train::example>& data) {
    auto m = ftune::io::load_hf<Model>(dir, {.labels = {"a", "b"}});
    ftune::train::trainer<Model> t(m.model, {.epochs = 1});
    t.fit(data, data);
    t.evaluate(data);
    ftune::io::save_hf(m, dir / "out");
    m.model.prepare_inference();
    ftune::context ctx;
    const std::vector<ftune::token_id> ids = {101, 102};
    m.model.forward(ctx, {ids.data(), 1, 2});
}

}  // namespace

// Called by nothing: the point is that it compiles without a warning.
void ftune_consumer_warnings(const std::filesystem::path& dir) {
    using encoder = ftune::bert::encoder<float>;
    const std::vector<ftune::train::example> data;
    headline_path<ftune::bert::sequence_classifier<encoder>>(dir, data);
    headline_path<ftune::bert::token_classifier<encoder>>(dir, data);
    headline_path<ftune::bert::question_answering<encoder>>(dir, data);
    headline_path<ftune::bert::masked_lm<encoder>>(dir, data);
    ftune::serve::text_classifier<> served(
        ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir));
    served.predict("text");
    ftune::io::with_family("bert", [](auto) {});  // the family registry's error path too
    // the double-precision primitives too (reductions, softmax)
    ftune::bert::sequence_classifier<ftune::bert::encoder<double>> d(ftune::bert::config{});
    ftune::context ctx;
    const std::vector<ftune::token_id> ids = {101, 102};
    d.forward(ctx, {ids.data(), 1, 2});
}
