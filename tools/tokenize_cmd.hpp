// `ftune tokenize`: BERT WordPiece ids (or token strings) for each line of stdin.
#pragma once

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>

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

// Runs `ftune tokenize` with argv[2..]; returns the exit status.
inline int run_tokenize(int argc, char** argv) {
    std::optional<std::string> vocab, model;
    std::optional<bool> lowercase;
    std::size_t max_length = 0;
    bool tokens = false;
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
        else if (a == "--model")
            model = value();
        else if (a == "--lowercase")
            lowercase = true;
        else if (a == "--no-lowercase")
            lowercase = false;
        else if (a == "--tokens")
            tokens = true;
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
    if (vocab.has_value() == model.has_value())
        throw ftune::error(ftune::errc::invalid_argument, "ftune tokenize",
                           "give exactly one of --vocab FILE and --model DIR");
    if (model && lowercase)
        throw ftune::error(ftune::errc::invalid_argument, "ftune tokenize",
                           "--lowercase/--no-lowercase go with --vocab; a --model directory "
                           "says it in tokenizer_config.json");
    ftune::text::bert_options opt;
    opt.lowercase = lowercase.value_or(true);
    const auto tok =
        model ? tokenizer_from_model(*model) : ftune::text::bert_tokenizer::from_vocab(*vocab, opt);
    std::ios::sync_with_stdio(false);
    std::string line, out;
    while (std::getline(std::cin, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        const auto e = tok.encode(line, std::nullopt, max_length);
        out.clear();
        for (std::size_t k = 0; k < e.ids.size(); ++k) {
            if (k) out += ' ';
            out += tokens ? tok.vocab().token(e.ids[k]) : std::to_string(e.ids[k]);
        }
        out += '\n';
        std::cout << out;
    }
    return 0;
}

}  // namespace cli
