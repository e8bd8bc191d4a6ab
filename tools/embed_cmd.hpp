// `ftune embed`: sentence embeddings of each line of stdin, as sentence-transformers' encode()
// computes them (the model directory's Pooling and Normalize modules; the mean without
// modules.json), or with --search FILE the lines of FILE ranked for each line of stdin by cosine
// similarity (semantic search, FAQ matching: the top --top-k lines with their scores).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <ftune/io/sentence_transformers.hpp>
#include <ftune/metrics/retrieval.hpp>
#include <ftune/serve.hpp>

#include "predict_cmd.hpp"

namespace cli {

// Options of `ftune embed`.
struct embed_options {
    std::filesystem::path model;    // --model: a sentence-transformers or BERT directory
    std::filesystem::path search;   // --search FILE: rank its lines for each input line
    std::size_t batch_size = 32;    // --batch-size: texts per forward
    std::size_t max_length = 0;     // --max-length (0: the model's max_seq_length)
    std::size_t top_k = 5;          // --top-k: --search hits per line
    std::optional<bool> normalize;  // --normalize yes|no (default: the model's modules)
    bool tsv = false;               // --format tsv: values separated by TABs
    ftune::precision precision = ftune::precision::fp32;  // --precision: products in bf16
};

// Embeddings of texts, batch_size at a time.
inline std::vector<std::vector<float>> embed_all(const ftune::serve::text_embedder<>& e,
                                                 const std::vector<std::string>& texts,
                                                 const embed_options& o, std::optional<bool> norm) {
    std::vector<std::vector<float>> out;
    out.reserve(texts.size());
    for (std::size_t i = 0; i < texts.size(); i += o.batch_size) {
        std::vector<std::string_view> b(
            texts.begin() + std::ptrdiff_t(i),
            texts.begin() + std::ptrdiff_t(std::min(texts.size(), i + o.batch_size)));
        for (auto& v : e.embed_batch(b, norm)) out.push_back(std::move(v));
    }
    return out;
}

// Runs `ftune embed`.
inline int run_embed(int argc, char** argv) {
    embed_options o;
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (i + 1 >= argc)
            throw ftune::error(ftune::errc::invalid_argument, std::string(a), "expects a value");
        const std::string v = argv[++i];
        if (a == "--model")
            o.model = v;
        else if (a == "--search")
            o.search = v;
        else if (a == "--batch-size")
            o.batch_size = parse_count(a, v);
        else if (a == "--max-length")
            o.max_length = parse_count(a, v);
        else if (a == "--top-k")
            o.top_k = parse_count(a, v);
        else if (a == "--precision")
            o.precision = parse_precision(std::string(a), v);
        else if (a == "--normalize" && (v == "yes" || v == "no"))
            o.normalize = v == "yes";
        else if (a == "--format" && (v == "json" || v == "tsv"))
            o.tsv = v == "tsv";
        else if (a == "--normalize" || a == "--format")
            throw ftune::error(ftune::errc::invalid_argument, std::string(a) + " " + v,
                               a == "--normalize" ? "expected yes or no" : "expected json or tsv");
        else
            throw ftune::error(ftune::errc::invalid_argument, std::string(a),
                               "unknown option of ftune embed");
    }
    if (o.model.empty())
        throw ftune::error(ftune::errc::invalid_argument, "ftune embed",
                           "--model DIR is required (a sentence-transformers or BERT directory)");
    auto m = ftune::io::load_hf<ftune::bert::model<>>(o.model, {.allow_new_head = false});
    if (!m.tokenizer)
        throw ftune::error(ftune::errc::io, o.model.string(), "no vocab.txt or tokenizer.json");
    const ftune::serve::text_embedder<> e(std::move(m), ftune::io::read_sentence_config(o.model),
                                          o.max_length, o.precision);
    std::vector<std::string> lines;
    for (std::string l; std::getline(std::cin, l);) {
        if (!l.empty() && l.back() == '\r') l.pop_back();
        lines.push_back(std::move(l));
    }
    char buf[32];
    if (o.search.empty()) {  // one vector per line
        const auto vs = embed_all(e, lines, o, o.normalize);
        std::string out;
        for (const auto& v : vs) {
            out += o.tsv ? "" : "[";
            for (std::size_t j = 0; j < v.size(); ++j) {
                std::snprintf(buf, sizeof buf, "%.9g", double(v[j]));  // float round trip
                out += (j ? (o.tsv ? "\t" : ",") : "") + std::string(buf);
            }
            out += o.tsv ? "\n" : "]\n";
            if (out.size() > (1 << 16)) std::cout << out, out.clear();
        }
        std::cout << out;
        return 0;
    }
    // --search: cosine similarity (normalized embeddings' dot products), corpus order on ties
    std::ifstream in(o.search, std::ios::binary);
    if (!in) throw ftune::error(ftune::errc::io, o.search.string(), "cannot open it");
    std::vector<std::string> corpus;
    for (std::string l; std::getline(in, l);) {
        if (!l.empty() && l.back() == '\r') l.pop_back();
        if (!l.empty()) corpus.push_back(std::move(l));
    }
    if (corpus.empty()) throw ftune::error(ftune::errc::parse, o.search.string(), "no lines");
    const auto docs = embed_all(e, corpus, o, true);
    const auto queries = embed_all(e, lines, o, true);
    const std::size_t D = e.dimension(), N = docs.size();
    for (std::size_t q = 0; q < queries.size(); ++q) {
        std::vector<float> s(N);  // (1, N)
        for (std::size_t d = 0; d < N; ++d) {
            double dot = 0;
            for (std::size_t j = 0; j < D; ++j) dot += double(queries[q][j]) * double(docs[d][j]);
            s[d] = float(dot);
        }
        const auto ranked = ftune::metrics::rank_corpus(s, 1, N, std::min(o.top_k, N))[0];
        nlohmann::json hits = nlohmann::json::array();
        for (const std::size_t d : ranked)
            hits.push_back({{"index", d}, {"text", corpus[d]}, {"score", round6(s[d])}});
        std::cout << nlohmann::json{{"query", lines[q]}, {"hits", hits}}.dump(
                         -1, ' ', false, nlohmann::json::error_handler_t::replace)
                  << "\n";
    }
    return 0;
}

}  // namespace cli
