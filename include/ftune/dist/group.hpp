// dist::group: the processes that train one model together (data parallelism), as the trainer
// sees them: a rank, a size, and the few collectives a data-parallel step needs. Sums are
// ordered: every rank gets ((x_0 + x_1) + x_2) + ... in rank order, the same bits everywhere
// and the same bits as one process adding its ranks' parts in that order, so an N-rank run can
// be checked bitwise against one process. dist::local_group is the one-process group (every
// collective a no-op); dist::mpi_group (dist/mpi.hpp, FTUNE_WITH_MPI) runs them on MPI.
//
//   ftune::dist::local_group g;                  // or dist::mpi_group from dist/mpi.hpp
//   auto h = g.start_sum(grads);                  // non-blocking: backward goes on meanwhile
//   ...
//   g.finish(h);                                  // grads now holds the ordered sum
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"

FTUNE_NAMESPACE_BEGIN
namespace dist {

/// A sum started by group::start_sum and not finished yet; group::finish completes it.
class pending {
  public:
    virtual ~pending() = default;
    /// Advances the sum without waiting; true once it is complete (MPI progresses non-blocking
    /// calls only inside MPI calls: a caller polls this between pieces of work).
    virtual bool test() = 0;
};

/// The processes training one model (see the file comment).
class group {
  public:
    virtual ~group() = default;
    /// This process's place, 0 .. size() - 1.
    virtual std::size_t rank() const noexcept = 0;
    /// How many processes.
    virtual std::size_t size() const noexcept = 0;
    /// Starts summing x over the ranks in place (every rank passes a span of the same length);
    /// x must stay alive and untouched until finish().
    virtual std::unique_ptr<pending> start_sum(std::span<float> x) = 0;
    /// Waits for a sum to complete; throws errc::timeout naming the ranks that did not take
    /// part when it waits longer than timeout() (p stays pending: finish may be called again,
    /// or the job stopped with abort(); the span must stay alive until one of them).
    virtual void finish(std::unique_ptr<pending>& p) = 0;
    /// The doubles of every rank, concatenated in rank order (each rank passes the same count).
    virtual std::vector<double> all_gather(std::span<const double> x) = 0;
    /// The bytes of rank `root` on every rank (b is resized to the root's size).
    virtual void broadcast(std::vector<char>& b, std::size_t root = 0) = 0;
    /// Waits until every rank calls it (or throws errc::timeout).
    virtual void barrier() = 0;
    /// Stops every process of the group at once (after an error on one of them).
    [[noreturn]] virtual void abort(int code) = 0;

    /// The ordered sum of x over the ranks, in place: start_sum then finish.
    void sum(std::span<float> x) {
        auto p = start_sum(x);
        finish(p);
    }
    /// Longest wait of a collective before it throws errc::timeout (a rank died or hangs).
    std::chrono::milliseconds timeout() const noexcept { return timeout_; }
    /// Sets timeout().
    void set_timeout(std::chrono::milliseconds t) noexcept { timeout_ = t; }

  private:
    std::chrono::milliseconds timeout_{600'000};
};

/// The group of one process: every collective returns at once with its input.
class local_group final : public group {
  public:
    std::size_t rank() const noexcept override { return 0; }
    std::size_t size() const noexcept override { return 1; }
    std::unique_ptr<pending> start_sum(std::span<float>) override { return nullptr; }
    void finish(std::unique_ptr<pending>& p) override { p.reset(); }
    std::vector<double> all_gather(std::span<const double> x) override {
        return {x.begin(), x.end()};
    }
    void broadcast(std::vector<char>&, std::size_t) override {}
    void barrier() override {}
    [[noreturn]] void abort(int code) override { std::exit(code); }
};

/// Whether this process was started by an MPI launcher (mpirun, srun): the variables Open MPI,
/// MPICH and PMIx put in each rank's environment.
inline bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
        if (std::getenv(v)) return true;
    return false;
}

/// The sum over ranks of x in rank order, as group::start_sum computes it, from the parts of
/// every rank held by one process (parts[r]: rank r's x): out[i] = ((parts[0][i] + parts[1][i])
/// + parts[2][i]) + ...; what one process compares an N-rank run with.
inline void ordered_sum(std::span<const std::span<const float>> parts, std::span<float> out) {
    for (std::size_t i = 0; i < out.size(); ++i) {
        float s = parts[0][i];  // a copy, not 0 + x: -0 stays -0
        for (std::size_t r = 1; r < parts.size(); ++r) s += parts[r][i];
        out[i] = s;
    }
}

/// Sums many gradient tensors over a group in buckets, each bucket's sum started as soon as its
/// last tensor is final, so the communication runs while backward computes the rest (as PyTorch
/// DDP's reducer does). The tensors are given in the order backward finishes them; consecutive
/// ones are packed into buckets: a bucket takes tensors until it holds at least bucket_bytes,
/// so it may pass that by one tensor. A bucket is copied into its buffer when its sum starts
/// and back by finish(). Sums start in bucket order on every rank (a bucket complete before
/// an earlier one waits for it), so the ranks' sums always pair up the same buckets.
///
///   dist::gradient_reducer r(g, grads_in_backward_order);
///   // during backward, after tensor i's gradient is complete:
///   r.ready(i);
///   // after backward:
///   r.finish();  // every tensor now holds the ordered sum over the ranks
class gradient_reducer {
  public:
    /// Buckets over `tensors` (spans that stay valid for the reducer's life).
    gradient_reducer(group& g, std::vector<std::span<float>> tensors,
                     std::size_t bucket_bytes = std::size_t(25) << 20)
        : g_(g),
          tensors_(std::move(tensors)),
          bucket_of_(tensors_.size()),
          marked_(tensors_.size(), false),
          rows_(tensors_.size()) {
        std::size_t floats = 0;
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            if (buckets_.empty() || floats * sizeof(float) >= bucket_bytes) {
                buckets_.push_back({});
                floats = 0;
            }
            buckets_.back().last = i;
            buckets_.back().size += tensors_[i].size();
            floats += tensors_[i].size();
            bucket_of_[i] = buckets_.size() - 1;
        }
        for (std::size_t b = 0, first = 0; b < buckets_.size(); ++b) {
            buckets_[b].first = first;
            first = buckets_[b].last + 1;
        }
    }

