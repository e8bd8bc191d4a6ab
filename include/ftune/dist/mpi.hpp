// dist::mpi_group: dist::group on MPI (Open MPI or MPICH; FTUNE_WITH_MPI, linking MPI::MPI_CXX).
// Every collective is point-to-point messages underneath, waited for with a deadline, so a rank
// that died or hangs gives errc::timeout naming it instead of a job that hangs forever.
//
// The ordered sum (start_sum) is a reduce-scatter then an all-gather, as a ring all-reduce
// moves (2 (N - 1) / N of the vector in and out of each rank), but with the order fixed: rank j
// owns chunk j of the vector, receives that chunk from every rank, adds the parts in rank order
// (((x_0 + x_1) + x_2) + ...) and sends the result to every rank. MPI_Allreduce's own order is
// unspecified (and may change with the message size), which would make runs differ in the last
// bits from one process and from each other.
//
//   ftune::dist::mpi_session mpi(argc, argv);   // MPI_Init_thread ... MPI_Finalize
//   ftune::dist::mpi_group g;                   // MPI_COMM_WORLD, duplicated
//   g.sum(gradients);
#pragma once

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // the C API only (Open MPI's deprecated C++ bindings warn)
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "ftune/config.hpp"
#include "ftune/core/error.hpp"
#include "ftune/dist/group.hpp"

FTUNE_NAMESPACE_BEGIN
namespace dist {

namespace detail {
/// Collectives that timed out and have not completed since: MPI_Finalize would wait for their
/// ranks forever, so mpi_session aborts the job instead.
inline std::atomic<int> stranded_collectives{0};
}  // namespace detail

/// MPI for the lifetime of the object: MPI_Init_thread (funneled: only the main thread calls
/// MPI; OpenMP's threads never do) unless MPI is initialized already, MPI_Finalize at the end
/// if this object initialized it, or MPI_Abort (the whole job stops, nothing hangs) when it
/// ends through an exception or with a collective that timed out still pending.
class mpi_session {
  public:
    /// Initializes MPI with the program's arguments (MPI may read its own from them).
    mpi_session(int& argc, char**& argv) {
        int ready = 0;
        MPI_Initialized(&ready);
        if (ready) return;
        int provided = 0;
        if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            throw error(errc::io, "MPI_Init_thread", "MPI could not start");
        owner_ = true;
        exceptions_ = std::uncaught_exceptions();
    }
    mpi_session(const mpi_session&) = delete;
    mpi_session& operator=(const mpi_session&) = delete;
    ~mpi_session() {
        int done = 0;
        MPI_Finalized(&done);
        if (!owner_ || done) return;
        if (std::uncaught_exceptions() > exceptions_ || detail::stranded_collectives > 0)
            MPI_Abort(MPI_COMM_WORLD, 1);  // the other ranks may wait for this one forever
        MPI_Finalize();
    }

  private:
    bool owner_ = false;
    int exceptions_ = 0;  // uncaught exceptions when it started
};

/// dist::group on an MPI communicator (see the file comment).
class mpi_group final : public group {
  public:
    /// The processes of `comm` (duplicated: ftune's messages never meet the caller's).
    explicit mpi_group(MPI_Comm comm = MPI_COMM_WORLD) {
        MPI_Comm_dup(comm, &comm_);
        MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
        MPI_Comm_dup(comm_, &coll_comm_);  // all_gather, broadcast, barrier: apart from the sums
        MPI_Comm_set_errhandler(coll_comm_, MPI_ERRORS_RETURN);
        int r = 0, n = 0;
        MPI_Comm_rank(comm_, &r);
        MPI_Comm_size(comm_, &n);
        rank_ = std::size_t(r);
        size_ = std::size_t(n);
    }
    mpi_group(const mpi_group&) = delete;
    mpi_group& operator=(const mpi_group&) = delete;
    // MPI_Comm_free is collective: skipped when a rank may be gone (an exception on its way,
    // a timed-out collective pending), so that mpi_session gets to abort the job.
    ~mpi_group() override {
        int done = 0;
        MPI_Finalized(&done);
        if (!done && std::uncaught_exceptions() == 0 && detail::stranded_collectives == 0)
            MPI_Comm_free(&coll_comm_), MPI_Comm_free(&comm_);
    }

