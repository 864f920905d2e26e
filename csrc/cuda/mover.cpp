#include "cuda/mover.h"

#include <chrono>

#include "cuda/cuda_check.h"
#include "cuda/q8_rows16_unpack.h"

namespace hm::cuda {

namespace {
cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}
cudaEvent_t as_event(void* e) {
  return static_cast<cudaEvent_t>(e);
}
}  // namespace

Mover::Mover(std::shared_ptr<const PinnedExpertStore> store, std::shared_ptr<DeviceSlab> slab,
             int max_in_flight, int max_pending_prefetch)
    : store_(std::move(store)),
      slab_(std::move(slab)),
      max_in_flight_(max_in_flight),
      max_pending_prefetch_(max_pending_prefetch) {
  HM_CHECK(store_ && slab_, "store and slab must not be null");
  HM_CHECK(store_->layout().stride == slab_->layout().stride &&
               store_->layout().format == slab_->layout().format,
           "store and slab must share one expert layout: store stride ", store_->layout().stride,
           ", slab stride ", slab_->layout().stride);
  HM_CHECK(max_in_flight >= 1 && max_in_flight <= 64, "max_in_flight must be in [1, 64], got ",
           max_in_flight);
  HM_CHECK(max_pending_prefetch >= 1, "max_pending_prefetch must be >= 1, got ",
           max_pending_prefetch);
  const RowPacking from = store_->layout().packing, to = slab_->layout().packing;
  HM_CHECK(from == to || (from == RowPacking::kQ8Rows16 && to == RowPacking::kGguf),
           "the slab must hold GGUF rows (store packing ", packing_name(from), ", slab packing ",
           packing_name(to), ")");
  HM_CUDA_CHECK(cudaSetDevice(slab_->device()));
  if (from != to) {
    // q8_rows16 store: a copy lands in a staging buffer and a kernel on the conversion stream
    // writes its GGUF rows into the slot (q8_rows16_unpack.h). Two buffers in turn, so the copy
    // engine moves the next expert while the previous one converts (11 us of a 96 us copy on the
    // H200); a buffer is refilled only after its conversion has read it.
    cudaStream_t cs = nullptr;
    HM_CUDA_CHECK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
    convert_stream_ = cs;
    for (Staging& st : staging_) {
      void* p = nullptr;
      HM_CUDA_CHECK(cudaMalloc(&p, slab_->stride()));
      st.buf = static_cast<uint8_t*>(p);
      for (void** e : {&st.copied, &st.free}) {
        cudaEvent_t ev = nullptr;
        HM_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        *e = ev;
      }
    }
  }
  cudaStream_t s = nullptr;
  HM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  for (int i = 0; i < max_in_flight; ++i) {
    cudaEvent_t e = nullptr;
    HM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    free_events_.push_back(e);
  }
  slots_.resize(static_cast<std::size_t>(slab_->n_slots()));
  thread_ = std::thread([this] { run(); });
}

Mover::~Mover() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  (void)cudaStreamSynchronize(as_stream(stream_));
  for (auto& f : in_flight_) free_events_.push_back(f.event);
  for (void* e : free_events_) (void)cudaEventDestroy(as_event(e));
  (void)cudaStreamDestroy(as_stream(stream_));
  if (convert_stream_) {
    (void)cudaStreamSynchronize(as_stream(convert_stream_));
    (void)cudaStreamDestroy(as_stream(convert_stream_));
  }
  for (Staging& st : staging_) {
    if (st.buf) (void)cudaFree(st.buf);
    for (void* e : {st.copied, st.free})
      if (e) (void)cudaEventDestroy(as_event(e));
  }
}

void Mover::check_slot(int slot) const {
  HM_CHECK(slot >= 0 && slot < static_cast<int>(slots_.size()), "slot must be in [0, ",
           slots_.size(), "), got ", slot);
}

void Mover::finish(const FetchCompletion& c, std::vector<FetchCompletion>& out) {
  out.push_back(c);
  idle_cv_.notify_all();
}

