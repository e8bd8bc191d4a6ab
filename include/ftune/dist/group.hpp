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

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ftune/config.hpp"

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

}  // namespace dist
FTUNE_NAMESPACE_END
