// peft::apply_lora: Hugging Face PEFT's LoRA over any ftune model whose projections are
// layers::lora_linear (every family's blocks): adapters on the modules that target_modules names
// (PEFT's rules), every other weight frozen except modules_to_save and the biases `bias` names;
// merging; the trainable-parameter summary of PEFT's print_trainable_parameters.
//
//   auto m = ftune::io::load_hf<ftune::bert::sequence_classifier<>>(dir);
//   const auto s = ftune::peft::apply_lora(m.model, {.r = 8, .alpha = 16, .dropout = 0.1,
//       .target_modules = {"query", "value"}, .modules_to_save = {"classifier"}});
//   std::cout << s.text();  // all-MiniLM-L6-v2, 2 labels: trainable params: 74,498 || ...
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <regex>
#include <utility>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/core/error.hpp"
#include "ftune/core/parameter.hpp"
#include "ftune/core/rng.hpp"
#include "ftune/layers/lora_linear.hpp"

FTUNE_NAMESPACE_BEGIN
namespace peft {

/// Which biases train beside the adapters (PEFT's LoraConfig.bias).
enum class lora_bias {
    none,      ///< no bias trains
    all,       ///< every bias of the model trains
    lora_only  ///< the biases of the adapted modules train
};

/// PEFT's LoraConfig: the adapters' hyper-parameters and what they apply to.
struct lora_config {
    std::size_t r = 8;                         ///< rank
    double alpha = 8;                          ///< lora_alpha
    double dropout = 0;                        ///< lora_dropout (on each adapter's input)
    bool rslora = false;                       ///< use_rslora: scaling α / √r
    std::vector<std::string> target_modules;   ///< module names or their last parts ("query")
    std::string target_regex;                  ///< or: a regex a module's full name must match
    std::vector<std::string> modules_to_save;  ///< modules trained in full ("classifier")
    lora_bias bias = lora_bias::none;          ///< which biases train
    /// rank_pattern: (module regex, rank) in the file's order
    std::vector<std::pair<std::string, std::size_t>> rank_pattern;
    /// alpha_pattern: (module regex, alpha) in the file's order
    std::vector<std::pair<std::string, double>> alpha_pattern;
    std::uint64_t seed = 0;  ///< seeds the A matrices (the i-th target draws stream i)

    /// One adapter's hyper-parameters.
    layers::lora_options options() const { return {r, alpha, dropout, rslora}; }
    /// The hyper-parameters of the adapter on the module Hugging Face calls `hf_module`: r and
    /// alpha, or the rank_pattern and alpha_pattern entries whose key matches it as PEFT's
    /// get_pattern_key does (the regex "(.*\.)?(key)$" over the whole name; the first key in
    /// order).
    layers::lora_options options_for(std::string_view hf_module) const {
        layers::lora_options o = options();
        auto find = [&](const auto& pattern, auto& out) {
            for (const auto& [key, value] : pattern) {
                bool hit = false;
                try {
                    const std::regex re("(.*\\.)?(" + key + ")$");
                    hit = std::regex_match(hf_module.begin(), hf_module.end(), re);
                } catch (const std::regex_error&) {
                    throw error(errc::invalid_argument, "lora_config pattern",
                                "\"" + key +
                                    "\" is not a regex (PEFT's rank_pattern and "
                                    "alpha_pattern keys are)");
                }
                if (hit) {
                    out = value;
                    return;
                }
            }
        };
        find(rank_pattern, o.r);
        find(alpha_pattern, o.alpha);
        return o;
    }
};

/// What a parameter-efficient method left trainable: the adapted modules (LoRA) and the
/// parameter counts.
struct trainable_summary {
    std::vector<std::string> targets;  ///< full names of the modules that got an adapter
    std::size_t trainable = 0;         ///< parameters that train
    std::size_t total = 0;             ///< all parameters, the adapters' included