void Mover::request_fetch(const FetchRequest& r) {
  HM_CHECK(r.expert >= 0 && r.expert < store_->n_experts(), "expert must be in [0, ",
           store_->n_experts(), "), got ", r.expert);
  std::vector<FetchCompletion> done;
  {
    std::lock_guard<std::mutex> lk(mu_);
    HM_CHECK_RT(error_.empty(), "mover thread failed: ", error_);
    check_slot(r.slot);
    Slot& s = slots_[static_cast<std::size_t>(r.slot)];
    // A newer request for the slot supersedes queued ones (they never started).
    for (auto* q : {&demand_, &prefetch_}) {
      for (auto it = q->begin(); it != q->end();) {
        if (it->slot == r.slot) {
          done.push_back({it->expert, it->slot, FetchStatus::kDropped, it->generation});
          ++stats_.superseded;
          it = q->erase(it);
        } else {
          ++it;
        }
      }
    }
    if (!s.copying && s.physical == r.expert) {
      s.resident = r.expert;  // already there: nothing to copy
      ++stats_.already_resident;
      done.push_back({r.expert, r.slot, FetchStatus::kReady, r.generation});
    } else {
      s.resident = -1;  // from now on no new plan may name this slot
      if (s.refs > 0) ++stats_.waits_for_release;
      if (r.prefetch) {
        prefetch_.push_back(r);
        while (static_cast<int>(prefetch_.size()) > max_pending_prefetch_) {
          const FetchRequest old = prefetch_.front();
          prefetch_.pop_front();
          ++stats_.dropped_overflow;
          Slot& os = slots_[static_cast<std::size_t>(old.slot)];
          if (!os.copying) os.resident = os.physical;
          done.push_back({old.expert, old.slot, FetchStatus::kDropped, old.generation});
        }
      } else {
        demand_.push_back(r);
      }
    }
    if (!callback_) completions_.insert(completions_.end(), done.begin(), done.end());
  }
  cv_.notify_all();
  idle_cv_.notify_all();
  if (callback_)
    for (const auto& c : done) callback_(c);
}

void Mover::set_generation(uint64_t g) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    generation_ = g;
  }
  cv_.notify_all();
}

std::vector<FetchCompletion> Mover::poll_completions() {
  std::lock_guard<std::mutex> lk(mu_);
  HM_CHECK_RT(error_.empty(), "mover thread failed: ", error_);
  std::vector<FetchCompletion> out;
  out.swap(completions_);
  return out;
}

void Mover::set_completion_callback(std::function<void(const FetchCompletion&)> cb) {
  std::lock_guard<std::mutex> lk(mu_);
  callback_ = std::move(cb);
}

bool Mover::acquire(uint64_t plan_id, const int* slots, const int64_t* experts, int n) {
  HM_CHECK(n >= 0 && (n == 0 || (slots && experts)), "acquire needs n >= 0 slots and experts");
  std::lock_guard<std::mutex> lk(mu_);
  HM_CHECK(plans_.find(plan_id) == plans_.end(), "plan id ", plan_id, " is already acquired");
  for (int i = 0; i < n; ++i) {
    check_slot(slots[i]);
    if (slots_[static_cast<std::size_t>(slots[i])].resident != experts[i] || experts[i] < 0)
      return false;
  }
  std::vector<int>& held = plans_[plan_id];
  held.assign(slots, slots + n);
  for (int s : held) ++slots_[static_cast<std::size_t>(s)].refs;
  return true;
}

void Mover::release(uint64_t plan_id) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = plans_.find(plan_id);
    HM_CHECK(it != plans_.end(), "release: plan id ", plan_id, " is not acquired");
    for (int s : it->second) --slots_[static_cast<std::size_t>(s)].refs;
    plans_.erase(it);
  }
  cv_.notify_all();
}

int64_t Mover::resident_expert(int slot) const {
  std::lock_guard<std::mutex> lk(mu_);
  check_slot(slot);
  return slots_[static_cast<std::size_t>(slot)].resident;
}

std::vector<int64_t> Mover::residency() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::vector<int64_t> out;
  out.reserve(slots_.size());
  for (const auto& s : slots_) out.push_back(s.resident);
  return out;
}

int Mover::slot_refs(int slot) const {
  std::lock_guard<std::mutex> lk(mu_);
  check_slot(slot);
  return slots_[static_cast<std::size_t>(slot)].refs;
}

bool Mover::idle() const {
  std::lock_guard<std::mutex> lk(mu_);
  return demand_.empty() && prefetch_.empty() && in_flight_.empty();
}

void Mover::wait_idle() {
  std::unique_lock<std::mutex> lk(mu_);
  idle_cv_.wait(lk, [this] {
    return !error_.empty() || (demand_.empty() && prefetch_.empty() && in_flight_.empty());
  });
  HM_CHECK_RT(error_.empty(), "mover thread failed: ", error_);
}

MoverStats Mover::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

