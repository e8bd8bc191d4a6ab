// The parameter-efficient side of the command line: ftune train's `--peft lora|bitfit|head`
// with its LoRA options, what a LoRA run saves (PEFT's adapter files and ftune_task.json), and
// the `--adapter DIR` that predict, eval and merge load onto a base model.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <ftune/io/atomic.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/peft/adapter_io.hpp>
#include <ftune/peft/bitfit.hpp>

namespace cli {

// What ftune train's --peft chooses, with the LoRA options (PEFT's LoraConfig defaults: r 8,
// alpha 8, no dropout).
struct peft_args {
    std::string method = "none";      // --peft none|lora|bitfit|head
    ftune::peft::lora_config lora{};  // --lora-r, --lora-alpha, --lora-dropout, --lora-bias...
    bool targets_given = false;       // --lora-targets given (else the family's default)
    bool modules_given = false;       // --lora-modules-to-save given (else the head's modules)
};

// The precision an option names (--precision fp32|bf16); bf16 needs AVX512-BF16 (checked
// here, so the error comes before any loading).
inline ftune::precision parse_precision(const std::string& option, const std::string& v) {
    if (v != "fp32" && v != "bf16")
        throw ftune::error(ftune::errc::invalid_argument, option + " " + v,
                           "expected fp32 or bf16");
    if (v == "bf16" && !ftune::backends::cpu::bf16_supported())
        throw ftune::backends::cpu::bf16_detail::unsupported((option + " bf16").c_str());
    return v == "bf16" ? ftune::precision::bf16 : ftune::precision::fp32;
}

// The parts of a comma-separated list ("query,value"), empty parts dropped.
inline std::vector<std::string> split_list(const std::string& v) {
    std::vector<std::string> out;
    std::size_t a = 0;
    while (a <= v.size()) {
        std::size_t b = v.find(',', a);
        if (b == std::string::npos) b = v.size();
        if (b > a) out.push_back(v.substr(a, b - a));
        a = b + 1;
    }
    return out;
}

// The file beside a LoRA adapter that says what PEFT's files do not: ftune's task and the
// label names of the head (PEFT takes them from the code that builds the base model).
inline constexpr const char* task_file = "ftune_task.json";

// The modules PEFT's LoRA adapts in Model's family when target_modules is not given (its
// TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING): BERT's query and value, Llama's q_proj
// and v_proj, GPT-2's fused Conv1D c_attn (ftune's q_proj, k_proj and v_proj).
template <class Model>
std::vector<std::string> default_lora_targets() {
    using Config = ftune::io::family_config_t<Model>;
    if constexpr (std::is_same_v<Config, ftune::llama::config>)
        return {"q_proj", "v_proj"};
    else if constexpr (std::is_same_v<Config, ftune::gpt2::config>)
        return {"c_attn"};
    else
        return {"query", "value"};
}

// PEFT's task_type of an ftune task name ("" for none: masked LM).
inline std::string peft_task_type(const std::string& task) {
    if (task == "classify" || task == "multilabel" || task == "regression") return "SEQ_CLS";
    if (task == "ner") return "TOKEN_CLS";
    if (task == "qa") return "QUESTION_ANS";
    if (task == "causal-lm" || task == "chat") return "CAUSAL_LM";
    return "";
}

// Applies --peft to model before training and prints PEFT's trainable-parameter line: LoRA's
// adapters (targets and saved modules defaulted from the family and the head; a causal LM saves
// no module), BitFit's biases with the head, or the head alone; full fine-tuning (none) leaves
// the trainable flags as --freeze set them. Fills p.lora's defaults for saving.
template <class Model>
void apply_peft(peft_args& p, Model& model, std::uint64_t seed) {
    constexpr bool lm = ftune::heads::is_a<typename Model::head_type, ftune::heads::causal_lm>;
    const auto head = lm ? std::vector<std::string>{} : ftune::peft::head_modules(model);
    if (!p.modules_given) p.lora.modules_to_save = head;
    ftune::peft::trainable_summary s;
    if (p.method == "lora") {
        if (!p.targets_given) p.lora.target_modules = default_lora_targets<Model>();
        p.lora.seed = seed;
        s = ftune::peft::apply_lora(model, p.lora);
    } else if (p.method == "bitfit") {
        s = ftune::peft::apply_bitfit(model, p.lora.modules_to_save);
    } else if (p.method == "head") {
        if (p.lora.modules_to_save.empty())
            throw ftune::error(ftune::errc::invalid_argument, "--peft head",
                               "this model has no head of its own to train (a causal LM's head "
                               "is its tied input embeddings): use --peft lora or bitfit");
        s = ftune::peft::apply_head_only(model, p.lora.modules_to_save);
    } else {
        s = ftune::peft::summarize(model);
    }
    std::cerr << "ftune: " << s.text();
}

// Writes dir/ftune_task.json (atomically): the task and the head's label names.
inline void write_task_file(const std::filesystem::path& dir, const std::string& task,
                            const std::vector<std::string>& id2label) {
    nlohmann::json j = {{"task", task}};
    nlohmann::json labels = nlohmann::json::object();
    for (std::size_t i = 0; i < id2label.size(); ++i) labels[std::to_string(i)] = id2label[i];
    if (!id2label.empty()) j["id2label"] = labels;
    ftune::io::write_text_atomic(dir / task_file, j.dump(2) + "\n");
}

// What a saved adapter says about its task: ftune_task.json's task, else PEFT's task_type
// (SEQ_CLS: classify, TOKEN_CLS: ner, QUESTION_ANS: qa, CAUSAL_LM: causal-lm); "" when neither.
inline std::string adapter_task(const std::filesystem::path& dir) {
    auto read = [](const std::filesystem::path& path) {
        std::ifstream in(path);
        if (!in) return nlohmann::json();
        try {
            return nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
            throw ftune::error(ftune::errc::parse, path.string(), e.what());
        }
    };
    const auto mine = read(dir / task_file);
    if (mine.is_object() && mine.contains("task") && mine["task"].is_string())
        return mine["task"].get<std::string>();
    const auto peft = read(dir / "adapter_config.json");
    if (!peft.is_object() || !peft.contains("task_type") || !peft["task_type"].is_string())
        return "";
    const std::string t = peft["task_type"].get<std::string>();
    return t == "SEQ_CLS"        ? "classify"
           : t == "TOKEN_CLS"    ? "ner"
           : t == "QUESTION_ANS" ? "qa"
           : t == "CAUSAL_LM"    ? "causal-lm"
                                 : "";
}

// The label names of an adapter's head: ftune_task.json's id2label, else LABEL_i for each row
// of the head weight it saves (a classifier PEFT trained), else none (the base model's).
inline std::vector<std::string> adapter_labels(const std::filesystem::path& dir) {
    std::ifstream in(dir / task_file);
    if (in) {
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(in);
            std::vector<std::string> names;
            if (j.contains("id2label"))
                for (std::size_t i = 0; i < j["id2label"].size(); ++i)
                    names.push_back(j["id2label"].at(std::to_string(i)).get<std::string>());
            if (!names.empty()) return names;
        } catch (const nlohmann::json::exception& e) {
            throw ftune::error(ftune::errc::parse, (dir / task_file).string(),
                               std::string("id2label: ") + e.what());
        }
    }
    const ftune::io::safetensors_file f(dir / "adapter_model.safetensors");
    for (const auto& t : f.tensors()) {
        const std::string n = ftune::peft::parameter_name(t.name);
        if ((n == "classifier.weight" || n == "score.weight") && t.shape.size() == 2) {
            std::vector<std::string> names;
            for (std::size_t i = 0; i < t.shape[0]; ++i)
                names.push_back("LABEL_" + std::to_string(i));
            return names;
        }
    }
    return {};
}