    std::size_t rank() const noexcept override { return rank_; }
    std::size_t size() const noexcept override { return size_; }

    std::unique_ptr<pending> start_sum(std::span<float> x) override {
        if (size_ == 1) return nullptr;
        if (x.size() / size_ + 1 > std::size_t(INT_MAX))
            throw error(errc::unsupported, "dist::mpi_group::start_sum",
                        "a chunk of more than 2^31 floats: sum the vector in parts");
        auto p = std::make_unique<ordered_sum_op>(*this, x, next_tag());
        p->start();
        return p;
    }

    void finish(std::unique_ptr<pending>& p) override {
        if (!p) return;
        auto& op = static_cast<ordered_sum_op&>(*p);
        try {  // every sum in flight advances while this one is awaited: another rank may wait
               // for one of them first, and a sum changes phase only when it is tested
            wait_until(
                [&] {
                    for (auto* o : live_)
                        if (o != &op) o->test();
                    return op.test();
                },
                [&] { return op.missing(); }, "a gradient sum");
        } catch (const error& e) {
            if (e.id() == errc::timeout && !op.stranded) {
                op.stranded = true;  // until it completes, ending MPI aborts the job
                ++detail::stranded_collectives;
            }
            throw;
        }
        p.reset();
    }

    // all_gather, broadcast and barrier are point-to-point messages (every rank to every rank,
    // or the root to every rank) rather than MPI's non-blocking collectives, whose requests do
    // not say which rank is missing: a timeout then names the ranks whose messages have not
    // arrived or left. The trainer gathers a few doubles a step, so the N (N - 1) messages of
    // an all-gather cost nothing next to the gradients' sum. They run on a communicator of their
    // own, so that their messages never match a sum's, even where ranks call different things.

    std::vector<double> all_gather(std::span<const double> x) override {
        const std::size_t n = x.size();
        if (n > std::size_t(INT_MAX))
            throw error(errc::unsupported, "dist::mpi_group::all_gather", "over 2^31 values");
        std::vector<double> out(n * size_);
        std::copy(x.begin(), x.end(), out.begin() + std::ptrdiff_t(rank_ * n));
        exchange e(*this, "an all-gather", next_collective_tag(), out);
        for (std::size_t j = 0; j < size_; ++j)
            if (j != rank_) {
                e.receive(out.data() + j * n, n, MPI_DOUBLE, j);
                e.send(out.data() + rank_ * n, n, MPI_DOUBLE, j);
            }
        e.wait();
        return out;
    }

    // (After a timeout, b's storage is left to the pending messages and b is empty: the job
    // aborts.)
    void broadcast(std::vector<char>& b, std::size_t root = 0) override {
        const int tag = next_collective_tag();         // one for the size and every piece, in order
        std::vector<std::uint64_t> size(1, b.size());  // the root's size first
        {
            exchange e(*this, "a broadcast", tag, size);
            e.from_root(size.data(), 1, MPI_UINT64_T, root);
            e.wait();
        }
        const std::uint64_t n = size[0];
        b.resize(n);
        for (std::uint64_t at = 0; at < n;) {  // in pieces an int counts
            const std::size_t part = std::size_t(std::min<std::uint64_t>(n - at, 1u << 30));
            exchange e(*this, "a broadcast", tag, b);
            e.from_root(b.data() + at, part, MPI_CHAR, root);
            e.wait();
            at += part;
        }
    }

    void barrier() override {
        std::vector<char> flags(size_);  // one byte from every rank to every rank
        exchange e(*this, "a barrier", next_collective_tag(), flags);
        for (std::size_t j = 0; j < size_; ++j)
            if (j != rank_) {
                e.receive(flags.data() + j, 1, MPI_CHAR, j);
                e.send(flags.data() + rank_, 1, MPI_CHAR, j);
            }
        e.wait();
    }

