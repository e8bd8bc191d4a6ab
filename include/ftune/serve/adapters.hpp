// serve::adapter_classifier: many fine-tuned tasks served from one base model in memory. Each
// task is a LoRA adapter (Hugging Face PEFT's files) with its own classification head; a call
// names the task. The base's weights, and the weights prepare_inference() packed from them, are
// held once: a task owns only its adapters' A and B and its head, and runs the unmerged path
// (the base's packed product, then each adapter's s x Aᵀ Bᵀ). predict is const and thread-safe:
// as serve::text_classifier, each task keeps a pool of replicas that share its weights, so
// calls run at once, on one task or on several.
//
// A base model, then one adapter per task (srv.add_adapter(name, dir, labels)), then calls
// that name their task (srv.predict("sentiment", text)); srv.memory().text() gives the base's
// bytes once and what each task adds. docs/usage.md shows it whole.
#pragma once

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "ftune/peft/adapter_io.hpp"
#include "ftune/serve.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// The parameter values an adapter_classifier holds, in bytes (packed copies not counted).
struct adapter_memory {
    std::size_t base_bytes = 0;  ///< the base model's values, held once
    /// each task's own values (its adapters' A and B, its head), by name
    std::vector<std::pair<std::string, std::size_t>> tasks;

    /// All of them.
    std::size_t total() const noexcept {
        std::size_t n = base_bytes;
        for (const auto& t : tasks) n += t.second;
        return n;
    }
    /// "base <MB> MB; <task> +<MB> MB; ..." (1 MB = 10^6 bytes).
    std::string text() const {
        auto mb = [](std::size_t b) {
            char s[32];
            std::snprintf(s, sizeof s, "%.1f MB", double(b) / 1e6);
            return std::string(s);
        };
        std::string s = "base " + mb(base_bytes);
        for (const auto& [name, b] : tasks) s += "; " + name + " +" + mb(b);
        return s;
    }
};

/// Thread-safe inference of many LoRA-adapted sequence classifiers over one base model (see the
/// file comment).
template <class Model = bert::sequence_classifier<>>
class adapter_classifier {
  public:
    using T = typename Model::value_type;  ///< scalar type
    /// the family's tokenizer
    using tokenizer_type = typename io::hf_family<io::family_config_t<Model>>::tokenizer_type;

    /// Takes the loaded base model (with its tokenizer); inputs are cut to max_length tokens
    /// (0: the model's maximum). The base's own head is not used: each task brings its own.
    explicit adapter_classifier(io::hf_model<Model>&& base, std::size_t max_length = 0)
        : prototype_(std::move(base.model)), config_(base.config.model) {
        if (!base.tokenizer)
            throw error(errc::invalid_argument, "serve::adapter_classifier",
                        "the base model directory has no vocab.txt or tokenizer.json");
        tok_.emplace(std::move(*base.tokenizer));
        max_length_ =
            max_length ? std::min(max_length, base.model_max_length) : base.model_max_length;
        prototype_.prepare_inference();  // the packed base, shared by every task
        free_gradients(prototype_);
        shared_.emplace(prototype_);
        share_weights(*shared_, parameter_values(prototype_));
        for (const auto& v : parameter_values(prototype_)) {
            base_bytes_ += v.size_bytes();
            base_[v.data()] = v;
        }
        prototype_.visit_parameters("", named{{}, &by_name_});
    }

