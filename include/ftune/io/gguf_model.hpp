// io::load_gguf: a Llama-family or GPT-2 model read from a GGUF file the way load_hf reads a
// Hugging Face directory (configuration, tokenizer, weights), so that everything that takes
// load_hf's result (training, save_hf, generation) takes a GGUF file too.
#pragma once

#include <algorithm>
#include <filesystem>
#include <string>
#include <type_traits>

#include "ftune/io/gguf_gpt2.hpp"
#include "ftune/io/gguf_llama.hpp"
#include "ftune/io/hf.hpp"

FTUNE_NAMESPACE_BEGIN
namespace io {

/// Model (llama::causal_lm or gpt2::lm_head_model, or another task model of those families) read
/// from the GGUF file at path: the configuration as config.json would hold it (save_hf then
/// writes a directory Transformers loads), the byte-level BPE tokenizer and chat template from
/// the metadata, the weights dequantized to float32. Throws naming the file when its
/// general.architecture is not Model's family. A task head GGUF does not store (a sequence
/// classifier's score) is made new for options.labels as load_hf does for a base checkpoint:
/// initialized normal(0, initializer_range) from options.seed and listed in report.initialized.
template <class Model>
hf_model<Model> load_gguf(const std::filesystem::path& path, const load_options& options = {}) {
    using Config = family_config_t<Model>;
    const gguf_file f(path);
    basic_hf_config<Config> config;
    if constexpr (std::is_same_v<Config, llama::config>) {
        config.model = llama_config_from_gguf(f);
        config.hidden_act = "silu";
    } else {
        static_assert(std::is_same_v<Config, gpt2::config>,
                      "ftune::io::load_gguf reads Llama-family and GPT-2 models");
        config.model = gpt2_config_from_gguf(f);
        config.hidden_act = "gelu_new";
    }
    config.architectures = {std::string(Model::architecture)};
    if (!options.labels.empty()) {
        config.id2label = options.labels;
        config.model.num_labels = options.labels.size();
    }
    hf_model<Model> m{config,
                      bpe_tokenizer_from_gguf(f),
                      config.model.max_position_embeddings,
                      Model(config.model),
                      {}};
    std::vector<std::string> fresh;
    if constexpr (std::is_same_v<Config, llama::config>)
        fresh = load_llama_gguf(m.model, f, config.model);
    else
        fresh = load_gpt2_gguf(m.model, f, config.model);
    if (!fresh.empty() && !options.allow_new_head)
        throw error(errc::shape_mismatch, path.string(),
                    "GGUF holds no " + fresh.front() +
                        " (a task head): allow_new_head initializes it, or load a Hugging Face "
                        "directory that has it");
    std::uint64_t stream = 0;
    m.model.visit_parameters("", [&](parameter_ref<typename Model::value_type> p) {
        ++stream;
        if (std::find(fresh.begin(), fresh.end(), p.name) == fresh.end()) return;
        init_hf_parameter(p, config.model.initializer_range, options.seed, stream);
        m.report.initialized.push_back(p.name);
    });
    return m;
}

}  // namespace io
FTUNE_NAMESPACE_END