    [[noreturn]] void abort(int code) override {
        MPI_Abort(MPI_COMM_WORLD, code);
        std::exit(code);  // MPI_Abort does not return; if it did, this process stops anyway
    }

  private:
    // One ordered sum in flight: phase 1 sends chunk j to rank j and receives this rank's chunk
    // from every rank; the parts are added in rank order; phase 2 sends the sum of this rank's
    // chunk to every rank and receives the others' sums into place.
    class ordered_sum_op final : public pending {
      public:
        ordered_sum_op(mpi_group& g, std::span<float> x, int tag) : g_(g), x_(x), tag_(tag) {
            g_.live_.push_back(this);
        }

        void start() {
            const std::size_t N = g_.size_, me = g_.rank_;
            parts_.resize(N);
            for (std::size_t j = 0; j < N; ++j) {
                if (j == me) continue;
                const auto [b, e] = chunk(me);  // rank j's part of my chunk comes in
                parts_[j].resize(e - b);
                post_recv(parts_[j].data(), e - b, j);
                const auto [cb, ce] = chunk(j);  // my part of rank j's chunk goes out
                post_send(x_.data() + cb, ce - cb, j);
            }
        }

        bool stranded = false;  // it timed out once (counted in detail::stranded_collectives)

        bool test() override {
            if (phase_ == 3) return true;
            if (!progress()) return false;
            if (phase_ == 1) {  // every part of my chunk is here: add in rank order
                const auto [b, e] = chunk(g_.rank_);
                for (std::size_t i = b; i < e; ++i) {
                    float s = g_.rank_ == 0 ? x_[i] : parts_[0][i - b];
                    for (std::size_t r = 1; r < g_.size_; ++r)
                        s += r == g_.rank_ ? x_[i] : parts_[r][i - b];
                    x_[i] = s;
                }
                phase_ = 2;
                for (std::size_t j = 0; j < g_.size_; ++j) {
                    if (j == g_.rank_) continue;
                    post_send(x_.data() + b, e - b, j);
                    const auto [jb, je] = chunk(j);
                    post_recv(x_.data() + jb, je - jb, j);
                }
                return false;
            }
            phase_ = 3;
            if (stranded) {
                stranded = false;
                --detail::stranded_collectives;
            }
            return true;
        }

        // The ranks whose messages have not arrived or left yet.
        std::vector<std::size_t> missing() const { return pending_peers(reqs_, peers_); }

        // Requests still pending (only after a timeout, when the job is about to abort) are
        // left to MPI, and their buffers leaked rather than freed under a late message.
        ~ordered_sum_op() override {
            std::erase(g_.live_, this);
            if (std::any_of(reqs_.begin(), reqs_.end(),
                            [](MPI_Request r) { return r != MPI_REQUEST_NULL; }))
                new std::vector<std::vector<float>>(std::move(parts_));  // leaked on purpose
        }