// The base model of an adapter when --model is not given: adapter_config.json's
// base_model_name_or_path, which must be a directory or file here.
inline std::filesystem::path adapter_base(const std::filesystem::path& dir) {
    const auto path = dir / "adapter_config.json";
    const std::string base = ftune::io::read_config_string(path, "base_model_name_or_path");
    if (base.empty() || !std::filesystem::exists(base))
        throw ftune::error(ftune::errc::invalid_argument, path.string(),
                           "base_model_name_or_path \"" + base +
                               "\" is not a model here: give the base model with --model");
    return base;
}

// Loads the LoRA adapter in dir onto a loaded model m (hf_model): its adapters and the head
// weights it saved, which the base did not have (they leave m.report.initialized).
template <class Loaded>
void attach_adapter(Loaded& m, const std::filesystem::path& dir) {
    const auto s = ftune::peft::load_adapter(m.model, dir);
    const ftune::io::safetensors_file f(dir / "adapter_model.safetensors");
    std::erase_if(m.report.initialized, [&](const std::string& n) {
        return std::any_of(f.tensors().begin(), f.tensors().end(),
                           [&](const auto& t) { return ftune::peft::parameter_name(t.name) == n; });
    });
    std::cerr << "ftune: adapter " << dir.string() << ": LoRA on " << s.targets.size()
              << " modules, " << s.trainable << " parameters\n";
}

}  // namespace cli
