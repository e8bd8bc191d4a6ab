// io::load_gguf: a Llama-family or GPT-2 model read from a GGUF file the way load_hf reads a
// Hugging Face directory (configuration, tokenizer, weights), so that everything that takes
// load_hf's result (training, save_hf, generation) takes a GGUF file too.
#pragma once

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
/// general.architecture is not Model's family.
template <class Model>
hf_model<Model> load_gguf(const std::filesystem::path& path) {
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
    hf_model<Model> m{config,
                      bpe_tokenizer_from_gguf(f),
                      config.model.max_position_embeddings,
                      Model(config.model),
                      {}};
    if constexpr (std::is_same_v<Config, llama::config>)
        load_llama_gguf(m.model, f, config.model);
    else
        load_gpt2_gguf(m.model, f, config.model);
    return m;
}

}  // namespace io
FTUNE_NAMESPACE_END