      private:
        // Elements [n j / N, n (j + 1) / N) of the vector: rank j's chunk.
        std::pair<std::size_t, std::size_t> chunk(std::size_t j) const {
            const std::size_t n = x_.size(), N = g_.size_;
            return {n * j / N, n * (j + 1) / N};
        }
        void post_send(const float* p, std::size_t n, std::size_t to) {
            reqs_.push_back(MPI_REQUEST_NULL);
            peers_.push_back(to);
            expected_.resize(reqs_.size(), -1);  // a send: nothing to check
            g_.check(MPI_Isend(p, int(n), MPI_FLOAT, int(to), tag_, g_.comm_, &reqs_.back()),
                     "MPI_Isend");
        }
        void post_recv(float* p, std::size_t n, std::size_t from) {
            reqs_.push_back(MPI_REQUEST_NULL);
            peers_.push_back(from);
            expected_.resize(reqs_.size(), -1);
            expected_.back() = int(n);
            g_.check(MPI_Irecv(p, int(n), MPI_FLOAT, int(from), tag_, g_.comm_, &reqs_.back()),
                     "MPI_Irecv");
        }
        // Tests every request of the phase; true when all are complete (their slots cleared).
        // A receive whose count is not the chunk's means the ranks passed vectors of different
        // lengths: an error, not a sum with zeros in it.
        bool progress() {
            bool all = true;
            for (std::size_t k = 0; k < reqs_.size(); ++k) {
                if (reqs_[k] == MPI_REQUEST_NULL) continue;
                int done = 0;
                MPI_Status st;
                g_.check(MPI_Test(&reqs_[k], &done, &st), "MPI_Test");
                all = all && done;
                if (done && expected_[k] >= 0) {
                    int got = 0;
                    MPI_Get_count(&st, MPI_FLOAT, &got);
                    if (got != expected_[k])
                        throw error(errc::shape_mismatch, "rank " + std::to_string(g_.rank_),
                                    "rank " + std::to_string(peers_[k]) + " sent " +
                                        std::to_string(got) + " floats of a chunk of " +
                                        std::to_string(expected_[k]) +
                                        ": every rank must sum a vector of the same length");
                }
            }
            if (all) {
                reqs_.clear();
                peers_.clear();
                expected_.clear();
            }
            return all;
        }

        mpi_group& g_;
        std::span<float> x_;
        int tag_;
        int phase_ = 1;                          // 1: parts coming in; 2: sums going out; 3: done
        std::vector<std::vector<float>> parts_;  // parts_[r]: rank r's part of my chunk
        std::vector<MPI_Request> reqs_;          // the phase's requests
        std::vector<std::size_t> peers_;         // the rank of each request
        std::vector<int> expected_;              // a receive's count (-1: a send)
    };

    // The ranks of the requests still pending (peers[k]: request k's), each once.
    static std::vector<std::size_t> pending_peers(const std::vector<MPI_Request>& reqs,
                                                  const std::vector<std::size_t>& peers) {
        std::vector<std::size_t> out;
        for (std::size_t k = 0; k < reqs.size(); ++k)
            if (reqs[k] != MPI_REQUEST_NULL &&
                std::find(out.begin(), out.end(), peers[k]) == out.end())
                out.push_back(peers[k]);
        return out;
    }

    // A tag per sum: messages of two sums in flight never mix (MPI keeps each pair's order).
    int next_tag() {
        tag_ = (tag_ + 1) % 32768;  // MPI guarantees tags up to 32767
        return tag_;
    }

    void check(int rc, const char* call) const {
        if (rc == MPI_SUCCESS) return;
        char text[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, text, &len);
        throw error(errc::io, call,
                    "rank " + std::to_string(rank_) + ": " + std::string(text, len));
    }

    // Polls done() until it is true, or throws errc::timeout after timeout() naming what waited
    // and the ranks missing() lists.
    template <class Done, class Missing>
    void wait_until(Done done, Missing missing, const char* what) {
        const auto deadline = std::chrono::steady_clock::now() + timeout();
        for (std::size_t spins = 0; !done(); ++spins) {
            if (std::chrono::steady_clock::now() > deadline) {
                std::string who;
                for (const std::size_t r : missing())
                    who += (who.empty() ? "" : ", ") + std::to_string(r);
                throw error(errc::timeout, "rank " + std::to_string(rank_),
                            std::string(what) + " waited more than " +
                                std::to_string(timeout().count()) + " ms" +
                                (who.empty() ? std::string(" for the other ranks")
                                             : " for rank(s) " + who) +
                                ": a rank stopped or hangs");
            }
            if (spins > 1000) std::this_thread::yield();  // (a sleep slows big transfers 3x)
        }
    }

