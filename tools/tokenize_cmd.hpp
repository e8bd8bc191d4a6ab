// `ftune tokenize`: BERT WordPiece ids, or byte-level BPE ids (a decoder's tokenizer.json, model
// directory or GGUF file), or their token strings, or ids with their offsets, for each line of
// stdin.
#pragma once

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

#include <ftune/io/gguf_llama.hpp>
#include <ftune/io/hf.hpp>
#include <ftune/text.hpp>

namespace cli {

// A Hugging Face model directory's tokenizer (io::load_hf_tokenizer); an error naming the
// directory when it has none.
inline ftune::text::bert_tokenizer tokenizer_from_model(const std::filesystem::path& dir) {
    if (auto t = ftune::io::load_hf_tokenizer(dir)) return std::move(*t);
    throw ftune::error(ftune::errc::io, dir.string(),
                       "no vocab.txt or tokenizer.json in this model directory");
}

// Whether --model names a decoder's byte-level BPE tokenizer: a GGUF file, or a directory whose
// config.json names a decoder family, or (no config.json) whose tokenizer.json is BPE.
inline bool is_bpe_model(const std::filesystem::path& p) {
    if (std::filesystem::is_regular_file(p)) return true;
    if (std::filesystem::exists(p / "config.json")) {
        const auto type = ftune::io::read_config_string(p / "config.json", "model_type");
        return type == "llama";
    }
    if (std::filesystem::exists(p / "vocab.txt") || !std::filesystem::exists(p / "tokenizer.json"))
        return false;
    const auto j = ftune::text::detail::read_tokenizer_json(p / "tokenizer.json");
    return j.is_object() && j.contains("model") && j["model"].is_object() &&
           j["model"].value("type", "") == "BPE";
}

// One token as `ftune tokenize` prints it: the id, its token string (--tokens), and with
// --offsets "@begin:end" (code points of the line, as Hugging Face's offset_mapping).
inline void append_token(std::string& out, const std::string& shown,
                         const ftune::text::token_info* offsets) {
    if (!out.empty()) out += ' ';
    out += shown;
    if (offsets) {
        out += '@';
        out += std::to_string(offsets->char_begin);
        out += ':';
        out += std::to_string(offsets->char_end);
    }
}

// Runs `ftune tokenize` with argv[2..]; returns the exit status.
inline int run_tokenize(int argc, char** argv) {
    std::optional<std::string> vocab, model, bpe;
    std::optional<bool> lowercase;
    std::size_t max_length = 0;
    bool tokens = false, offsets = false;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc)
                throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                                   "expects a value");
            return argv[++i];
        };
        if (a == "--vocab")
            vocab = value();
        else if (a == "--bpe")
            bpe = value();
        else if (a == "--model")
            model = value();
        else if (a == "--lowercase")
            lowercase = true;
        else if (a == "--no-lowercase")
            lowercase = false;
        else if (a == "--tokens")
            tokens = true;
        else if (a == "--offsets")
            offsets = true;
        else if (a == "--max-length") {
            const std::string v = value();
            try {
                max_length = std::stoul(v);
            } catch (const std::exception&) {
                throw ftune::error(ftune::errc::invalid_argument, "--max-length " + v,
                                   "expected a positive number of tokens");
            }
            if (max_length < 2)
                throw ftune::error(ftune::errc::invalid_argument, "--max-length " + v,
                                   "must leave room for [CLS] and [SEP] (at least 2)");
        } else
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune tokenize");
    }
    if (int(vocab.has_value()) + int(model.has_value()) + int(bpe.has_value()) != 1)
        throw ftune::error(ftune::errc::invalid_argument, "ftune tokenize",
                           "give exactly one of --vocab FILE, --model DIR and --bpe FILE");
    std::ios::sync_with_stdio(false);
    std::string line, out;
    std::optional<ftune::text::bpe_tokenizer> bpe_tok;
    if (model && is_bpe_model(*model)) {  // a decoder's directory or GGUF file
        if (std::filesystem::is_regular_file(*model)) {
            bpe_tok = ftune::io::bpe_tokenizer_from_gguf(ftune::io::gguf_file(*model));
        } else {
            bpe_tok = ftune::io::load_hf_bpe_tokenizer(*model);
        }
    } else if (bpe) {
        bpe_tok = ftune::text::load_bpe_tokenizer_json(*bpe);
    }
    if (bpe_tok) {  // byte-level BPE: the ids of each line, nothing added
        if (lowercase || max_length)
            throw ftune::error(ftune::errc::invalid_argument, "ftune tokenize",
                               "--lowercase and --max-length go with BERT's tokenizer");
        const auto& tok = *bpe_tok;
        while (std::getline(std::cin, line)) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            out.clear();
            if (offsets) {
                for (const auto& t : tok.encode_with_offsets(line))
                    append_token(out, tokens ? tok.token(t.id) : std::to_string(t.id), &t);
            } else {
                for (const auto id : tok.encode(line))
                    append_token(out, tokens ? tok.token(id) : std::to_string(id), nullptr);
            }
            out += '\n';
            std::cout << out;
        }
        return 0;
    }
    if (model && lowercase)
        throw ftune::error(ftune::errc::invalid_argument, "ftune tokenize",
                           "--lowercase/--no-lowercase go with --vocab; a --model directory "
                           "says it in tokenizer_config.json");
    ftune::text::bert_options opt;
    opt.lowercase = lowercase.value_or(true);
    const auto tok =
        model ? tokenizer_from_model(*model) : ftune::text::bert_tokenizer::from_vocab(*vocab, opt);
    while (std::getline(std::cin, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const auto e = tok.encode(line, std::nullopt, max_length);
        out.clear();
        for (std::size_t k = 0; k < e.ids.size(); ++k)
            append_token(out, tokens ? tok.vocab().token(e.ids[k]) : std::to_string(e.ids[k]),
                         offsets ? &e.tokens[k] : nullptr);
        out += '\n';
        std::cout << out;
    }
    return 0;
}

}  // namespace cli
