// serve::batcher: dynamic batching of concurrent requests, as Text Embeddings Inference and
// Triton do it. Callers submit one item each and wait on a future; worker threads take up to
// max_batch queued items, waiting at most max_wait after the first for more to arrive, and run
// them as one batch (one padded forward instead of many). The queue is bounded: submit() on a
// full queue fails at once with errc::overloaded (a server answers 503 and the client retries)
// instead of letting latency grow without limit. An item whose deadline passes while it waits
// fails with errc::timeout instead of running.
//
//   serve::batcher<std::string, prediction> b(
//       [&](std::span<const std::string> texts) { return clf.predict_batch(texts); },
//       {.max_batch = 32, .max_wait = std::chrono::milliseconds(2)});
//   prediction p = b.submit("the plot is thin").get();
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace serve {

/// How a batcher groups and bounds its work.
struct batch_options {
    std::size_t max_batch = 32;                ///< most items run together
    std::chrono::microseconds max_wait{2000};  ///< longest wait for a batch to fill
    std::size_t max_queue = 1024;              ///< most items waiting (then: overloaded)
    std::size_t workers = 1;                   ///< threads running batches at once
    std::chrono::milliseconds timeout{30000};  ///< an item's longest wait in the queue
};

/// What a batcher has done so far (for /metrics).
struct batch_stats {
    std::size_t batches = 0;    ///< batches run
    std::size_t items = 0;      ///< items run in them
    std::size_t rejected = 0;   ///< submits refused: the queue was full
    std::size_t timed_out = 0;  ///< items that waited past their deadline
    std::size_t failed = 0;     ///< items whose batch threw
    /// batches by size: [k] counts batches of k + 1 items (k < max_batch)
    std::vector<std::size_t> sizes;
};

/// Runs items submitted from many threads in batches on its own worker threads (see the file
/// comment). Out is what the batch function returns per item, in order.
template <class In, class Out>
class batcher {
  public:
    /// The work: the outputs of a batch of inputs, one per input, in order.
    using batch_function = std::function<std::vector<Out>(std::span<const In>)>;

    /// Starts opt.workers threads running f on batches.
    batcher(batch_function f, batch_options opt = {}) : f_(std::move(f)), opt_(opt) {
        if (opt_.max_batch == 0 || opt_.workers == 0 || opt_.max_queue == 0)
            throw error(errc::invalid_argument, "serve::batcher",
                        "max_batch, max_queue and workers must be at least 1");
        stats_.sizes.assign(opt_.max_batch, 0);
        for (std::size_t i = 0; i < opt_.workers; ++i) threads_.emplace_back([this] { work(); });
    }
    batcher(const batcher&) = delete;
    batcher& operator=(const batcher&) = delete;
    /// Runs what is queued, then stops the workers.
    ~batcher() {
        {
            std::lock_guard lock(mu_);
            stopping_ = true;
        }
        ready_.notify_all();
        for (auto& t : threads_) t.join();
    }

    /// Queues one item; its output (or the batch's exception, or errc::timeout) arrives
    /// through the future. Throws errc::overloaded when max_queue items already wait.
    std::future<Out> submit(In in) {
        std::promise<Out> p;
        auto fut = p.get_future();
        {
            std::lock_guard lock(mu_);
            if (queue_.size() >= opt_.max_queue) {
                ++stats_.rejected;
                throw error(errc::overloaded, "serve::batcher",
                            ftune::detail::cat(queue_.size(),
                                               " requests already wait; try again later (or "
                                               "raise the queue limit)"));
            }
            queue_.push_back({std::move(in), std::move(p), clock::now() + opt_.timeout});
        }
        ready_.notify_one();
        return fut;
    }

    /// Items waiting now.
    std::size_t queued() const {
        std::lock_guard lock(mu_);
        return queue_.size();
    }
    /// A copy of the counters.
    batch_stats stats() const {
        std::lock_guard lock(mu_);
        return stats_;
    }
    /// The options it runs with.
    const batch_options& options() const noexcept { return opt_; }

  private:
    using clock = std::chrono::steady_clock;
    struct item {
        In in;
        std::promise<Out> out;
        clock::time_point deadline;
    };

    // A worker: wait for an item, then up to max_wait for the batch to fill, run it.
    void work() {
        for (;;) {
            std::vector<item> batch;
            {
                std::unique_lock lock(mu_);
                ready_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
                if (queue_.empty()) return;  // stopping, nothing left
                const auto until = clock::now() + opt_.max_wait;
                ready_.wait_until(lock, until,
                                  [&] { return stopping_ || queue_.size() >= opt_.max_batch; });
                const auto now = clock::now();
                while (!queue_.empty() && batch.size() < opt_.max_batch) {
                    item it = std::move(queue_.front());
                    queue_.pop_front();
                    if (it.deadline < now) {  // waited too long: fail it, do not run it
                        ++stats_.timed_out;
                        it.out.set_exception(std::make_exception_ptr(
                            error(errc::timeout, "serve::batcher",
                                  "the request waited in the queue past its timeout; the server is "
                                  "overloaded: try again later")));
                        continue;
                    }
                    batch.push_back(std::move(it));
                }
                if (!queue_.empty()) ready_.notify_one();  // more for another worker
            }
            if (batch.empty()) continue;
            run(batch);
        }
    }

    void run(std::vector<item>& batch) {
        std::vector<In> ins;
        ins.reserve(batch.size());
        for (auto& it : batch) ins.push_back(std::move(it.in));
        std::vector<Out> outs;
        std::exception_ptr failure;
        try {
            outs = f_(std::span<const In>(ins));
            if (outs.size() != ins.size())
                throw error(errc::internal, "serve::batcher",
                            ftune::detail::cat("the batch function returned ", outs.size(),
                                               " outputs for ", ins.size(), " inputs"));
        } catch (...) {
            failure = std::current_exception();
        }
        {
            std::lock_guard lock(mu_);
            ++stats_.batches;
            stats_.items += batch.size();
            ++stats_.sizes[batch.size() - 1];
            if (failure) stats_.failed += batch.size();
        }
        for (std::size_t i = 0; i < batch.size(); ++i) {
            if (failure)
                batch[i].out.set_exception(failure);
            else
                batch[i].out.set_value(std::move(outs[i]));
        }
    }

    batch_function f_;
    batch_options opt_;
    mutable std::mutex mu_;             // guards queue_, stopping_, stats_
    std::condition_variable ready_;     // an item arrived, or stopping
    std::deque<item> queue_;            // waiting items, oldest first
    bool stopping_ = false;             // the destructor runs
    batch_stats stats_;                 // counters
    std::vector<std::thread> threads_;  // the workers (last: started after the rest is built)
};

}  // namespace serve
FTUNE_NAMESPACE_END
