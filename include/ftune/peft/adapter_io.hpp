// peft::load_adapter / save_adapter: LoRA adapters in Hugging Face PEFT's files, both ways:
// adapter_config.json (LoraConfig's fields) and adapter_model.safetensors, whose tensors are
// named "base_model.model.<parameter>": the adapters' "<module>.lora_A.weight" and
// "<module>.lora_B.weight", the saved modules' parameters, and the trained biases (an adapted
// module's as "<module>.base_layer.bias"), all under Hugging Face's module names and layouts.
// GPT-2 fuses q, k and v in one Conv1D, c_attn: PEFT adapts it with one A and one B of 3 x 768
// rows. ftune's q_proj, k_proj and v_proj each carry their own adapter; loading gives each a copy
// of A and its third of B (the same outputs), saving stacks their A and puts their B on the
// diagonal of a rank-3r adapter (rank_pattern, alpha_pattern: the same outputs in PEFT), which
// loads back as the three rank-r adapters.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/io/atomic.hpp"
#include "ftune/io/hf.hpp"
#include "ftune/io/safetensors.hpp"
#include "ftune/peft/lora.hpp"

FTUNE_NAMESPACE_BEGIN
namespace peft {

/// What adapter_config.json says beyond lora_config.
struct adapter_file_options {
    std::string task_type;  ///< PEFT's task_type ("SEQ_CLS", "CAUSAL_LM"...; "": null)
    std::string base_model_name_or_path;  ///< the base model, as the user names it ("": null)
};

/// The prefix PEFT gives every tensor name in adapter_model.safetensors.
inline constexpr std::string_view tensor_prefix = "base_model.model.";

/// The parameter a tensor of adapter_model.safetensors loads into ("" when it is not PEFT's
/// prefix).
inline std::string parameter_name(std::string_view tensor) {
    if (!tensor.starts_with(tensor_prefix)) return "";
    std::string n(tensor.substr(tensor_prefix.size()));
    if (const auto at = n.find(".base_layer."); at != std::string::npos)
        n.replace(at, std::string_view(".base_layer.").size(), ".");
    return n;
}

/// Parses the contents of an adapter_config.json (PEFT's LoraConfig), rank_pattern and
/// alpha_pattern in the file's order (PEFT takes the first key that matches); `where` names the
/// file in errors. Fields that would change the adapted model in ways ftune does not implement
/// (DoRA, layers_to_transform, exclude_modules...) must be at their defaults: otherwise an error
/// names the field.
inline lora_config parse_adapter_config(std::string_view contents, const std::string& where) {
    nlohmann::ordered_json j;  // the patterns' keys in the file's order
    try {
        j = nlohmann::ordered_json::parse(contents);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, where, ftune::detail::cat("malformed JSON: ", e.what()));
    }
    if (!j.is_object() || !j.contains("peft_type") || j["peft_type"] != "LORA")
        throw error(errc::unsupported, where + ": peft_type",
                    "not a LoRA adapter (peft_type \"LORA\"); ftune reads LoRA adapters only");
    auto unsupported = [&](const char* field, const std::string& why) {
        throw error(errc::unsupported, where + ": " + field, why);
    };
    auto is_set = [&](const char* f) {
        if (!j.contains(f) || j[f].is_null()) return false;
        const auto& v = j[f];
        return !((v.is_boolean() && !v.get<bool>()) || (v.is_object() && v.empty()) ||
                 (v.is_array() && v.empty()) || (v.is_string() && v.get<std::string>().empty()));
    };
    // (fan_in_fan_out only says that the base layer stores W transposed, GPT-2's Conv1D: the
    // adapter's tensors are the same; ftune's checkpoint slots transpose the base on load)
    for (const char* f :
         {"use_dora", "layers_to_transform", "layers_pattern", "exclude_modules",
          "target_parameters", "lora_bias", "layer_replication", "trainable_token_indices"})
        if (is_set(f))
            unsupported(f, ftune::detail::cat(j[f].dump(),
                                              ": ftune's LoRA does not implement this option; "
                                              "give an adapter without it"));
    lora_config c;
    try {
        const auto rank = [&](const nlohmann::ordered_json& v, const char* field) {
            if (!v.is_number_unsigned() || v.get<std::uint64_t>() > (1u << 16))
                unsupported(field, v.dump() + ": a rank is a whole number from 1 to 65536");
            return v.get<std::size_t>();
        };
        c.r = rank(j.at("r"), "r");
        c.alpha = j.at("lora_alpha").get<double>();
        c.dropout = j.value("lora_dropout", 0.0);
        if (c.r == 0) unsupported("r", "0: the rank must be at least 1");
        if (!std::isfinite(c.alpha)) unsupported("lora_alpha", "not a finite number");
        if (!(c.dropout >= 0 && c.dropout < 1)) unsupported("lora_dropout", "not in [0, 1)");
        c.rslora = j.value("use_rslora", false);
        const auto& t = j.at("target_modules");
        if (t.is_string())
            c.target_regex = t.get<std::string>();
        else
            c.target_modules = t.get<std::vector<std::string>>();
        if (j.contains("modules_to_save") && !j["modules_to_save"].is_null())
            c.modules_to_save = j["modules_to_save"].get<std::vector<std::string>>();
        const std::string bias = j.value("bias", "none");
        if (bias == "all")
            c.bias = lora_bias::all;
        else if (bias == "lora_only")
            c.bias = lora_bias::lora_only;
        else if (bias != "none")
            unsupported("bias", "\"" + bias + "\" is not none, all or lora_only");
        if (j.contains("rank_pattern") && !j["rank_pattern"].is_null())
            for (const auto& [key, value] : j["rank_pattern"].items())
                c.rank_pattern.emplace_back(key, rank(value, "rank_pattern"));
        if (j.contains("alpha_pattern") && !j["alpha_pattern"].is_null())
            for (const auto& [key, value] : j["alpha_pattern"].items())
                c.alpha_pattern.emplace_back(key, value.get<double>());
        for (const auto& [key, rank] : c.rank_pattern)
            if (rank == 0) unsupported("rank_pattern", "\"" + key + "\": a rank of 0");
    } catch (const nlohmann::json::exception& e) {
        throw error(
            errc::parse, where,
            ftune::detail::cat("a LoRA field is missing or has the wrong type: ", e.what()));
    }
    return c;
}

