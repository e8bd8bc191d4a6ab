// layers::embedding: a lookup table from token ids to vectors (nn.Embedding).
#pragma once

#include <string_view>

#include "ftune/core/context.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/ops.hpp"

FTUNE_NAMESPACE_BEGIN
namespace layers {

/// out(i, :) = table(ids[i], :): (N) ids -> (N, C). The vocabulary size is a run-time value.
template <scalar T, std::size_t C = dynamic, device_tag D = device::cpu>
class embedding {
  public:
    using value_type = T;                                        ///< scalar type
    using input_view = view<const token_id, shape<dynamic>, D>;  ///< ids: (N)
    using output_view = view<const T, shape<dynamic, C>, D>;     ///< out: (N, C)

    parameter<T, shape<dynamic, C>, D> weight;  ///< the table (vocab, C), Hugging Face "weight";
                                                ///< decays, as in Hugging Face's Trainer
    token_id padding_idx = -1;  ///< a row that gets no gradient (PyTorch's padding_idx); -1: none

    /// A zero table of `vocab` rows of `features` values.
    explicit embedding(std::size_t vocab = 0, std::size_t features = C)
        : weight("weight", shape<dynamic, C>(vocab, features)) {}

    /// Gathers the rows of ids (ids outside the table throw out_of_range). Keeps a view of ids.
    output_view forward(context&, input_view ids) {
        ids_ = ids;
        out_.resize(shape<dynamic, C>(ids.extent(0), weight.value.extent(1)));  // (N, C)
        ops::embedding(out_, ids, weight.value);
        return out_.view();
    }

    /// dtable(ids[i], :) += dout(i, :) when the table is trainable, except for padding_idx rows
    /// (ids have no gradient).
    void backward(context&, output_view dout) {
        if (weight.trainable) ops::embedding_backward(weight.gradient(), ids_, dout, padding_idx);
    }

    /// Whether the table trains (false: frozen).
    bool trainable() const noexcept { return weight.trainable; }
    /// Sets the table's gradient to zero.
    void zero_grad() { weight.zero_grad(); }

    /// Calls f(parameter_ref<T>) for the table ("<prefix>.weight").
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        f(weight.ref(prefix));
    }

  private:
    input_view ids_;                       // the last forward's ids
    buffer<T, shape<dynamic, C>, D> out_;  // (N, C) output
};

}  // namespace layers
FTUNE_NAMESPACE_END