    /// Loads the PEFT LoRA adapter in dir as task `name` (replacing a task of that name), with
    /// the head it saved (modules_to_save) and label names `labels` (default LABEL_i for each row
    /// of the saved head; the base's head when it saved none). Its adapters' A and B and its
    /// head are its own; every other weight is the base's. An adapter that saved other base
    /// weights (trained biases: bias "all" or "lora_only", or other saved modules) cannot share
    /// them: an error says to merge it into its own model. May run while other tasks predict.
    void add_adapter(const std::string& name, const std::filesystem::path& dir,
                     std::vector<std::string> labels = {}) {
        const io::safetensors_file file(dir / "adapter_model.safetensors");
        const std::string base_prefix = std::string(Model::backbone_type::base_model_prefix) + ".";
        std::set<std::string> own;  // the parameters the file holds
        std::size_t rows = 0;       // the saved head's labels (its first matrix's rows)
        for (const auto& t : file.tensors()) {
            const std::string n = peft::parameter_name(t.name);
            if (!peft::is_adapter_parameter(n) && n.starts_with(base_prefix))
                throw error(errc::unsupported, file.path() + ": " + t.name,
                            "a base-model weight besides the adapters (a trained bias or a saved "
                            "module) cannot be shared with the other tasks: serve this adapter "
                            "merged into its own model (peft::merge_and_unload)");
            if (!peft::is_adapter_parameter(n) && t.shape.size() == 2 && !rows) rows = t.shape[0];
            own.insert(n);
        }
        if (labels.empty())
            for (std::size_t i = 0; i < (rows ? rows : config_.num_labels); ++i)
                labels.push_back("LABEL_" + std::to_string(i));
        auto c = config_;
        c.num_labels = labels.size();
        // 1. A whole model of the task's shape takes the adapter (peft::load_adapter's checks)
        Model loaded(c);
        peft::load_adapter(loaded, dir);
        // 2. The task: the base's backbone (its weights and packed weights aliased), the
        //    adapters' A and B copied in, the loaded head with the base's values where the file
        //    has none (BERT's pooler)
        auto t = std::make_shared<task>(Model(c), std::move(labels));
        t->prototype.backbone = shared_->backbone;
        std::map<std::string, const layers::lora_options*> opts;
        std::map<std::string, std::vector<T>> values;
        loaded.visit_parameters("", adapters_of{{}, &opts, &values});
        t->prototype.visit_parameters("", attach{{}, &opts, &values});
        t->prototype.head = std::move(loaded.head);
        t->prototype.visit_parameters("", borrow{{}, &own, &by_name_});
        t->prototype.head.prepare_inference();
        free_gradients(t->prototype);
        for (const auto& v : parameter_values(t->prototype))
            if (!base_.contains(v.data())) t->own_bytes += v.size_bytes();
        t->shared.emplace(t->prototype);
        share_weights(*t->shared, parameter_values(t->prototype));
        std::unique_lock lock(tasks_mu_);
        tasks_[name] = std::move(t);
    }

    /// The class of a text (or a pair) by task `name`'s adapter and head.
    prediction predict(std::string_view name, std::string_view text,
                       std::optional<std::string_view> text_pair = {}) const {
        const auto held = find(name);  // kept alive through the call, even if replaced
        const task& t = *held;
        const auto e = tok_->encode(text, text_pair, max_length_);
        const std::size_t Tn = e.ids.size();
        auto r = t.acquire();
        const auto logits =
            r->model.forward(r->ctx, {e.ids.data(), 1, Tn}, {e.attention_mask.data(), 1, Tn},
                             {e.type_ids.data(), 1, Tn});  // (1, L)
        const auto d = r->model.head.decode(logits.data());
        prediction p{d.label, {}, d.scores, logit_row(logits.data(), logits.extent(1))};
        t.release(std::move(r));
        p.name = t.labels[p.label];
        return p;
    }

    /// The tasks' names, sorted.
    std::vector<std::string> tasks() const {
        std::shared_lock lock(tasks_mu_);
        std::vector<std::string> v;
        for (const auto& [n, t] : tasks_) v.push_back(n);
        return v;
    }
    /// Task `name`'s label names, by id.
    std::vector<std::string> labels(std::string_view name) const { return find(name)->labels; }
    /// The parameter values held: the base once, and what each task adds.
    adapter_memory memory() const {
        std::shared_lock lock(tasks_mu_);
        adapter_memory m{base_bytes_, {}};
        for (const auto& [n, t] : tasks_) m.tasks.emplace_back(n, t->own_bytes);
        return m;
    }
    /// The tokenizer.
    const tokenizer_type& tokenizer() const noexcept { return *tok_; }
    /// Most tokens of an input (longer ones are cut).
    std::size_t max_length() const noexcept { return max_length_; }

  private:
    struct replica {
        Model model;  // a copy of a task's shared model
        context ctx;  // eval mode: no dropout
    };
    struct task {
        task(Model m, std::vector<std::string> l) : prototype(std::move(m)), labels(std::move(l)) {}
        Model prototype;                  // its A, B and head; the rest aliases the base
        std::vector<std::string> labels;  // id2label
        std::optional<Model> shared;      // aliases prototype; replicas are its copies
        std::size_t own_bytes = 0;        // values not the base's
        mutable std::mutex mu;            // guards free
        mutable std::vector<std::unique_ptr<replica>> free;  // idle replicas

