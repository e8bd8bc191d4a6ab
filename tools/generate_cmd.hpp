// `ftune generate`: text from a decoder language model (a Hugging Face directory or a GGUF file),
// streamed to stdout: the continuation of --prompt, or with --chat a conversation in the model's
// chat template, one user message per line of stdin.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ftune/generation.hpp>
#include <ftune/io/gguf_gpt2.hpp>
#include <ftune/io/gguf_llama.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/text/chat_template.hpp>

#include <unistd.h>

#include "peft_cmd.hpp"

namespace cli {

// Calls f(model, tokenizer, max positions) with the causal language model --model names: a .gguf
// file (llama.cpp's format: Llama family or GPT-2) or a Hugging Face directory whose config.json
// names a Llama or GPT-2 model; the tokenizer is required.
template <class F>
int with_language_model(const std::filesystem::path& path, F&& f) {
    if (std::filesystem::is_regular_file(path)) {
        const ftune::io::gguf_file file(path);
        const auto tok = ftune::io::bpe_tokenizer_from_gguf(file);
        if (ftune::io::gguf_architecture(file) == "gpt2") {
            const auto config = ftune::io::gpt2_config_from_gguf(file);
            ftune::gpt2::lm_head_model<> model(config);
            ftune::io::load_gpt2_gguf(model, file, config);
            return f(model, tok, config.max_position_embeddings);
        }
        const auto config = ftune::io::llama_config_from_gguf(file);
        ftune::llama::causal_lm<> model(config);
        ftune::io::load_llama_gguf(model, file, config);
        return f(model, tok, config.max_position_embeddings);
    }
    auto from_directory = [&](auto tag) {
        using Model = typename decltype(tag)::type;
        auto m = ftune::io::load_hf<Model>(path);
        if (!m.tokenizer)
            throw ftune::error(ftune::errc::io, path.string(),
                               "no tokenizer.json: ftune generate needs the model's tokenizer");
        return f(m.model, *m.tokenizer, m.config.model.max_position_embeddings);
    };
    const std::string type = ftune::io::read_config_string(path / "config.json", "model_type");
    if (type == "llama") return from_directory(std::type_identity<ftune::llama::causal_lm<>>{});
    if (type == "gpt2") return from_directory(std::type_identity<ftune::gpt2::lm_head_model<>>{});
    throw ftune::error(
        ftune::errc::unsupported, (path / "config.json").string(),
        "model_type \"" + type + "\": ftune generate runs decoder language models (llama, gpt2)");
}

// `ftune generate` on a loaded model: --prompt, or the --chat loop.
template <class Model>
int generate_with(Model& lm, const ftune::text::bpe_tokenizer& tok, std::size_t max_positions,
                  const std::string& source, const std::optional<std::string>& prompt,
                  const std::optional<std::string>& system, bool chat, bool stats,
                  const ftune::generation::options& o,
                  ftune::precision precision = ftune::precision::fp32) {
    std::optional<ftune::text::chat_template> tmpl;
    if (chat) {
        if (tok.settings().chat_template.empty())
            throw ftune::error(ftune::errc::unsupported, source,
                               "the model has no chat template; use --prompt");
        tmpl.emplace(tok.settings().chat_template, source + " (chat template)");
    }
    ftune::generation::generator gen(lm, tok, max_positions, precision);
    const auto stream = [](std::size_t, std::string_view piece) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
    };
    // a prompt's ids: the bos token first when the tokenizer adds it
    auto ids_of = [&](const std::string& text, bool add_bos) {
        std::vector<ftune::token_id> ids;
        if (add_bos && tok.settings().add_bos_token)
            if (const auto bos = tok.id_of(tok.settings().bos_token); bos >= 0) ids.push_back(bos);
        const auto rest = tok.encode(text);
        ids.insert(ids.end(), rest.begin(), rest.end());
        return ids;
    };
    auto run = [&](const std::vector<ftune::token_id>& ids) {
        const auto t0 = std::chrono::steady_clock::now();
        const auto r = gen.generate(ids, o, stream);
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (stats)
            std::fprintf(stderr, "\n[%zu prompt tokens, %zu new tokens in %.2f s: %.1f tokens/s]\n",
                         ids.size(), r.tokens.size(), s, double(r.tokens.size()) / s);
        return r;
    };
    if (prompt) {
        run(ids_of(*prompt, true));
        std::cout << "\n";
        return 0;
    }
    // --chat: each line of stdin is a user message; the reply is streamed, then kept in the
    // conversation
    std::vector<ftune::text::chat_message> messages;
    if (system) messages.push_back({"system", *system});
    const nlohmann::ordered_json vars = {{"bos_token", tok.settings().bos_token},
                                         {"eos_token", tok.settings().eos_token},
                                         {"pad_token", tok.settings().pad_token}};
    std::string line;
    const bool prompt_user = isatty(0);
    for (;;) {
        if (prompt_user) std::cerr << "> " << std::flush;
        if (!std::getline(std::cin, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        messages.push_back({"user", line});
        // Transformers' apply_chat_template tokenizes the text without adding special tokens
        const auto text = tmpl->render(messages, /*add_generation_prompt=*/true, vars).text;
        const auto r = run(ids_of(text, false));
        std::cout << "\n" << std::flush;
        messages.push_back({"assistant", r.text});
    }
    return 0;
}

// Runs `ftune generate` with argv[2..]; returns the exit status.
inline int run_generate(int argc, char** argv) {
    std::optional<std::string> model, prompt, system;
    bool chat = false, stats = false;
    int threads = 0;
    ftune::precision precision = ftune::precision::fp32;  // --precision
    ftune::generation::options o;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc)
                throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                                   "expects a value");
            return argv[++i];
        };
        auto number = [&](double lo, double hi) {
            const std::string v = value();
            double x = 0;
            try {
                std::size_t used = 0;
                x = std::stod(v, &used);
                if (used != v.size()) throw std::invalid_argument(v);
            } catch (const std::exception&) {
                throw ftune::error(ftune::errc::invalid_argument, std::string(a) + " " + v,
                                   "expected a number");
            }
            if (!(x >= lo && x <= hi))
                throw ftune::error(ftune::errc::invalid_argument, std::string(a) + " " + v,
                                   ftune::detail::cat("expected a number in [", lo, ", ", hi, "]"));
            return x;
        };
        if (a == "--model")
            model = value();
        else if (a == "--prompt")
            prompt = value();
        else if (a == "--chat")
            chat = true;
        else if (a == "--system")
            system = value();
        else if (a == "--max-new-tokens")
            o.max_new_tokens = std::size_t(number(1, 1 << 20));
        else if (a == "--temperature")
            o.temperature = number(0, 100);
        else if (a == "--top-k")
            o.top_k = std::size_t(number(0, 1 << 24));
        else if (a == "--top-p")
            o.top_p = number(1e-6, 1);
        else if (a == "--repetition-penalty")
            o.repetition_penalty = number(1e-3, 100);
        else if (a == "--seed")
            o.seed = std::uint64_t(number(0, 9007199254740992.0));
        else if (a == "--stop")
            o.stop_strings.push_back(value());
        else if (a == "--threads")
            threads = int(number(1, 4096));
        else if (a == "--stats")
            stats = true;
        else if (a == "--precision")
            precision = parse_precision(std::string(a), value());
        else
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune generate");
    }
    if (!model)
        throw ftune::error(ftune::errc::invalid_argument, "ftune generate",
                           "--model DIR|FILE.gguf is required");
    if (prompt.has_value() == chat)
        throw ftune::error(ftune::errc::invalid_argument, "ftune generate",
                           "give --prompt TEXT, or --chat (messages from stdin)");
    if (system && !chat)
        throw ftune::error(ftune::errc::invalid_argument, "--system", "goes with --chat");
    if (threads > 0) ftune::set_num_threads(threads);
    return with_language_model(
        *model, [&](auto& lm, const ftune::text::bpe_tokenizer& tok, std::size_t max_positions) {
            return generate_with(lm, tok, max_positions, *model, prompt, system, chat, stats, o,
                                 precision);
        });
}

}  // namespace cli
