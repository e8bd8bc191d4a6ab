// docs/extending.md, "Add a head": a classifier over the mean of the token states (the pooling
// of sentence-transformers) instead of [CLS], as one new type. Put on an encoder with
// task_model<Backbone, Head>, it is gradient-checked and then trained by train::trainer, which
// takes its loss, its evaluation and its report from the head.
//
//   build/bin/extending_add_head     prints the check and the accuracy before/after; exit 1 on
//                                    failure
#include <ftune/ftune.hpp>
#include <ftune/train/trainer.hpp>

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

using ftune::dynamic;
using ftune::shape;

namespace my {

/// Logits (B, L) = classifier(mean over the unmasked positions of h) for hidden states h
/// (B, T, C). Parameters "classifier.weight" (L, C) and "classifier.bias".
template <ftune::scalar T, std::size_t C = dynamic, class D = ftune::device::cpu>
class mean_pooled_classification {
  public:
    // -- what task_model and the concept `head` need ------------------------------------------
    using value_type = T;                                                     ///< scalar type
    using hidden_view = ftune::view<const T, shape<dynamic, dynamic, C>, D>;  ///< (B, T, C)
    using output_view = ftune::view<const T, shape<dynamic, dynamic>, D>;     ///< (B, L)
    static constexpr std::string_view architecture_suffix = "ForMeanPooledClassification";
    static constexpr bool first_token_only = false;  ///< reads every position
    static constexpr bool labels_per_token = false;  ///< one label per sequence
    static constexpr bool masked_inputs = false;     ///< inputs as given

    ftune::layers::linear<T, C, dynamic, D> classifier;  ///< "classifier" (L, C)

    /// A zero-initialized head for a family's config (hidden_size, num_labels).
    template <class Config>
    explicit mean_pooled_classification(const Config& c)
        : classifier(c.hidden_size, c.num_labels) {}

    /// The number of labels.
    std::size_t num_labels() const { return classifier.out_features(); }

    /// Mean over the positions, then the classifier. (Padding would be excluded through the
    /// attention mask; this example's batches are unpadded.)
    template <class Backbone>
    output_view forward(ftune::context& ctx, Backbone&, hidden_view h) {
        const std::size_t B = h.extent(0), Tn = h.extent(1), Cn = h.extent(2);
        T_ = Tn;
        mean_.resize(shape<dynamic, C>(B, Cn));  // (B, C)
        mean_.fill(T(0));
        for (std::size_t b = 0; b < B; ++b)
            for (std::size_t t = 0; t < Tn; ++t)
                for (std::size_t c = 0; c < Cn; ++c) mean_(b, c) += h(b, t, c) / T(Tn);
        const auto y = classifier.forward(ctx, mean_.view());
        return {y.data(), y.extent(0), y.extent(1)};
    }

    /// d mean = classifierᵀ d logits, spread evenly over the positions: d hidden (B, T, C).
    template <class Backbone>
    hidden_view backward(ftune::context& ctx, Backbone&, output_view d_logits) {
        const std::size_t B = d_logits.extent(0), Cn = mean_.extent(1);
        d_mean_.resize(shape<dynamic, C>(B, Cn));
        d_mean_.fill(T(0));
        classifier.backward(ctx, {d_logits.data(), B, d_logits.extent(1)}, d_mean_.view());
        d_hidden_.resize(shape<dynamic, dynamic, C>(B, T_, Cn));
        for (std::size_t b = 0; b < B; ++b)
            for (std::size_t t = 0; t < T_; ++t)
                for (std::size_t c = 0; c < Cn; ++c) d_hidden_(b, t, c) = d_mean_(b, c) / T(T_);
        return d_hidden_.view();
    }

    void prepare_inference() { classifier.prepare_inference(); }  ///< packs W
    void zero_grad() { classifier.zero_grad(); }                  ///< clears the gradients
    /// Visits "classifier.*" under prefix (nothing under the backbone's prefix).
    template <class Fn>
    void visit_parameters(std::string_view prefix, std::string_view, Fn&& f) {
        classifier.visit_parameters(ftune::join_name(prefix, "classifier"), f);
    }