    // The messages of one collective (all_gather, broadcast, barrier) on coll_comm_ under one
    // tag, the rank each request exchanges with, and the count each receive expects. Buffer
    // holds the storage the messages read and write: if the exchange ends with messages still
    // pending (a timeout, an MPI error), that storage is leaked rather than freed under them and
    // the collective counted as stranded (detail::stranded_collectives: the job aborts at the
    // end).
    template <class Buffer>
    class exchange {
      public:
        exchange(mpi_group& g, const char* what, int tag, Buffer& buffer)
            : g_(g), what_(what), tag_(tag), buffer_(buffer) {}
        exchange(const exchange&) = delete;
        exchange& operator=(const exchange&) = delete;
        ~exchange() {
            if (std::all_of(reqs_.begin(), reqs_.end(),
                            [](MPI_Request r) { return r == MPI_REQUEST_NULL; }))
                return;
            ++detail::stranded_collectives;
            new Buffer(std::move(buffer_));  // leaked on purpose: the job aborts
        }
        // Receives n values of type t from rank `from` into p.
        void receive(void* p, std::size_t n, MPI_Datatype t, std::size_t from) {
            add(from, int(n), t);
            g_.check(MPI_Irecv(p, int(n), t, int(from), tag_, g_.coll_comm_, &reqs_.back()),
                     "MPI_Irecv");
        }
        // Sends n values of type t at p to rank `to`.
        void send(const void* p, std::size_t n, MPI_Datatype t, std::size_t to) {
            add(to, -1, t);
            g_.check(MPI_Isend(p, int(n), t, int(to), tag_, g_.coll_comm_, &reqs_.back()),
                     "MPI_Isend");
        }
        // The root sends p to every rank; the others receive it from the root.
        void from_root(void* p, std::size_t n, MPI_Datatype t, std::size_t root) {
            if (g_.rank_ != root) return receive(p, n, t, root);
            for (std::size_t j = 0; j < g_.size_; ++j)
                if (j != root) send(p, n, t, j);
        }
        // Waits for every message with the deadline: errc::timeout naming the ranks still
        // pending; a receive of another count than expected (ranks passing different lengths)
        // is an error, not zeros in the result.
        void wait() {
            g_.wait_until(
                [&] {
                    bool all = true;
                    for (std::size_t k = 0; k < reqs_.size(); ++k) {
                        if (reqs_[k] == MPI_REQUEST_NULL) continue;
                        int done = 0, got = 0;
                        MPI_Status st;
                        g_.check(MPI_Test(&reqs_[k], &done, &st), "MPI_Test");
                        all = all && done;
                        if (!done || expected_[k] < 0) continue;
                        MPI_Get_count(&st, types_[k], &got);
                        if (got != expected_[k])
                            throw error(errc::shape_mismatch, "rank " + std::to_string(g_.rank_),
                                        std::string(what_) + ": rank " + std::to_string(peers_[k]) +
                                            " sent " + std::to_string(got) + " values, not " +
                                            std::to_string(expected_[k]) +
                                            ": every rank must pass the same count");
                    }
                    return all;
                },
                [&] { return pending_peers(reqs_, peers_); }, what_);
        }

      private:
        void add(std::size_t peer, int expected, MPI_Datatype t) {
            reqs_.push_back(MPI_REQUEST_NULL);
            peers_.push_back(peer);
            expected_.push_back(expected);
            types_.push_back(t);
        }
        mpi_group& g_;
        const char* what_;
        int tag_;
        Buffer& buffer_;
        std::vector<MPI_Request> reqs_;    // the messages' requests (null once complete)
        std::vector<std::size_t> peers_;   // the rank of each request
        std::vector<int> expected_;        // a receive's count (-1: a send)
        std::vector<MPI_Datatype> types_;  // each request's type
    };

    // A tag per collective on coll_comm_ (every rank calls them in the same order).
    int next_collective_tag() {
        collective_tag_ = (collective_tag_ + 1) % 32768;
        return collective_tag_;
    }

    std::vector<ordered_sum_op*> live_;   // the sums in flight
    MPI_Comm comm_ = MPI_COMM_NULL;       // the sums' messages
    MPI_Comm coll_comm_ = MPI_COMM_NULL;  // the other collectives' messages
    std::size_t rank_ = 0, size_ = 1;
    int tag_ = 0, collective_tag_ = 0;
};

}  // namespace dist
FTUNE_NAMESPACE_END
