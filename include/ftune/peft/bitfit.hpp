// The parameter-efficient methods that add nothing to the model, only choose what trains:
// BitFit (Ben Zaken et al. 2022: the biases, with the task head) and head-only training (a
// linear probe: the head, the backbone frozen). Both work on any composed model and return the
// summary that PEFT's print_trainable_parameters prints.
//
//   auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir);
//   std::cout << ftune::peft::apply_bitfit(m.model, ftune::peft::head_modules(m.model)).text();
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/peft/lora.hpp"

FTUNE_NAMESPACE_BEGIN
namespace peft {

/// The top-level modules of model outside its backbone (Model::backbone_type's
/// base_model_prefix): the head's, as PEFT's modules_to_save names them ("classifier", "score",
/// "qa_outputs", "cls", "lm_head"), each once, in visiting order.
template <class Model>
std::vector<std::string> head_modules(Model& model) {
    using T = typename Model::value_type;
    const std::string base = std::string(Model::backbone_type::base_model_prefix) + ".";
    std::vector<std::string> v;
    model.visit_parameters("", [&](parameter_ref<T> p) {
        if (p.name.starts_with(base)) return;
        const std::string top = p.name.substr(0, p.name.find('.'));
        if (std::find(v.begin(), v.end(), top) == v.end()) v.push_back(top);
    });
    return v;
}

namespace detail {
// Sets each parameter of model trainable exactly when train(name) says; throws, naming the
// method, when nothing trains. Returns the counts.
template <class Model, class Pred>
trainable_summary train_only(Model& model, Pred train, std::string_view method) {
    using T = typename Model::value_type;
    trainable_summary s;
    model.visit_parameters("", [&](parameter_ref<T> p) {
        const bool on = train(p.name);
        p.set_trainable(on);
        s.total += p.value.size();
        if (on) s.trainable += p.value.size();
    });
    if (!s.trainable)
        throw error(errc::invalid_argument, std::string(method),
                    "no parameter of the model would train (a model without biases, such as "
                    "Llama, needs its head in modules_to_save)");
    return s;
}
// Whether parameter `name` lies in one of modules (a module or a part of one).
inline bool in_modules(std::string_view name, const std::vector<std::string>& modules) {
    for (const auto& m : modules)
        if (name.starts_with(m + ".") || name.find("." + m + ".") != std::string_view::npos)
            return true;
    return false;
}
}  // namespace detail

/// BitFit: every bias trains (with the parameters of modules_to_save, usually the head's, as
/// the paper trains the classifier); every other parameter is frozen. Throws when nothing trains.
template <class Model>
trainable_summary apply_bitfit(Model& model, const std::vector<std::string>& modules_to_save) {
    return detail::train_only(
        model,
        [&](std::string_view name) {
            return name.ends_with(".bias") || name == "bias" ||
                   detail::in_modules(name, modules_to_save);
        },
        "peft::apply_bitfit");
}

/// Head-only training: the parameters of modules (head_modules(model) for the task head) train,
/// the rest is frozen. Throws when nothing trains (a causal LM whose head is tied to the input
/// embeddings has no head of its own).
template <class Model>
trainable_summary apply_head_only(Model& model, const std::vector<std::string>& modules) {
    return detail::train_only(
        model, [&](std::string_view name) { return detail::in_modules(name, modules); },
        "peft::apply_head_only");
}

}  // namespace peft
FTUNE_NAMESPACE_END