        std::unique_ptr<replica> acquire() const {
            {
                std::lock_guard lock(mu);
                if (!free.empty()) {
                    auto r = std::move(free.back());
                    free.pop_back();
                    return r;
                }
            }
            return std::make_unique<replica>(replica{*shared, context{}});  // copies no weights
        }
        void release(std::unique_ptr<replica> r) const {
            std::lock_guard lock(mu);
            free.push_back(std::move(r));
        }
    };

    // The visitors below leave the base's weights and their packed copies as they are
    // (keeps_values); the values they write are the task's own A, B and head, which are packed
    // (the head) or used (A, B) only afterwards.

    // name -> the base's value (to alias)
    struct named : keeps_values {
        std::map<std::string, std::span<T>>* out;
        void operator()(parameter_ref<T> p) const { (*out)[p.name] = p.value; }
    };
    // each adapted module's options and its A and B values, by parameter name
    struct adapters_of : keeps_values {
        std::map<std::string, const layers::lora_options*>* opts;
        std::map<std::string, std::vector<T>>* values;
        template <class L>
        void visit_lora(std::string_view module, L& layer) const {
            if (layer.has_adapter()) (*opts)[std::string(module)] = &layer.adapter_options();
        }
        void operator()(parameter_ref<T> p) const {
            if (peft::is_adapter_parameter(p.name))
                (*values)[p.name].assign(p.value.begin(), p.value.end());
        }
    };
    // attaches those adapters to the same modules of the task's backbone
    struct attach : keeps_values {
        const std::map<std::string, const layers::lora_options*>* opts;
        const std::map<std::string, std::vector<T>>* values;
        template <class L>
        void visit_lora(std::string_view module, L& layer) const {
            const auto o = opts->find(std::string(module));
            if (o == opts->end()) return;
            layer.add_adapter(*o->second, random_stream(0, 0));  // A and B set just below
            const auto& a = values->at(std::string(module) + ".lora_A.weight");
            const auto& b = values->at(std::string(module) + ".lora_B.weight");
            std::copy(a.begin(), a.end(), layer.lora_A.value.data());
            std::copy(b.begin(), b.end(), layer.lora_B.value.data());
        }
        void operator()(parameter_ref<T>) const {}
    };
    // every parameter the adapter file does not hold aliases the base's of that name
    struct borrow : keeps_values {
        const std::set<std::string>* own;
        const std::map<std::string, std::span<T>>* base;
        void operator()(parameter_ref<T> p) const {
            if (own->contains(p.name) || peft::is_adapter_parameter(p.name)) return;
            const auto b = base->find(p.name);
            if (b == base->end() || b->second.size() != p.value.size())
                throw error(errc::shape_mismatch, p.name,
                            "the adapter does not save this head weight and the base's has "
                            "another shape (or none): give the base's labels, or an adapter that "
                            "saves its head (modules_to_save)");
            p.inference_only(b->second.data());
        }
    };

    std::shared_ptr<const task> find(std::string_view name) const {
        std::shared_lock lock(tasks_mu_);
        const auto it = tasks_.find(name);
        if (it == tasks_.end())
            throw error(errc::invalid_argument,
                        "adapter_classifier: task \"" + std::string(name) + "\"",
                        "no such task: add_adapter it first");
        return it->second;
    }

    Model prototype_;                              // the base's weights; never run
    std::optional<Model> shared_;                  // aliases them; tasks copy its backbone
    typename Model::config_type config_;           // the base's configuration
    std::optional<tokenizer_type> tok_;            // shared, const
    std::size_t max_length_ = 0;                   // tokens per input
    std::size_t base_bytes_ = 0;                   // the base's values
    std::map<const T*, std::span<T>> base_;        // the base's values, by address
    std::map<std::string, std::span<T>> by_name_;  // and by name
    mutable std::shared_mutex tasks_mu_;           // guards tasks_
    std::map<std::string, std::shared_ptr<const task>, std::less<>> tasks_;  // by name
};

}  // namespace serve
FTUNE_NAMESPACE_END