    /// Number of buckets.
    std::size_t buckets() const noexcept { return buckets_.size(); }

    /// For this step only, sums just the rows `rows` (sorted, distinct) of tensor i, a matrix of
    /// rows of `width` values: the caller knows every other row is zero on every rank (the rows
    /// of an embedding table that no example of the step uses), whose sum is zero too. Call it
    /// before the tensor's bucket starts; every rank must give the same rows.
    void only_rows(std::size_t i, std::vector<std::size_t> rows, std::size_t width) {
        if (i >= tensors_.size() || width == 0 || tensors_[i].size() % width != 0 ||
            (!rows.empty() && rows.back() >= tensors_[i].size() / width))
            throw error(errc::invalid_argument, "dist::gradient_reducer::only_rows",
                        "tensor " + std::to_string(i) +
                            ": rows outside it, or a width that "
                            "does not divide it");
        rows_[i] = {std::move(rows), width};
    }

    /// Says tensor i's gradient is final; starts its bucket's sum when i completes the bucket,
    /// and advances the sums in flight.
    void ready(std::size_t i) {
        if (i >= tensors_.size() || marked_[i])
            throw error(errc::invalid_argument, "dist::gradient_reducer::ready",
                        "tensor " + std::to_string(i) +
                            (i >= tensors_.size() ? " does not exist" : " was marked ready twice"));
        marked_[i] = true;
        ++buckets_[bucket_of_[i]].ready;
        while (next_ < buckets_.size() &&
               buckets_[next_].ready == buckets_[next_].last - buckets_[next_].first + 1)
            start(buckets_[next_++]);
        for (auto& o : buckets_)
            if (o.sum) o.sum->test();
    }

    /// Starts every bucket not started yet, waits for all, and writes the sums back; the
    /// reducer is then ready for the next step.
    void finish() {
        while (next_ < buckets_.size()) start(buckets_[next_++]);
        for (auto& b : buckets_) {
            if (!b.started) continue;  // summed and copied back by a finish() that then threw
            g_.finish(b.sum);
            std::size_t at = 0;
            for (std::size_t i = b.first; i <= b.last; ++i)
                pieces(i, [&](std::size_t from, std::size_t n) {
                    std::copy_n(b.buffer.begin() + std::ptrdiff_t(at), n,
                                tensors_[i].begin() + std::ptrdiff_t(from));
                    at += n;
                });
            for (std::size_t i = b.first; i <= b.last; ++i) rows_[i] = {};
            b.ready = 0;
            b.started = false;
        }
        next_ = 0;
        std::fill(marked_.begin(), marked_.end(), false);
    }

  private:
    struct bucket {
        std::size_t first = 0, last = 0;  // its tensors
        std::size_t size = 0;             // floats (all rows)
        std::size_t ready = 0;            // tensors final so far
        bool started = false;             // its sum is in flight
        std::vector<float> buffer;        // the packed tensors
        std::unique_ptr<pending> sum;     // the sum in flight
    };

    // Calls f(first value, count) for each contiguous piece of tensor i that is summed: the
    // whole tensor, or its selected rows (only_rows).
    template <class F>
    void pieces(std::size_t i, F&& f) const {
        const auto& [rows, width] = rows_[i];
        if (width == 0) return f(std::size_t(0), tensors_[i].size());
        for (const std::size_t r : rows) f(r * width, width);
    }

    void start(bucket& b) {
        std::size_t n = 0;
        for (std::size_t i = b.first; i <= b.last; ++i)
            pieces(i, [&](std::size_t, std::size_t k) { n += k; });
        b.buffer.resize(n);
        std::size_t at = 0;
        for (std::size_t i = b.first; i <= b.last; ++i)
            pieces(i, [&](std::size_t from, std::size_t k) {
                std::copy_n(tensors_[i].begin() + std::ptrdiff_t(from), k,
                            b.buffer.begin() + std::ptrdiff_t(at));
                at += k;
            });
        b.sum = g_.start_sum(b.buffer);
        b.started = true;
    }

    group& g_;
    std::vector<std::span<float>> tensors_;
    std::vector<std::size_t> bucket_of_;  // tensor -> bucket
    std::vector<bool> marked_;            // tensors marked ready this step
    struct row_selection {
        std::vector<std::size_t> rows;  // summed rows (only_rows), this step
        std::size_t width = 0;          // values per row (0: the whole tensor is summed)
    };
    std::vector<row_selection> rows_;  // per tensor
    std::vector<bucket> buckets_;
    std::size_t next_ = 0;  // the first bucket whose sum has not started
};

}  // namespace dist
FTUNE_NAMESPACE_END
