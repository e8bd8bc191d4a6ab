// peft::load_adapter / save_adapter: LoRA adapters in Hugging Face PEFT's files, both ways:
// adapter_config.json (LoraConfig's fields) and adapter_model.safetensors, whose tensors are
// named "base_model.model.<parameter>": the adapters' "<module>.lora_A.weight" and
// "<module>.lora_B.weight", the saved modules' parameters, and the trained biases (an adapted
// module's as "<module>.base_layer.bias").
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ftune/io/atomic.hpp"
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

/// The name PEFT saves parameter `name` under (an adapted module's bias as
/// "<module>.base_layer.bias").
inline std::string file_tensor_name(std::string_view name,
                                    const std::vector<std::string>& targets) {
    const std::string_view module = module_of(name);
    for (const auto& t : targets)
        if (t == module && name.ends_with(".bias"))
            return std::string(tensor_prefix) + t + ".base_layer.bias";
    return std::string(tensor_prefix) + std::string(name);
}
/// The parameter a tensor of adapter_model.safetensors loads into ("" when it is not PEFT's
/// prefix).
inline std::string parameter_name(std::string_view tensor) {
    if (!tensor.starts_with(tensor_prefix)) return "";
    std::string n(tensor.substr(tensor_prefix.size()));
    if (const auto at = n.find(".base_layer."); at != std::string::npos)
        n.replace(at, std::string_view(".base_layer.").size(), ".");
    return n;
}

/// Reads dir/adapter_config.json (PEFT's LoraConfig). Fields that would change the adapted
/// model in ways ftune does not implement (DoRA, per-layer ranks, layers_to_transform, Conv1D's
/// fan_in_fan_out...) must be at their defaults: otherwise an error names the field.
inline lora_config read_adapter_config(const std::filesystem::path& dir) {
    const auto path = dir / "adapter_config.json";
    std::ifstream in(path);
    if (!in) throw error(errc::io, path.string(), "cannot open the adapter's configuration");
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
        throw error(errc::parse, path.string(), ftune::detail::cat("malformed JSON: ", e.what()));
    }
    const std::string where = path.string();
    if (!j.is_object() || j.value("peft_type", "") != "LORA")
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
    for (const char* f : {"use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform",
                          "layers_pattern", "exclude_modules", "target_parameters", "lora_bias",
                          "fan_in_fan_out", "layer_replication", "trainable_token_indices"})
        if (is_set(f))
            unsupported(f, ftune::detail::cat(j[f].dump(),
                                              ": ftune's LoRA does not implement this option; "
                                              "give an adapter without it"));
    lora_config c;
    try {
        c.r = j.at("r").get<std::size_t>();
        c.alpha = j.at("lora_alpha").get<double>();
        c.dropout = j.value("lora_dropout", 0.0);
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
    } catch (const nlohmann::json::exception& e) {
        throw error(
            errc::parse, where,
            ftune::detail::cat("a LoRA field is missing or has the wrong type: ", e.what()));
    }
    return c;
}

