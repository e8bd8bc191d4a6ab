// Hugging Face checkpoints: config.json and model.safetensors written by Transformers'
// save_pretrained (tests/reference/hf_checkpoint.py) load into ftune's encoder, whose hidden
// states then match Transformers'; wrong shapes and missing weights are reported all at once.
#include <ftune/io/hf.hpp>
#include <ftune/layers/pooler.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "catch.hpp"

#ifndef FTUNE_REFERENCE_DIR
#error "FTUNE_REFERENCE_DIR must name tests/reference/fixtures"
#endif

namespace {

const std::string dir = std::string(FTUNE_REFERENCE_DIR) + "/hf_tiny_bert";

std::vector<ftune::token_id> ids_of(const ftune::io::safetensors_file& f, const char* name) {
    const auto& t = f.at(name);
    std::vector<ftune::token_id> v(t.numel());
    std::memcpy(v.data(), f.bytes(t).data(), v.size() * sizeof(ftune::token_id));
    return v;
}

}  // namespace

TEST_CASE("Hugging Face checkpoint: config.json, weights by name, hidden states as Transformers",
          "[parity][io]") {
    const auto cfg = ftune::io::read_hf_config(dir + "/config.json");
    CHECK(cfg.model.hidden_size == 32);
    CHECK(cfg.model.num_hidden_layers == 2);
    CHECK(cfg.hidden_act == "gelu");
    CHECK(cfg.architectures == std::vector<std::string>{"BertModel"});
    CHECK(cfg.model.initializer_range == 0.2);

    const ftune::io::safetensors_file weights(dir + "/model.safetensors");
    ftune::bert::encoder<float> encoder(cfg.model);
    ftune::layers::pooler<float> pooler(cfg.model.hidden_size);
    const auto r1 = ftune::io::load_parameters(encoder, "", weights);
    const auto r2 = ftune::io::load_parameters(pooler, "pooler", weights, true);
    CHECK(r1.loaded.size() + r2.loaded.size() == weights.tensors().size());
    CHECK(r1.missing.empty());
    CHECK(r2.missing.empty());
    CHECK(r2.unexpected.size() == r1.loaded.size());  // the encoder's, seen from the pooler

    const ftune::io::safetensors_file want(std::string(FTUNE_REFERENCE_DIR) +
                                           "/hf_tiny_bert_expected.safetensors");
    const auto ids = ids_of(want, "input_ids"), mask = ids_of(want, "attention_mask"),
               types = ids_of(want, "token_type_ids");
    const std::size_t B = want.at("input_ids").shape[0], T = want.at("input_ids").shape[1];
    ftune::context eval;
    const auto h =
        encoder.forward(eval, {ids.data(), B, T}, {mask.data(), B, T}, {types.data(), B, T});
    const auto pooled = pooler.forward(eval, h);
    auto max_diff = [](const float* got, const std::vector<float>& ref) {
        double d = 0;
        for (std::size_t i = 0; i < ref.size(); ++i)
            d = std::max(d, double(std::abs(got[i] - ref[i])));
        return d;
    };
    const double dh = max_diff(h.data(), want.read<float>(want.at("last_hidden_state")));
    const double dp = max_diff(pooled.data(), want.read<float>(want.at("pooler_output")));
    INFO("last_hidden_state max |diff| " << dh << ", pooler_output " << dp);
    CHECK(dh <= 1e-5);
    CHECK(dp <= 1e-5);
}

TEST_CASE("Hugging Face checkpoint: every wrong shape and missing weight in one error", "[io]") {
    const auto cfg = ftune::io::read_hf_config(dir + "/config.json");
    const ftune::io::safetensors_file weights(dir + "/model.safetensors");
    // an FFN of 40 instead of 48: 3 tensors per layer, 2 layers
    auto wrong = cfg.model;
    wrong.intermediate_size = 40;
    ftune::bert::encoder<float> e1(wrong);
    try {
        ftune::io::load_parameters(e1, "", weights);
        FAIL("shapes that differ were accepted");
    } catch (const ftune::error& e) {
        const std::string m = e.message();
        CHECK(m.find("6 problem(s)") != std::string::npos);
        CHECK(m.find("encoder.layer.1.output.dense.weight: the file holds [32, 48], the model "
                     "needs [32, 40]") != std::string::npos);
        CHECK(e.context().find("model.safetensors") != std::string::npos);
    }
    // a third layer the file does not have
    auto deeper = cfg.model;
    deeper.num_hidden_layers = 3;
    ftune::bert::encoder<float> e2(deeper);
    try {
        ftune::io::load_parameters(e2, "", weights);
        FAIL("missing weights were accepted");
    } catch (const ftune::error& e) {
        CHECK(e.message().find("16 problem(s)") != std::string::npos);
        CHECK(e.message().find("encoder.layer.2.attention.self.query.weight: missing") !=
              std::string::npos);
    }
    const auto r = ftune::io::load_parameters(e2, "", weights, /*allow_missing=*/true);
    CHECK(r.missing.size() == 16);
    // config.json problems name the file and the field
    CHECK_THROWS_AS(ftune::io::read_hf_config(dir + "/model.safetensors"), ftune::error);
    CHECK_THROWS_AS(ftune::io::read_hf_config(dir + "/none.json"), ftune::error);
}

