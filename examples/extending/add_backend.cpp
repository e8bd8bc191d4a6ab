// docs/extending.md, "Add a backend": a new device tag, the backend that runs ftune's primitives
// on it, and a whole BERT encoder selected onto it by type. This backend runs the reference
// backend's loops and counts the GEMMs it is given: the smallest backend that is not one of
// ftune's, enough to show every seam a CUDA backend plugs into (device tag, ops::backend_of,
// ops::prepared_weight_of).
//
//   build/bin/extending_add_backend    prints the GEMM count and the largest difference to the
//                                      CPU backend; exit 1 on failure
#include <ftune/ftune.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

namespace my {
/// Host memory, primitives by counting_backend below.
struct counting_device {
    static constexpr const char* name = "counting";  ///< the name in messages
    static constexpr bool host = true;               ///< ftune::buffer allocates host memory for it
};
/// GEMM calls made on counting_device.
inline std::size_t gemm_calls = 0;
}  // namespace my

FTUNE_NAMESPACE_BEGIN
namespace ops {
/// The backend of my::counting_device: every primitive of the reference backend (inherited),
/// with gemm counted. A real backend forwards each primitive to its own kernels instead.
template <>
struct backend_of<my::counting_device> : backend_of<device::reference> {
    /// C = alpha op(A) op(B) + beta C, counted, by the reference loops.
    template <class... A>
    static void gemm(A&&... a) {
        ++my::gemm_calls;
        backends::reference::gemm(std::forward<A>(a)...);
    }
};
/// Its prepared weights for inference products: the reference backend's row-major copy.
template <class T>
struct prepared_weight_of<T, my::counting_device> {
    using type = backends::reference::prepared_b<T>;  ///< op(W) copied row-major
};
}  // namespace ops
FTUNE_NAMESPACE_END

int main() {
    using cpu_encoder = ftune::bert::encoder<double>;
    using my_encoder =  // the same model, on the new device: only the parts' device differs
        ftune::bert::encoder<double, ftune::dynamic, ftune::dynamic, ftune::blocks::post_norm,
                             ftune::blocks::bert_parts<double, my::counting_device>>;
    const ftune::bert::config cfg{.vocab_size = 30,
                                  .hidden_size = 16,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 4,
                                  .intermediate_size = 24,
                                  .max_position_embeddings = 8};
    cpu_encoder a(cfg);
    my_encoder b(cfg);
    std::uint64_t seed = 3;
    auto init = [&](auto& enc) {  // the same values in both (visit order is the same)
        std::uint64_t k = seed;
        enc.visit_parameters("", [&](ftune::parameter_ref<double> p) {
            const ftune::random_stream s(k++, 0);
            for (std::size_t i = 0; i < p.value.size(); ++i)
                p.value[i] = (p.name.find("LayerNorm.weight") != std::string::npos ? 1.0 : 0.0) +
                             0.3 * (s.uniform(i) - 0.5);
        });
    };
    init(a), init(b);
    const std::vector<ftune::token_id> ids{2, 9, 14, 7, 1, 21, 5, 3};
    ftune::context c1{.mode = ftune::mode::train, .rng = ftune::generator(1)};
    ftune::context c2{.mode = ftune::mode::train, .rng = ftune::generator(1)};
    const auto ha = a.forward(c1, {ids.data(), 2, 4});
    const auto hb = b.forward(c2, {ids.data(), 2, 4});  // views on my::counting_device
    static_assert(std::is_same_v<decltype(hb)::device_type, my::counting_device>);
    const std::size_t forward_gemms = my::gemm_calls;
    // backward too: every parameter's gradient from the same d hidden
    const std::vector<double> dh(ha.size(), 0.01);
    a.backward(c1, {dh.data(), 2, 4, 16});
    b.backward(c2, {dh.data(), 2, 4, 16});
    double worst = 0;
    for (std::size_t i = 0; i < ha.size(); ++i)
        worst = std::max(worst, std::abs(ha.data()[i] - hb.data()[i]));
    std::vector<double> ga;
    a.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        ga.insert(ga.end(), p.grad.begin(), p.grad.end());
    });
    std::size_t at = 0;
    b.visit_parameters("", [&](ftune::parameter_ref<double> p) {
        for (double g : p.grad) worst = std::max(worst, std::abs(g - ga[at++]));
    });
    std::printf("GEMMs on the counting device: %zu in forward, %zu in all\n", forward_gemms,
                my::gemm_calls);
    std::printf("largest difference to the CPU backend (outputs and gradients): %.3g\n", worst);
    return forward_gemms > 0 && my::gemm_calls > forward_gemms && worst < 1e-10 ? 0 : 1;
}