// Copy stream: wait until staging buffer k's last conversion has read it, copy into it, mark it
// copied. Conversion stream: wait for the copy, convert into the slot, mark the buffer free.
// Conversions run in issue order on one stream, so completions (recorded after them) stay in order.
void Mover::copy_and_convert(const FetchRequest& r) {
  Staging& st = staging_[next_staging_];
  next_staging_ ^= 1;
  cudaStream_t cs = as_stream(stream_), vs = as_stream(convert_stream_);
  HM_CUDA_CHECK(cudaStreamWaitEvent(cs, as_event(st.free), 0));  // never recorded: no wait
  HM_CUDA_CHECK(cudaMemcpyAsync(st.buf, store_->expert_ptr(r.expert), slab_->stride(),
                                cudaMemcpyHostToDevice, cs));
  HM_CUDA_CHECK(cudaEventRecord(as_event(st.copied), cs));
  HM_CUDA_CHECK(cudaStreamWaitEvent(vs, as_event(st.copied), 0));
  q8_rows16_to_gguf_async(st.buf, slab_->slot_ptr(r.slot), store_->layout(), vs);
  HM_CUDA_CHECK(cudaEventRecord(as_event(st.free), vs));
}

void Mover::run() {
  try {
    HM_CUDA_CHECK(cudaSetDevice(slab_->device()));
    std::unique_lock<std::mutex> lk(mu_);
    while (true) {
      std::vector<FetchCompletion> done;
      // 1. Retire finished copies, oldest first (one stream: they finish in order).
      while (!in_flight_.empty()) {
        const cudaError_t q = cudaEventQuery(as_event(in_flight_.front().event));
        if (q == cudaErrorNotReady) break;
        HM_CUDA_CHECK(q);
        const InFlight f = in_flight_.front();
        in_flight_.erase(in_flight_.begin());
        free_events_.push_back(f.event);
        Slot& s = slots_[static_cast<std::size_t>(f.req.slot)];
        s.copying = false;
        s.physical = f.req.expert;
        ++stats_.copies_done;
        stats_.bytes_copied += slab_->stride();
        bool newer = false;
        for (auto* q2 : {&demand_, &prefetch_})
          for (const auto& r : *q2) newer = newer || r.slot == f.req.slot;
        if (newer) {
          ++stats_.superseded;
          done.push_back({f.req.expert, f.req.slot, FetchStatus::kDropped, f.req.generation});
        } else {
          s.resident = f.req.expert;  // the bytes are there: plans may name it now
          done.push_back({f.req.expert, f.req.slot, FetchStatus::kReady, f.req.generation});
        }
      }
      // 2. Start copies: demand first, then fresh prefetches; skip slots still referenced.
      while (static_cast<int>(in_flight_.size()) < max_in_flight_) {
        bool started = false;
        for (auto* q : {&demand_, &prefetch_}) {
          for (auto it = q->begin(); it != q->end() && !started;) {
            Slot& s = slots_[static_cast<std::size_t>(it->slot)];
            if (it->prefetch && it->generation < generation_) {
              ++stats_.dropped_stale;
              if (!s.copying) s.resident = s.physical;
              done.push_back({it->expert, it->slot, FetchStatus::kDropped, it->generation});
              it = q->erase(it);
              continue;
            }
            if (s.refs > 0 || s.copying) {
              ++it;
              continue;
            }
            const FetchRequest r = *it;
            q->erase(it);
            s.copying = true;
            s.physical = -1;
            s.resident = -1;
            InFlight f{r, free_events_.back()};
            free_events_.pop_back();
            if (convert_stream_) {
              copy_and_convert(r);
              HM_CUDA_CHECK(cudaEventRecord(as_event(f.event), as_stream(convert_stream_)));
            } else {
              HM_CUDA_CHECK(cudaMemcpyAsync(slab_->slot_ptr(r.slot), store_->expert_ptr(r.expert),
                                            slab_->stride(), cudaMemcpyHostToDevice,
                                            as_stream(stream_)));
              HM_CUDA_CHECK(cudaEventRecord(as_event(f.event), as_stream(stream_)));
            }
            in_flight_.push_back(f);
            started = true;
          }
          if (started) break;
        }
        if (!started) break;
      }
      if (!done.empty()) {
        if (callback_) {
          auto cb = callback_;
          lk.unlock();
          for (const auto& c : done) cb(c);
          lk.lock();
        } else {
          completions_.insert(completions_.end(), done.begin(), done.end());
        }
        idle_cv_.notify_all();
      }
      if (demand_.empty() && prefetch_.empty() && in_flight_.empty()) idle_cv_.notify_all();
      if (stop_ && in_flight_.empty()) break;
      if (stop_) {
        cv_.wait_for(lk, std::chrono::microseconds(20));
      } else if (!in_flight_.empty()) {
        // Copies in flight: poll their events often (an expert copy takes ~130-250 us).
        cv_.wait_for(lk, std::chrono::microseconds(10));
      } else {
        cv_.wait(lk);
      }
    }
  } catch (const std::exception& e) {
    std::lock_guard<std::mutex> lk2(mu_);  // the unique_lock above was released by unwinding
    error_ = e.what();
    idle_cv_.notify_all();
  }
}

}  // namespace hm::cuda