TEST_CASE(
    "save_parameters: a Hugging Face checkpoint that loads back bit for bit, written atomically",
    "[io]") {
    const auto cfg = ftune::io::read_hf_config(dir + "/config.json");
    ftune::bert::encoder<float> a(cfg.model), b(cfg.model);
    ftune::io::load_parameters(a, "", ftune::io::safetensors_file(dir + "/model.safetensors"));
    const auto out = std::filesystem::temp_directory_path() / "ftune_test_saved.safetensors";
    ftune::io::save_parameters(a, "", out);
    const ftune::io::safetensors_file saved(out);
    CHECK(saved.metadata().at("format") == "pt");
    CHECK(saved.at("encoder.layer.1.output.dense.weight").shape ==
          std::vector<std::size_t>{32, 48});
    const auto r = ftune::io::load_parameters(b, "", saved);
    CHECK(r.unexpected.empty());
    std::vector<float> va, vb;
    a.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        va.insert(va.end(), p.value.begin(), p.value.end());
    });
    b.visit_parameters("", [&](ftune::parameter_ref<float> p) {
        vb.insert(vb.end(), p.value.begin(), p.value.end());
    });
    CHECK(va == vb);
    // no temporary file is left beside it; an unwritable place is an error naming it
    std::size_t others = 0;
    for (const auto& e : std::filesystem::directory_iterator(out.parent_path()))
        others += e.path().filename().string().starts_with("ftune_test_saved.safetensors.tmp");
    CHECK(others == 0);
    std::filesystem::remove(out);
    CHECK_THROWS_AS(ftune::io::save_parameters(a, "", "/nonexistent/dir/model.safetensors"),
                    ftune::error);
}

namespace {
// A family whose checkpoints store q, k and v as GPT-2 does: one fused Conv1D tensor
// "attn.c_attn.weight" of shape (in, 3 out), i.e. transposed, q then k then v along the output
// axis, and "attn.c_attn.bias" (3 out).
struct fused_config {};
struct fused_model {
    using value_type = float;
    using config_type = fused_config;
    ftune::layers::linear<float> q{3, 3}, k{3, 3}, v{3, 3};
    template <class F>
    void visit_parameters(std::string_view prefix, F&& f) {
        q.visit_parameters(ftune::join_name(prefix, "attn.q"), f);
        k.visit_parameters(ftune::join_name(prefix, "attn.k"), f);
        v.visit_parameters(ftune::join_name(prefix, "attn.v"), f);
    }
};
}  // namespace

template <>
struct ftune::io::hf_family<fused_config> {
    static std::vector<checkpoint_slot> checkpoint_slots(const std::string& name) {
        const std::size_t part = name.starts_with("attn.q")   ? 0
                                 : name.starts_with("attn.k") ? 1
                                                              : 2;
        if (name.ends_with(".weight"))
            return {{.name = "attn.c_attn.weight",
                     .transposed = true,
                     .part = part,
                     .parts = 3,
                     .axis = 1}};
        return {{.name = "attn.c_attn.bias", .part = part, .parts = 3}};
    }
    static bool is_backbone_parameter(std::string_view) { return true; }
};