/// Loads the PEFT LoRA adapter in dir into model: apply_lora with its configuration, then every
/// tensor of adapter_model.safetensors into its parameter. Throws, naming the file and the
/// tensor, when a tensor has no parameter or another shape, or an adapter of the model is not
/// in the file. Returns apply_lora's summary.
template <class Model>
trainable_summary load_adapter(Model& model, const std::filesystem::path& dir) {
    using T = typename Model::value_type;
    const lora_config c = read_adapter_config(dir);
    const trainable_summary s = apply_lora(model, c);
    const io::safetensors_file file(dir / "adapter_model.safetensors");
    std::vector<parameter_ref<T>> params;
    model.visit_parameters("", [&](parameter_ref<T> p) { params.push_back(std::move(p)); });
    std::vector<bool> loaded(params.size(), false);
    std::map<std::string_view, std::size_t> index;  // parameter name -> its place in params
    for (std::size_t i = 0; i < params.size(); ++i) index.emplace(params[i].name, i);
    for (const auto& t : file.tensors()) {
        const std::string name = parameter_name(t.name);
        const auto at = index.find(name);
        const std::size_t i = at == index.end() ? params.size() : at->second;
        if (name.empty() || i == params.size())
            throw error(errc::shape_mismatch, file.path() + ": " + t.name,
                        "no parameter of the model has this name: the adapter was made for "
                        "another architecture, or targets modules this model names otherwise");
        auto& p = params[i];
        if (t.numel() != p.value.size() || t.shape.size() != p.rank ||
            !std::equal(t.shape.begin(), t.shape.end(), p.extents.begin()))
            throw error(errc::shape_mismatch, file.path() + ": " + t.name,
                        ftune::detail::cat("shape ", t.shape_string(), " but the model's ", p.name,
                                           " is ", p.shape_string()));
        file.read(t, p.value);
        loaded[i] = true;
    }
    for (std::size_t i = 0; i < params.size(); ++i)
        if (is_adapter_parameter(params[i].name) && !loaded[i])
            throw error(errc::parse, file.path(),
                        ftune::detail::cat("has no tensor for the adapter's ", params[i].name, " (",
                                           file_tensor_name(params[i].name, s.targets), ")"));
    return s;
}

/// Writes model's adapters to dir as PEFT does: adapter_config.json from c and o, and
/// adapter_model.safetensors with the tensors PEFT saves (trains_with: adapters, saved modules,
/// trained biases). PeftModel.from_pretrained(base, dir) loads it. A new dir appears whole
/// (io::write_directory_atomic); in an existing one (a training run's output, with its log),
/// each file is replaced atomically and the other files stay. Throws when the model has no
/// adapter, or an adapter is merged (its B A is in W).
template <class Model>
void save_adapter(Model& model, const lora_config& c, const std::filesystem::path& dir,
                  const adapter_file_options& o = {}) {
    using T = typename Model::value_type;
    std::vector<std::string> targets;
    bool merged = false;
    model.visit_parameters("", detail::lora_visitor{[&](std::string_view name, auto& l) {
                               if (!l.has_adapter()) return;
                               targets.emplace_back(name);
                               merged = merged || l.merged();
                           }});
    if (targets.empty())
        throw error(errc::invalid_argument, "peft::save_adapter",
                    "the model has no adapter: apply_lora or load_adapter first");
    if (merged)
        throw error(errc::invalid_argument, "peft::save_adapter",
                    "an adapter is merged into its weight: unmerge_adapters first");
    std::vector<std::vector<float>> copies;
    std::vector<io::tensor_to_write> tensors;
    model.visit_parameters("", [&](parameter_ref<T> p) {
        if (!trains_with(p.name, c, targets)) return;
        copies.emplace_back(p.value.begin(), p.value.end());
        tensors.push_back({file_tensor_name(p.name, targets),
                           std::vector<std::size_t>(p.extents.begin(), p.extents.begin() + p.rank),
                           {}});
    });
    for (std::size_t i = 0; i < tensors.size(); ++i) tensors[i].values = copies[i];
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
    j["target_modules"] =
        c.target_regex.empty() ? nlohmann::json(c.target_modules) : nlohmann::json(c.target_regex);
    j["modules_to_save"] =
        c.modules_to_save.empty() ? nlohmann::json() : nlohmann::json(c.modules_to_save);
    j["bias"] = c.bias == lora_bias::all         ? "all"
                : c.bias == lora_bias::lora_only ? "lora_only"
                                                 : "none";
    j["fan_in_fan_out"] = false;
    j["init_lora_weights"] = true;
    j["inference_mode"] = true;
    j["use_dora"] = false;
    j["layers_to_transform"] = nullptr;
    j["layers_pattern"] = nullptr;
    j["rank_pattern"] = nlohmann::json::object();
    j["alpha_pattern"] = nlohmann::json::object();
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