    // -- the task, for train::trainer -------------------------------------------------------------
    /// Options of the training loss.
    void set_loss_options(const ftune::loss::cross_entropy_options& o) { ce_.options = o; }
    /// Cross-entropy of a batch; d += scale * its gradient.
    double loss(output_view y, const ftune::train::batch& b, T* d, T scale) {
        const double l = double(ce_.forward({y.data(), b.B, y.extent(1)}, {b.labels.data(), b.B}));
        ce_.backward({d, b.B, y.extent(1)}, scale);
        return l;
    }
    /// The denominator of the loss's mean over b (its rows): what a data-parallel rank's slice
    /// of b is weighed by (train::options::group).
    double loss_weight(const ftune::train::batch& b) const { return double(b.B); }
    /// Adds a batch's predictions (argmax) and loss to the evaluation.
    void score(output_view y, const ftune::train::batch& b, ftune::train::evaluation& e,
               const std::vector<std::string>&) {
        ftune::loss::cross_entropy<T> ce;
        e.running.loss +=
            double(ce.forward({y.data(), b.B, y.extent(1)}, {b.labels.data(), b.B})) * double(b.B);
        e.running.weight += double(b.B);
        for (std::size_t r = 0; r < b.B; ++r) {
            std::size_t best = 0;
            for (std::size_t j = 1; j < y.extent(1); ++j)
                if (y(r, j) > y(r, best)) best = j;
            e.gold.push_back(b.labels[r]), e.predicted.push_back(int(best));
        }
    }
    /// Accuracy is the selection metric.
    void finish(ftune::train::evaluation& e) const {
        e.loss = e.running.loss / e.running.weight;
        e.accuracy = ftune::metrics::accuracy(e.gold, e.predicted);
        e.metric = e.accuracy;
    }
    std::string metric_name() const { return "accuracy"; }  ///< the selection metric's name
    /// scikit-learn's classification report.
    std::string report(const ftune::train::evaluation& e,
                       const std::vector<std::string>& names) const {
        return ftune::metrics::classification_report(e.gold, e.predicted, names);
    }

  private:
    std::size_t T_ = 0;                                         // the last forward's length
    ftune::buffer<T, shape<dynamic, C>, D> mean_, d_mean_;      // (B, C)
    ftune::buffer<T, shape<dynamic, dynamic, C>, D> d_hidden_;  // (B, T, C)
    ftune::loss::cross_entropy<T> ce_;                          // the training loss
};

}  // namespace my

int main() {
    const ftune::bert::config cfg{.vocab_size = 20,
                                  .hidden_size = 16,
                                  .num_hidden_layers = 1,
                                  .num_attention_heads = 2,
                                  .intermediate_size = 32,
                                  .max_position_embeddings = 8,
                                  .num_labels = 2};
    bool ok = true;

    // 1. Gradients of every parameter through the new head (double precision, dropout off).
    {
        using Encoder = ftune::bert::encoder<double>;
        using Model = ftune::task_model<Encoder, my::mean_pooled_classification<double>>;
        static_assert(Model::architecture == "BertForMeanPooledClassification");
        ftune::bert::config c = cfg;
        c.hidden_dropout_prob = c.attention_probs_dropout_prob = 0;
        Model model(c);
        std::uint64_t seed = 1;
        model.visit_parameters("", [&](ftune::parameter_ref<double> p) {
            const ftune::random_stream s(seed++, 0);
            for (std::size_t i = 0; i < p.value.size(); ++i)
                p.value[i] += 0.3 * (s.uniform(i) - 0.5);
        });
        const std::vector<ftune::token_id> ids{3, 7, 9, 1, 4, 4, 12, 5};
        ftune::context eval;
        const auto res = ftune::testing::check_layer_gradients(
            model, eval, typename Model::ids_view(ids.data(), 2, 4));
        std::printf("gradient check: %zu values, %s\n", res.checked, res.ok ? "ok" : "FAILED");
        if (!res.ok) std::printf("%s\n", res.report.c_str());
        ok &= res.ok;
    }

    // 2. Fine-tuning with the stock trainer: label 1 when token 5 occurs in the sequence.
    using Model =
        ftune::task_model<ftune::bert::encoder<float>, my::mean_pooled_classification<float>>;
    Model model(cfg);
    std::uint64_t seed = 7;
    model.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        const ftune::random_stream s(seed++, 0);
        for (std::size_t i = 0; i < p.value.size(); ++i)
            p.value[i] = p.name.find("LayerNorm.weight") != std::string::npos
                             ? 1.0f
                             : 0.04f * float(s.uniform(i) - 0.5);
    });
    std::vector<ftune::train::example> data;
    const ftune::random_stream s(99, 0);
    for (std::size_t i = 0, k = 0; i < 256; ++i) {
        ftune::train::example x;
        bool five = false;
        for (int t = 0; t < 6; ++t) {
            const auto id = ftune::token_id(1 + s.below(k++, 19));
            x.ids.push_back(id), five |= id == 5;
        }
        x.types.assign(x.ids.size(), 0);
        x.labels = {five ? 1 : 0};
        data.push_back(std::move(x));
    }
    ftune::train::trainer<Model> t(
        model, {.epochs = 6, .batch_size = 16, .lr = 3e-3, .progress = nullptr}, {"no", "yes"});
    const double before = t.evaluate(data).accuracy;
    t.fit(data, {});
    const auto after = t.evaluate(data);
    std::printf("accuracy before %.3f, after %.3f\n%s", before, after.accuracy,
                model.head.report(after, {"no", "yes"}).c_str());
    ok &= after.accuracy > 0.9 && after.accuracy > before;
    return ok ? 0 : 1;
}