TEST_CASE(
    "family mapping: a transposed, fused checkpoint tensor loads into three parameters and "
    "saves back the same",
    "[io]") {
    namespace fs = std::filesystem;
    const fs::path tmp = fs::temp_directory_path() / "ftune_test_fused.safetensors";
    std::vector<float> w(3 * 9), b(9);  // Conv1D: W (in 3, out 9), y = x W + b
    for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t n = 0; n < 9; ++n) w[i * 9 + n] = float(10 * i + n);
    for (std::size_t n = 0; n < 9; ++n) b[n] = float(100 + n);
    ftune::io::write_safetensors(tmp,
                                 {{"attn.c_attn.weight", {3, 9}, w}, {"attn.c_attn.bias", {9}, b}});
    fused_model m;
    const auto report = ftune::io::load_parameters(m, "", ftune::io::safetensors_file(tmp));
    CHECK(report.loaded.size() == 6);
    CHECK(report.unexpected.empty());
    // the projections equal GPT-2's: q(x) = x W[:, 0:3] + b[0:3], k from columns 3..5, v 6..8
    const std::vector<float> x{0.5f, -1.0f, 2.0f};
    ftune::context ctx;
    const std::array<ftune::layers::linear<float>*, 3> proj{&m.q, &m.k, &m.v};
    for (std::size_t p = 0; p < 3; ++p) {
        const auto y = proj[p]->forward(ctx, {x.data(), 1, 3});
        for (std::size_t o = 0; o < 3; ++o) {
            float want = b[3 * p + o];
            for (std::size_t i = 0; i < 3; ++i) want += x[i] * w[i * 9 + 3 * p + o];
            CHECK(y(0, o) == want);
        }
    }
    // saved back: the same two tensors, the same values
    ftune::io::save_parameters(m, "", tmp);
    const ftune::io::safetensors_file back(tmp);
    REQUIRE(back.tensors().size() == 2);
    CHECK(back.at("attn.c_attn.weight").shape == std::vector<std::size_t>{3, 9});
    CHECK(back.read<float>(back.at("attn.c_attn.weight")) == w);
    CHECK(back.read<float>(back.at("attn.c_attn.bias")) == b);
    // a fused tensor of the wrong size names the tensor and the shape the mapping needs
    ftune::io::write_safetensors(tmp, {{"attn.c_attn.weight", {3, 6}, std::span(w).first(18)},
                                       {"attn.c_attn.bias", {9}, b}});
    CHECK_THROWS_WITH(ftune::io::load_parameters(m, "", ftune::io::safetensors_file(tmp)),
                      Catch::Contains("attn.c_attn.weight: the file holds [3, 6], the model needs "
                                      "[3, 9]"));
    fs::remove(tmp);
}

TEST_CASE("model families: chosen by config.json's model_type, names mapped by the family",
          "[io]") {
    using family = ftune::io::hf_family<ftune::bert::config>;
    // the family of a model type; none for another type, with the known ones named
    bool bert = false;
    ftune::io::with_family("bert", [&](auto f) {
        bert = std::is_same_v<typename decltype(f)::type, ftune::bert::config>;
    });
    CHECK(bert);
    bert = false;
    ftune::io::with_family("", [&](auto f) {  // old BERT checkpoints name no model_type
        bert = std::is_same_v<typename decltype(f)::type, ftune::bert::config>;
    });
    CHECK(bert);
    CHECK_THROWS_WITH(ftune::io::with_family("roberta", [](auto) {}),
                      Catch::Contains("roberta") && Catch::Contains("\"bert\""));
    static_assert(std::is_same_v<ftune::io::family_config_t<ftune::bert::sequence_classifier<>>,
                                 ftune::bert::config>);
    static_assert(std::is_same_v<family::backbone<float>, ftune::bert::encoder<float>>);
    // a parameter's names in a checkpoint: as is, the other prefix, the legacy LayerNorm names
    CHECK(family::checkpoint_names("bert.encoder.layer.0.output.LayerNorm.weight") ==
          std::vector<std::string>{"bert.encoder.layer.0.output.LayerNorm.weight",
                                   "encoder.layer.0.output.LayerNorm.weight",
                                   "bert.encoder.layer.0.output.LayerNorm.gamma",
                                   "encoder.layer.0.output.LayerNorm.gamma"});
    CHECK(family::checkpoint_names("classifier.bias") ==
          std::vector<std::string>{"classifier.bias", "bert.classifier.bias"});
    CHECK(family::is_backbone_parameter("bert.pooler.dense.weight"));
    CHECK(family::is_backbone_parameter("embeddings.word_embeddings.weight"));
    CHECK_FALSE(family::is_backbone_parameter("classifier.weight"));
    CHECK_FALSE(family::is_backbone_parameter("cls.predictions.bias"));
    // the family's config fields, written and read back through config.json
    ftune::bert::config c{.vocab_size = 99,
                          .hidden_size = 24,
                          .num_hidden_layers = 3,
                          .num_attention_heads = 4,
                          .intermediate_size = 40,
                          .hidden_act = ftune::ops::activation::relu};
    nlohmann::json j;
    family::write_config(c, j);
    j["model_type"] = family::model_type;
    const auto back = ftune::io::parse_hf_config(j.dump(), "config.json");
    CHECK(back.model.vocab_size == 99);
    CHECK(back.model.intermediate_size == 40);
    CHECK(back.model.hidden_act == ftune::ops::activation::relu);
    CHECK(back.hidden_act == "relu");
    j["model_type"] = "llama";
    CHECK_THROWS_WITH(ftune::io::parse_hf_config(j.dump(), "config.json"),
                      Catch::Contains("config.json: model_type") && Catch::Contains("llama"));
}