    /// PEFT's print_trainable_parameters line ("trainable params: 98 || all params: 5,140 ||
    /// trainable%: 1.9066").
    std::string text() const {
        auto grouped = [](std::size_t n) {  // 5140 -> "5,140"
            const std::string digits = std::to_string(n);
            std::string s;
            for (std::size_t i = 0; i < digits.size(); ++i) {
                if (i && (digits.size() - i) % 3 == 0) s += ',';
                s += digits[i];
            }
            return s;
        };
        char pct[32];
        std::snprintf(pct, sizeof pct, "%.4f",
                      total ? 100.0 * double(trainable) / double(total) : 0.0);
        return "trainable params: " + grouped(trainable) + " || all params: " + grouped(total) +
               " || trainable%: " + pct + "\n";
    }
};

/// The parameter counts of model as its trainable flags stand (no targets).
template <class Model>
trainable_summary summarize(Model& model) {
    using T = typename Model::value_type;
    trainable_summary s;
    model.visit_parameters("", [&](parameter_ref<T> p) {
        s.total += p.value.size();
        if (p.trainable) s.trainable += p.value.size();
    });
    return s;
}

/// Whether module `name` is `key` or ends with "." + key (PEFT's rule for target_modules and
/// modules_to_save given as names).
inline bool module_matches(std::string_view name, std::string_view key) {
    return module_ends_with(name, key);
}
/// Whether a parameter's full name is an adapter's ("….lora_A.weight", "….lora_B.weight").
inline bool is_adapter_parameter(std::string_view name) {
    return name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight");
}
/// The module a parameter belongs to: its name without the last part ("….query" of
/// "….query.weight").
inline std::string_view module_of(std::string_view parameter_name) {
    const auto dot = parameter_name.rfind('.');
    return dot == std::string_view::npos ? std::string_view() : parameter_name.substr(0, dot);
}

/// Whether module (a name) is in c.modules_to_save or inside one of them (PEFT trains a saved
/// module whole).
inline bool saved_module(std::string_view module, const lora_config& c) {
    for (const auto& k : c.modules_to_save)
        if (module_matches(module, k) || module.starts_with(k + ".") ||
            module.find("." + k + ".") != std::string_view::npos)
            return true;
    return false;
}
/// Whether the parameter called `name` trains under c when `targets` are the adapted modules:
/// an adapter's A or B, a parameter of a saved module, or a bias that c.bias names. These are
/// also the tensors PEFT saves in adapter_model.safetensors.
inline bool trains_with(std::string_view name, const lora_config& c,
                        const std::vector<std::string>& targets) {
    if (is_adapter_parameter(name)) return true;
    const std::string_view module = module_of(name);
    if (saved_module(module, c)) return true;
    if (!(name.ends_with(".bias") || name == "bias")) return false;
    if (c.bias == lora_bias::all) return true;
    if (c.bias == lora_bias::none) return false;
    for (const auto& t : targets)
        if (t == module) return true;  // lora_only: the adapted modules' biases
    return false;
}

/// Where Model's module `name` sits among Hugging Face's modules, which PEFT's target_modules,
/// rank_pattern and adapter files name: the family's own map when its backbone has one
/// (GPT-2's q, k and v are parts of "c_attn"), else the name itself, whole.
template <class Model>
module_slot hf_module(std::string_view name) {
    if constexpr (requires { Model::backbone_type::hf_module_of(name); })
        return Model::backbone_type::hf_module_of(name);
    else if constexpr (requires { Model::hf_module_of(name); })
        return Model::hf_module_of(name);
    else
        return {std::string(name), 0, 1};
}

/// Attaches an adapter of c's rank to every lora_linear of model whose name matches c (the
/// target_modules rule or the regex, on ftune's name or Hugging Face's, hf_module: GPT-2's
/// "c_attn" adapts q_proj, k_proj and v_proj, each with its own A and B; an adapter already
/// there is replaced; rank_pattern and alpha_pattern apply by Hugging Face's name), then sets which
/// parameters train: the adapters, the modules in modules_to_save, the biases c.bias names;
/// every other parameter is frozen (no weight gradient, no optimizer state). Throws, naming the
/// model's candidate modules, when nothing matches.
template <class Model>
trainable_summary apply_lora(Model& model, const lora_config& c) {
    using T = typename Model::value_type;
    if (c.target_modules.empty() == c.target_regex.empty())
        throw error(errc::invalid_argument, "lora_config",
                    "give target_modules (module names, \"query\") or target_regex, not both");
    std::regex re;
    if (!c.target_regex.empty()) {
        try {
            re = std::regex(c.target_regex);
        } catch (const std::regex_error& e) {
            throw error(errc::invalid_argument, "lora_config::target_regex",
                        ftune::detail::cat("\"", c.target_regex, "\" is not a regex: ", e.what()));
        }
    }
    auto targeted = [&](std::string_view name) {
        if (!c.target_regex.empty()) return std::regex_match(name.begin(), name.end(), re);
        for (const auto& k : c.target_modules)
            if (module_matches(name, k)) return true;
        return false;
    };
    trainable_summary s;
    std::vector<std::string> candidates;
    model.visit_parameters("", layers::lora_visitor{[&](std::string_view name, auto& layer) {
                               const module_slot hf = hf_module<Model>(name);
                               if (candidates.empty() || candidates.back() != hf.name)
                                   candidates.push_back(hf.name);
                               if (!targeted(name) && !targeted(hf.name)) return;
                               layer.add_adapter(c.options_for(hf.name),
                                                 random_stream(c.seed, s.targets.size()));
                               s.targets.emplace_back(name);
                           }});
    if (s.targets.empty()) {
        std::string some;
        for (std::size_t i = 0; i < candidates.size() && i < 8; ++i)
            some += (i ? ", " : "") + candidates[i];
        throw error(errc::invalid_argument, "lora_config::target_modules",
                    ftune::detail::cat("no module of the model matches; its projections are ",
                                       candidates.empty() ? "none" : some,
                                       candidates.size() > 8 ? ", ..." : "",
                                       " (a target matches a name or its last parts)"));
    }
    model.visit_parameters("", [&](parameter_ref<T> p) {
        const bool train = trains_with(p.name, c, s.targets);
        p.set_trainable(train);
        s.total += p.value.size();
        if (train) s.trainable += p.value.size();
    });
    return s;
}

/// Merges every adapter into its weight (W += s B A): inference at the base model's cost. The
/// adapters stay attached (unmerge_adapters takes them out again).
template <class Model>
void merge_adapters(Model& model) {
    model.visit_parameters("", layers::lora_visitor{[](std::string_view, auto& l) { l.merge(); }});
}
/// Takes every merged adapter out of its weight again (W −= s B A).
template <class Model>
void unmerge_adapters(Model& model) {
    model.visit_parameters("",
                           layers::lora_visitor{[](std::string_view, auto& l) { l.unmerge(); }});
}
/// PEFT's merge_and_unload: merges every adapter and drops it, leaving a plain model (what
/// io::save_hf writes as a Hugging Face model). Its weights stay frozen as LoRA left them.
template <class Model>
void merge_and_unload(Model& model) {
    model.visit_parameters("", layers::lora_visitor{[](std::string_view, auto& l) {
                               l.merge();
                               l.unload_adapter();
                           }});
}
/// The number of adapters attached to model.
template <class Model>
std::size_t adapter_count(Model& model) {
    std::size_t n = 0;
    model.visit_parameters(
        "", layers::lora_visitor{[&](std::string_view, auto& l) { n += l.has_adapter(); }});
    return n;
}

}  // namespace peft
FTUNE_NAMESPACE_END