/// Reads dir/adapter_config.json (parse_adapter_config on its contents).
inline lora_config read_adapter_config(const std::filesystem::path& dir) {
    const auto path = dir / "adapter_config.json";
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(errc::io, path.string(), "cannot open the adapter's configuration");
    const std::string contents((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
    return parse_adapter_config(contents, path.string());
}

namespace detail {
// Hugging Face's name of parameter `name` of a model of family Config, and how it sits in that
// tensor (io::checkpoint_slots' first slot); an adapted module's own parameters (its bias) get
// PEFT's ".base_layer" before their last part.
template <class Config>
io::checkpoint_slot adapter_file_slot(const std::string& name,
                                      const std::vector<std::string>& adapted_hf) {
    io::checkpoint_slot slot = io::checkpoint_slots<Config>(name).front();
    const auto dot = slot.name.rfind('.');
    if (dot != std::string::npos && std::find(adapted_hf.begin(), adapted_hf.end(),
                                              slot.name.substr(0, dot)) != adapted_hf.end())
        slot.name.insert(dot, ".base_layer");
    return slot;
}
// Rows [r0, r0 + rows) of the row-major matrix v of `cols` columns.
template <class T>
std::vector<T> rows_of(const std::vector<T>& v, std::size_t cols, std::size_t r0,
                       std::size_t rows) {
    return std::vector<T>(v.begin() + std::ptrdiff_t(r0 * cols),
                          v.begin() + std::ptrdiff_t((r0 + rows) * cols));
}
}  // namespace detail

/// Loads the PEFT LoRA adapter in dir into model: apply_lora with its configuration, then every
/// tensor of adapter_model.safetensors into its parameters (Hugging Face's names and layouts:
/// GPT-2's fused c_attn gives q_proj, k_proj and v_proj each a copy of A and its rows of B; an
/// adapter ftune saved that way, block-diagonal, comes back as the three adapters it was).
/// Throws, naming the file and the tensor, when a tensor has no parameter or another shape, or
/// an adapter of the model is not in the file. Returns apply_lora's summary.
template <class Model>
trainable_summary load_adapter(Model& model, const std::filesystem::path& dir) {
    using T = typename Model::value_type;
    using Config = io::family_config_t<Model>;
    const lora_config c = read_adapter_config(dir);
    trainable_summary s = apply_lora(model, c);
    const io::safetensors_file file(dir / "adapter_model.safetensors");
    std::vector<parameter_ref<T>> params;
    model.visit_parameters("", [&](parameter_ref<T> p) { params.push_back(std::move(p)); });
    std::vector<bool> loaded(params.size(), false);
    std::map<std::string_view, std::size_t> index;  // parameter name -> its place in params
    for (std::size_t i = 0; i < params.size(); ++i) index.emplace(params[i].name, i);
    // the adapters by Hugging Face module: each of its parts' A and B
    struct part_ref {
        std::size_t a, b;  // the places of lora_A and lora_B in params
        module_slot hf;    // which part of the module
    };
    std::map<std::string, std::vector<part_ref>> adapters;
    for (const auto& t : s.targets) {
        const module_slot hf = hf_module<Model>(t);
        adapters[hf.name].push_back(
            {index.at(t + ".lora_A.weight"), index.at(t + ".lora_B.weight"), hf});
    }
    // every other parameter by the file tensors that may hold it
    std::map<std::string, std::vector<std::pair<std::size_t, io::checkpoint_slot>>> others;
    for (std::size_t i = 0; i < params.size(); ++i)
        if (!is_adapter_parameter(params[i].name))
            for (auto& slot : io::checkpoint_slots<Config>(params[i].name))
                others[slot.name].emplace_back(i, slot);
    auto shape_error = [&](const io::tensor_info& t, const std::string& want) {
        return error(errc::shape_mismatch, file.path() + ": " + t.name,
                     "shape " + t.shape_string() + " but the model needs " + want);
    };
    for (const auto& t : file.tensors()) {
        const std::string name = parameter_name(t.name);
        const bool is_a = name.ends_with(".lora_A.weight");
        if (is_adapter_parameter(name)) {
            const std::string module = name.substr(0, name.size() - 14);
            const auto at = adapters.find(module);
            if (at == adapters.end())
                throw error(errc::shape_mismatch, file.path() + ": " + t.name,
                            "no adapted module of the model has this name: the adapter was made "
                            "for another architecture, or targets modules this model names "
                            "otherwise");
            const auto whole = file.read<T>(t);
            for (const auto& part : at->second) {
                auto& p = params[is_a ? part.a : part.b];
                // A whole for every part; B's rows of this part (all of them when unfused)
                const std::size_t rows = p.extents[0], cols = p.extents[1];
                const std::size_t all = is_a ? rows : rows * part.hf.parts;
                if (t.shape != std::vector<std::size_t>{all, cols}) {
                    io::tensor_info want;
                    want.shape = {all, cols};
                    throw shape_error(t, want.shape_string());
                }
                const auto v =
                    is_a ? whole : detail::rows_of(whole, cols, part.hf.part * rows, rows);
                std::copy(v.begin(), v.end(), p.value.begin());
                loaded[is_a ? part.a : part.b] = true;
            }
            continue;
        }
        const auto at = others.find(name);
        if (name.empty() || at == others.end())
            throw error(errc::shape_mismatch, file.path() + ": " + t.name,
                        "no parameter of the model has this name: the adapter was made for "
                        "another architecture, or targets modules this model names otherwise");
        const auto whole = file.read<T>(t);
        for (const auto& [i, slot] : at->second) {
            auto& p = params[i];
            const auto want = io::detail::slot_tensor_shape(p.extents.data(), p.rank, slot, p.name);
            if (t.shape != want) {
                io::tensor_info w;
                w.shape = want;
                throw shape_error(t, w.shape_string() + " for " + p.name);
            }
            io::detail::for_each_slot_element(
                p.extents.data(), p.rank, slot,
                [&](std::size_t to, std::size_t from) { p.value[to] = whole[from]; });
            loaded[i] = true;
        }
    }
    for (std::size_t i = 0; i < params.size(); ++i)
        if (is_adapter_parameter(params[i].name) && !loaded[i]) {
            const std::string module(module_of(module_of(params[i].name)));
            throw error(errc::parse, file.path(),
                        ftune::detail::cat("has no tensor for the adapter's ", params[i].name, " (",
                                           tensor_prefix, hf_module<Model>(module).name,
                                           params[i].name.substr(module.size()), ")"));
        }
    params.clear();  // the references below replace adapters
    // A part of a fused module whose B is zero outside one block of columns (ftune's
    // block-diagonal save) keeps that block only: rank r instead of 3r, the same scaling. A part
    // whose B is all zero (never trained, or not adapted when saved) gives the same zero output
    // with any rows of A: it keeps as many as its module's other parts keep (R / parts when all
    // are zero), so that ranks do not grow from one save and load to the next.
    struct columns {
        std::size_t c0 = 0, c1 = 0;  // B's nonzero columns [c0, c1); c1 == 0: all zero
    };
    std::map<std::string, columns> used;      // ftune's fused part -> its nonzero columns
    std::map<std::string, std::size_t> kept;  // Hugging Face module -> the rank a part keeps
    model.visit_parameters("", layers::lora_visitor{[&](std::string_view name, auto& l) {
                               const module_slot hf = hf_module<Model>(name);
                               if (!l.has_adapter() || hf.parts == 1) return;
                               const std::size_t R = l.rank(), out = l.out_features();
                               columns c{R, 0};
                               for (std::size_t o = 0; o < out; ++o)
                                   for (std::size_t k = 0; k < R; ++k)
                                       if (l.lora_B.value.data()[o * R + k] != T(0))
                                           c.c0 = std::min(c.c0, k), c.c1 = std::max(c.c1, k + 1);
                               if (c.c1 == 0) c.c0 = 0;
                               if (c.c1 > 0) kept.try_emplace(hf.name, c.c1 - c.c0);
                               used[std::string(name)] = c;
                           }});
    bool compacted = false;
    model.visit_parameters(
        "", layers::lora_visitor{[&](std::string_view name, auto& l) {
            const auto at = used.find(std::string(name));
            if (at == used.end()) return;
            const module_slot hf = hf_module<Model>(name);
            const std::size_t R = l.rank(), out = l.out_features(), in = l.in_features();
            auto [c0, c1] = at->second;
            if (c1 == 0) {  // all zero: the rank of the module's other parts
                const auto k = kept.find(hf.name);
                c1 = k != kept.end()     ? std::min(k->second, R)
                     : R % hf.parts == 0 ? R / hf.parts
                                         : R;
            }
            if (c1 - c0 == R) return;
            const std::vector<T> A(l.lora_A.value.data() + c0 * in,
                                   l.lora_A.value.data() + c1 * in);
            const std::vector<T> B(l.lora_B.value.data(), l.lora_B.value.data() + out * R);
            layers::lora_options o = l.adapter_options();
            const double scale = o.scaling();
            o.r = c1 - c0;
            o.alpha = o.rslora ? scale * std::sqrt(double(o.r)) : scale * double(o.r);
            bool bias_trains = false;
            if constexpr (std::remove_cvref_t<decltype(l)>::has_bias)
                bias_trains = l.bias.trainable;
            l.add_adapter(o, random_stream(0, 0));
            if constexpr (std::remove_cvref_t<decltype(l)>::has_bias)
                l.bias.trainable = bias_trains;
            std::copy(A.begin(), A.end(), l.lora_A.value.data());
            for (std::size_t row = 0; row < out; ++row)
                for (std::size_t k = c0; k < c1; ++k)
                    l.lora_B.value.data()[row * o.r + (k - c0)] = B[row * R + k];
            compacted = true;
        }});
    if (compacted) {
        const trainable_summary now = summarize(model);
        s.trainable = now.trainable, s.total = now.total;
    }
    return s;
}

/// Writes model's adapters to dir as PEFT does: adapter_config.json from c and o, and
/// adapter_model.safetensors with the tensors PEFT saves (trains_with: adapters, saved modules,
/// trained biases) under Hugging Face's names and layouts (GPT-2: the Conv1D's, with
/// fan_in_fan_out; q, k and v's adapters as one block-diagonal adapter on c_attn, its rank and
/// alpha in rank_pattern and alpha_pattern). PeftModel.from_pretrained(base, dir) loads it. A new
/// dir appears whole (io::write_directory_atomic); in an existing one (a training run's output,
/// with its log), each file is replaced atomically and the other files stay. Throws when the
/// model has no adapter, or an adapter is merged (its B A is in W).
template <class Model>
void save_adapter(Model& model, const lora_config& c, const std::filesystem::path& dir,
                  const adapter_file_options& o = {}) {
    using T = typename Model::value_type;
    using Config = io::family_config_t<Model>;
    struct member {                // one adapted module of the model
        std::string name;          // ftune's
        module_slot hf;            // Hugging Face's
        layers::lora_options opt;  // rank, alpha, rsLoRA
        std::size_t in = 0, out = 0;
        std::vector<float> A, B;  // (r, in), (out, r)
    };
    std::vector<member> members;
    bool merged = false;
    model.visit_parameters(
        "", layers::lora_visitor{[&](std::string_view name, auto& l) {
            if (!l.has_adapter()) return;
            const T* a = l.lora_A.value.data();
            const T* b = l.lora_B.value.data();
            members.push_back({std::string(name), hf_module<Model>(name), l.adapter_options(),
                               l.in_features(), l.out_features(),
                               std::vector<float>(a, a + l.lora_A.size()),
                               std::vector<float>(b, b + l.lora_B.size())});
            merged = merged || l.merged();
        }});
    if (members.empty())
        throw error(errc::invalid_argument, "peft::save_adapter",
                    "the model has no adapter: apply_lora or load_adapter first");
    if (merged)
        throw error(errc::invalid_argument, "peft::save_adapter",
                    "an adapter is merged into its weight: unmerge_adapters first");
    std::vector<std::string> targets, adapted_hf;  // ftune's names, Hugging Face's (once each)
    bool renamed = false;
    for (const auto& m : members) {
        targets.push_back(m.name);
        renamed = renamed || m.hf.name != m.name;
        if (std::find(adapted_hf.begin(), adapted_hf.end(), m.hf.name) == adapted_hf.end())
            adapted_hf.push_back(m.hf.name);
    }
    std::vector<std::vector<float>> values;
    std::vector<io::tensor_to_write> tensors;
    nlohmann::json rank_pattern = nlohmann::json::object(),
                   alpha_pattern = nlohmann::json::object();
    for (const auto& module : adapted_hf) {  // A and B of each Hugging Face module
        std::vector<const member*> group;
        for (const auto& m : members)
            if (m.hf.name == module) group.push_back(&m);
        std::sort(group.begin(), group.end(),
                  [](const member* x, const member* y) { return x->hf.part < y->hf.part; });
        const member& first = *group.front();
        const std::size_t parts = first.hf.parts, in = first.in, out = first.out;
        std::size_t R = 0;
        for (const member* m : group) {
            if (m->in != in || m->out != out || m->opt.rslora != first.opt.rslora)
                throw error(errc::invalid_argument, "peft::save_adapter: " + module,
                            "its parts differ in size or in rsLoRA");
            R += m->opt.r;
        }
        // one adapter of rank R: A stacked, each part's B in its rows and its own columns,
        // scaled to the first part's scaling (the same when they share r and alpha)
        const double s = first.opt.scaling();
        std::vector<float> A, B(parts * out * R, 0.0f);
        std::size_t col = 0;
        for (const member* m : group) {
            A.insert(A.end(), m->A.begin(), m->A.end());
            const double f = m->opt.scaling() / s;
            for (std::size_t row = 0; row < out; ++row)
                for (std::size_t k = 0; k < m->opt.r; ++k)
                    B[(m->hf.part * out + row) * R + col + k] =
                        float(double(m->B[row * m->opt.r + k]) * f);
            col += m->opt.r;
        }
        const double alpha = first.opt.rslora ? s * std::sqrt(double(R)) : s * double(R);
        if (R != c.r) rank_pattern[module] = R;  // (disjoint full names: order is moot)
        if (std::abs(alpha - c.alpha) > 1e-12 * std::max(1.0, c.alpha))
            alpha_pattern[module] = alpha;
        const std::string stem = std::string(tensor_prefix) + module;
        tensors.push_back({stem + ".lora_A.weight", {R, in}, {}});
        values.push_back(std::move(A));
        tensors.push_back({stem + ".lora_B.weight", {parts * out, R}, {}});
        values.push_back(std::move(B));
    }
    // saved modules and trained biases, at their checkpoint slots (fused, transposed)
    std::vector<std::size_t> filled, expected;
    const std::size_t first_other = tensors.size();
    model.visit_parameters("", [&](parameter_ref<T> p) {
        if (is_adapter_parameter(p.name) || !trains_with(p.name, c, targets)) return;
        const io::checkpoint_slot slot = detail::adapter_file_slot<Config>(p.name, adapted_hf);
        const std::string name = std::string(tensor_prefix) + slot.name;
        const auto shape = io::detail::slot_tensor_shape(p.extents.data(), p.rank, slot, p.name);
        std::size_t k = first_other;
        while (k < tensors.size() && tensors[k].name != name) ++k;
        if (k == tensors.size()) {
            tensors.push_back({name, shape, {}});
            values.emplace_back(p.value.size() * slot.parts);
            filled.push_back(0), expected.push_back(slot.parts);
        }
        ++filled[k - first_other];
        io::detail::for_each_slot_element(
            p.extents.data(), p.rank, slot,
            [&](std::size_t from, std::size_t to) { values[k][to] = float(p.value[from]); });
    });
    for (std::size_t k = 0; k < filled.size(); ++k)
        if (filled[k] != expected[k])
            throw error(errc::invalid_argument,
                        "peft::save_adapter: " + tensors[first_other + k].name,
                        "PEFT saves this fused tensor whole, but only some of its parts train "
                        "(train all of q, k and v's biases, or none)");
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].values = values[i];
    nlohmann::json j;
    j["peft_type"] = "LORA";
    j["task_type"] = o.task_type.empty() ? nlohmann::json() : nlohmann::json(o.task_type);
    j["base_model_name_or_path"] = o.base_model_name_or_path.empty()
                                       ? nlohmann::json()
                                       : nlohmann::json(o.base_model_name_or_path);
    j["r"] = c.r;
    j["lora_alpha"] = c.alpha;
    j["lora_dropout"] = c.dropout;
    j["use_rslora"] = c.rslora;
    // Hugging Face's module names: the adapted modules themselves when the family names them
    // otherwise than ftune (GPT-2's), else the configuration's names or regex
    j["target_modules"] = renamed                  ? nlohmann::json(adapted_hf)
                          : c.target_regex.empty() ? nlohmann::json(c.target_modules)
                                                   : nlohmann::json(c.target_regex);
    j["modules_to_save"] =
        c.modules_to_save.empty() ? nlohmann::json() : nlohmann::json(c.modules_to_save);
    j["bias"] = c.bias == lora_bias::all         ? "all"
                : c.bias == lora_bias::lora_only ? "lora_only"
                                                 : "none";
    j["fan_in_fan_out"] = std::is_same_v<Config, gpt2::config>;  // GPT-2's Conv1D
    j["init_lora_weights"] = true;
    j["inference_mode"] = true;
    j["use_dora"] = false;
    j["layers_to_transform"] = nullptr;
    j["layers_pattern"] = nullptr;
    j["rank_pattern"] = rank_pattern;
    j["alpha_pattern"] = alpha_pattern;
    auto write = [&](const std::filesystem::path& to) {
        io::write_safetensors(to / "adapter_model.safetensors", tensors);
        io::write_text_atomic(to / "adapter_config.json", j.dump(2) + "\n");
    };
    if (std::filesystem::is_directory(dir))
        write(dir);
    else
        io::write_directory_atomic(dir, write);
}

}  // namespace peft
FTUNE_NAMESPACE_END
