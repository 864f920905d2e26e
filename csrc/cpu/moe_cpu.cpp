#include "cpu/moe_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/env_choice.h"
#include "core/q8_rows16.h"
#include "cpu/kernel_ops.h"
#include "cpu/numeric.h"

namespace hm::cpu {
namespace {

constexpr std::size_t kScratchAlign = 64;

// Rows per work item: phase 1 (rows of I, gate + up; packs h in its own range, so a multiple of
// 32 for Q8_0's blocks), phase 2 (rows of H: one AMX tile when a group is AMX-sized, else 64) and
// dataflow phase 2 (rows of H of one expert: 64). HYBRID_MOE_ITEM_ROWS=R1,R2 sets phase 1 and 2
// for measurements (dataflow: 4 x R2; rounded up to the granularity: Q8_0 32, AMX-sized groups 16,
// else one 4-row SIMD pass). Why 64 rows for decode-sized calls: a pure read of one expert's bytes
// through the pool runs at ~0.6 of the steady DRAM rate in 16 KiB items and ~0.9-0.97 in 64 KiB
// items (bench_burst_read.py); 16 down rows are 24 KiB (bf16) or 13 KiB (Q8_0), 64 rows 96 / 52
// KiB (bench/RESULTS.md, session 10). Fewer, even items per worker were measured and dropped
// (session 7): with one expert per call, one round of 14 equal items lost 5-8% of decode tok/s to
// the slowest core; 8-row phase-1 items were no better than 32.
struct ItemRows {
  int64_t phase1 = 32, phase2 = 16, dataflow = 64;
  bool set = false;  // from HYBRID_MOE_ITEM_ROWS
};
constexpr int64_t kSmallCallPhase2Rows = 64;  // phase 2 without AMX-sized groups

ItemRows item_rows_setting() {
  static const ItemRows v = [] {
    ItemRows r;
    const char* e = std::getenv("HYBRID_MOE_ITEM_ROWS");
    const std::string s = e ? e : "";
    if (s.empty()) return r;
    long long r1 = 0, r2 = 0;
    char tail = 0;
    const int n = std::sscanf(s.c_str(), "%lld,%lld%c", &r1, &r2, &tail);
    HM_CHECK(
        n == 2 && r1 > 0 && r2 > 0 && r1 <= 1 << 20 && r2 <= 1 << 20,
        "environment variable HYBRID_MOE_ITEM_ROWS='", s,
        "': expected two positive row counts R1,R2 (defaults: 32,64; 32,16 with AMX-sized groups)");
    r.phase1 = r1;
    r.phase2 = r2;
    r.dataflow = 4 * r2;
    r.set = true;
    return r;
  }();
  return v;
}

ItemRows item_rows(const ExpertLayout& L, bool any_tile_group) {
  const ItemRows set = item_rows_setting();
  const bool groups16 = any_tile_group || L.packing == RowPacking::kQ8Rows16;
  const int64_t gran1 = L.format == WeightFormat::kQ8_0 ? kQ8BlockSize : groups16 ? 16 : 4;
  const int64_t gran2 = groups16 ? 16 : 4;
  const auto round_up = [](int64_t r, int64_t g) { return (r + g - 1) / g * g; };
  const int64_t phase2 = set.set || any_tile_group ? set.phase2 : kSmallCallPhase2Rows;
  return {round_up(set.phase1, gran1), round_up(phase2, gran2), round_up(set.dataflow, gran2),
          set.set};
}

// Reused scratch buffers: fresh multi-MB allocations would page-fault on every layer.
class ScratchCache {
 public:
  struct Deleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<uint8_t, Deleter>;

  static ScratchCache& instance() {
    static auto* c = new ScratchCache();  // never destroyed: buffers may return at exit
    return *c;
  }
  std::pair<Buffer, std::size_t> acquire(std::size_t bytes) {
    bytes = align_up(std::max<std::size_t>(bytes, 1), 4096);
    {
      std::lock_guard<std::mutex> lk(m_);
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->second >= bytes) {
          auto out = std::move(*it);
          free_.erase(it);
          return out;
        }
    }
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(4096, bytes));
    HM_CHECK_RT(p != nullptr, "out of memory allocating ", bytes, " bytes of kernel scratch");
    return {Buffer(p), bytes};
  }
  void release(std::pair<Buffer, std::size_t> b) {
    std::lock_guard<std::mutex> lk(m_);
    free_.push_back(std::move(b));
    if (free_.size() > 4) {  // keep the 4 largest
      std::sort(free_.begin(), free_.end(),
                [](const auto& a, const auto& b) { return a.second > b.second; });
      free_.resize(4);
    }
  }

 private:
  std::mutex m_;
  std::vector<std::pair<Buffer, std::size_t>> free_;
};

// Software prefetch of the first `bytes` of `rows` rows: the start of the next kernel call's
// streams, issued before the current call so that its first loads do not wait for DRAM.
// Locality 3: into L1 (the call starts now); 2: into L2 (Job::prepare, an item later).
template <int Locality = 3>
inline void prefetch_rows(const uint8_t* w, std::size_t stride, int64_t rows, std::size_t bytes) {
  for (int64_t r = 0; r < rows; ++r)
    for (std::size_t off = 0; off < bytes; off += 64)
      __builtin_prefetch(w + r * stride + off, 0, Locality);
}

// L2 prefetch of `rows` whole rows: before a call whose group is large enough for the AMX tiles
// (which read 16 rows at once, each row a separate stream that the L2 streamer ramps up alone);
// a group of many tokens computes long enough on the current rows to hide the whole fetch.
inline void prefetch_rows_l2(const uint8_t* w, std::size_t stride, int64_t rows) {
  const uint8_t* end = w + rows * stride;
  for (const uint8_t* p = w; p < end; p += 64) __builtin_prefetch(p, 0, 2);
}

// An environment variable set to auto (or unset), 0 or 1 -> -1, 0, 1; else hm::ValueError.
int auto_off_on_env(const char* name) {
  return std::max(-1, env_choice(name, {"auto", "0", "1"}) - 1);
}

// HYBRID_MOE_DATAFLOW=auto|0|1: phase 2 as per-expert items that wait only for their own
// expert's phase 1 (see moe_cpu.h). auto (default): when the call has two or more expert groups
// and none is large enough for the AMX tiles (decode-sized calls).
int dataflow_setting() {  // -1 auto, 0 off, 1 on
  static const int v = auto_off_on_env("HYBRID_MOE_DATAFLOW");
  return v;
}

// HYBRID_MOE_BARRIER_WARM=0 turns the barrier-time weight prefetch off (for measurements).
bool barrier_warm_enabled() {
  static const bool on = env_choice("HYBRID_MOE_BARRIER_WARM", {"0", "1"}) != 0;
  return on;
}

// A counter on a cache line of its own: the items of different expert groups / row blocks add to
// their own counters at the same time, and waiting items poll them.
struct alignas(64) PaddedCount {
  std::atomic<int32_t> n{0};
};

struct Group {
  int32_t expert;
  int64_t slot0;  // first slot (index into slot_token / slot_weight)
  int n_tok;
  std::size_t x_off, h_off;  // packed activation offsets in scratch
};

class MoeJob final : public Job {
 public:
  MoeJob(const MoeLayerArgs& a, const KernelOps& ops) : args_(a), ops_(ops) {
    const auto& L = a.layout;
    experts_.assign(a.experts, a.experts + a.n_experts);
    args_.experts = experts_.data();
    // Group the assignments by expert (counting sort keeps token order inside a group).
    std::vector<int64_t> count(a.n_experts + 1, 0);
    for (int64_t i = 0; i < a.n_assignments; ++i) ++count[a.assignments[i].expert + 1];
    for (int64_t e = 0; e < a.n_experts; ++e) count[e + 1] += count[e];
    slot_token_.resize(a.n_assignments);
    slot_weight_.resize(a.n_assignments);
    std::vector<int64_t> pos(count.begin(), count.end() - 1);
    for (int64_t i = 0; i < a.n_assignments; ++i) {
      const auto& s = a.assignments[i];
      const int64_t p = pos[s.expert]++;
      slot_token_[p] = s.token;
      slot_weight_[p] = s.weight;
    }
    std::size_t off = 0;
    // Single-token groups of the same token share one packed input (decode: every group of a
    // T=1 call is token 0, packed once instead of once per expert).
    std::vector<std::size_t> single_x_off(a.tokens, SIZE_MAX);
    for (int64_t e = 0; e < a.n_experts; ++e) {
      const int64_t n = count[e + 1] - count[e];
      if (n == 0) continue;
      Group g{static_cast<int32_t>(e), count[e], static_cast<int>(n), 0, 0};
      std::size_t* shared = n == 1 ? &single_x_off[slot_token_[count[e]]] : nullptr;
      if (shared && *shared != SIZE_MAX) {
        g.x_off = *shared;
      } else {
        g.x_off = off;
        off += align_up(ops.packed_bytes(L.format, g.n_tok, L.hidden), kScratchAlign);
        if (shared) *shared = g.x_off;
        pack_groups_.push_back(static_cast<int32_t>(groups_.size()));
      }
      g.h_off = off;
      off += align_up(ops.packed_bytes(L.format, g.n_tok, L.intermediate), kScratchAlign);
      groups_.push_back(g);
    }
    bool any_tile_group = false;
    for (const Group& g : groups_) any_tile_group |= g.n_tok >= kAmxMinTokens;
    rows_ = item_rows(L, any_tile_group);
    const int64_t blocks1 = (L.intermediate + rows_.phase1 - 1) / rows_.phase1;
    n_items1_ = static_cast<int64_t>(groups_.size()) * blocks1;
    blocks1_ = blocks1;
    n_items2_ = groups_.empty() ? 0 : (L.hidden + rows_.phase2 - 1) / rows_.phase2;
    const int df = dataflow_setting();
    dataflow_ = df == 1 ? !groups_.empty() : df == -1 && groups_.size() >= 2 && !any_tile_group;
    if (dataflow_) {
      // Items = (expert group, rows_df rows of H): each reads one expert's rows (a contiguous 52
      // KiB at Q8_0, T=1), where a barrier-mode item reads its rows of every expert.
      rows_df_ = rows_.dataflow;
      n_blocks2_ = (L.hidden + rows_df_ - 1) / rows_df_;
      n_items2_ = static_cast<int64_t>(groups_.size()) * n_blocks2_;
      part_off_ = off;  // per slot a row of H floats: an item's down output before the reduction
      off += align_up(static_cast<std::size_t>(a.n_assignments) * L.hidden * sizeof(float),
                      kScratchAlign);
      gate_up_done_ = std::vector<PaddedCount>(groups_.size());
      block_done_ = std::vector<PaddedCount>(n_blocks2_);
    }
    if (!groups_.empty()) scratch_ = ScratchCache::instance().acquire(off);
  }
  ~MoeJob() override {
    if (scratch_.first) ScratchCache::instance().release(std::move(scratch_));
  }

  int phases() const override { return 3; }
  int64_t items(int p) const override {
    return p == 0 ? static_cast<int64_t>(pack_groups_.size()) : p == 1 ? n_items1_ : n_items2_;
  }
  void run(int p, int64_t item) override {
    if (p == 0)
      pack_inputs(groups_[pack_groups_[item]]);
    else if (p == 1)
      gate_up(groups_[item / blocks1_], item % blocks1_);
    else if (dataflow_)
      down_one(item / n_blocks2_, item % n_blocks2_);
    else
      down(item);
  }
  // Dataflow: a phase-2 item waits for its own expert group's phase-1 items only. Tickets run
  // phase-major, so by then every phase-1 item is taken; the groups that ended first go first.
  bool barrier(int p) const override { return !(dataflow_ && p == 2); }
  bool ready(int p, int64_t item) const override {
    return p != 2 || gate_up_done_[item / n_blocks2_].n.load(std::memory_order_acquire) == blocks1_;
  }
  void item_done(int p, int64_t item) noexcept override {
    if (dataflow_ && p == 1)
      gate_up_done_[item / blocks1_].n.fetch_add(1, std::memory_order_release);
  }
  // The item runs next on this thread: the start of the weight streams it opens first, into L2
  // (the item's own start prefetch then finds them there). Weights only: nothing a running item
  // writes.
  void prepare(int p, int64_t item) noexcept override {
    const auto& L = args_.layout;
    const std::size_t pf = prefetch_bytes();  // validated at submit: does not throw here
    if (p == 1) {
      const Group& g = groups_[item / blocks1_];
      const int64_t r0 = (item % blocks1_) * rows_.phase1;
      const int64_t rows = std::min<int64_t>(std::min(rows_.phase1, L.intermediate - r0), 4);
      const std::size_t stride = row_bytes(L.format, L.hidden);
      const uint8_t* base = args_.experts[g.expert] + r0 * stride;
      prefetch_rows<2>(base + L.gate_offset, stride, rows, std::min(pf, stride));
      prefetch_rows<2>(base + L.up_offset, stride, rows, std::min(pf, stride));
    } else if (p == 2 && !groups_.empty()) {
      const int64_t r0 = dataflow_ ? (item % n_blocks2_) * rows_df_ : item * rows_.phase2;
      const int64_t rows_item = dataflow_ ? rows_df_ : rows_.phase2;
      const int64_t rows = std::min<int64_t>(std::min(rows_item, L.hidden - r0), 4);
      const Group& g = groups_[dataflow_ ? item / n_blocks2_ : 0];
      const std::size_t stride = row_bytes(L.format, L.intermediate);
      prefetch_rows<2>(args_.experts[g.expert] + L.down_offset + r0 * stride, stride, rows,
                       std::min(pf, stride));
    }
  }
  // At a phase barrier: one weight row of the item per step into L2 (weights are read-only, so
  // this is safe before the earlier phase ends). Phase 1: the item's gate rows, then its up rows;
  // phase 2: its down rows, expert group after expert group.
  bool warm(int p, int64_t item, int64_t step) override {
    if (!barrier_warm_enabled()) return false;
    const auto& L = args_.layout;
    const uint8_t* row = nullptr;
    std::size_t len = 0;
    if (p == 1) {
      const Group& g = groups_[item / blocks1_];
      const int64_t r0 = (item % blocks1_) * rows_.phase1;
      const int64_t rows = std::min(rows_.phase1, L.intermediate - r0);
      if (step >= 2 * rows) return false;
      len = row_bytes(L.format, L.hidden);
      row = args_.experts[g.expert] + (step < rows ? L.gate_offset : L.up_offset) +
            (r0 + step % rows) * len;
    } else if (p == 2 && dataflow_) {
      const int64_t r0 = (item % n_blocks2_) * rows_df_, rows = std::min(rows_df_, L.hidden - r0);
      if (step >= rows) return false;
      len = row_bytes(L.format, L.intermediate);
      row = args_.experts[groups_[item / n_blocks2_].expert] + L.down_offset + (r0 + step) * len;
    } else if (p == 2) {
      const int64_t r0 = item * rows_.phase2, rows = std::min(rows_.phase2, L.hidden - r0);
      if (step >= rows * static_cast<int64_t>(groups_.size())) return false;
      len = row_bytes(L.format, L.intermediate);
      row = args_.experts[groups_[step / rows].expert] + L.down_offset + (r0 + step % rows) * len;
    } else {
      return false;
    }
    for (std::size_t off = 0; off < len; off += 64) __builtin_prefetch(row + off, 0, 2);
    __builtin_prefetch(row + len - 1, 0, 2);  // the last line when the row is not line-aligned
    return true;
  }

 private:
  uint8_t* scratch() const { return scratch_.first.get(); }

  // y[t * ldy + r] = <row r, activation t> for `rows` rows from w (row r0 of a matrix; with
  // q8_rows16 packing r0 and rows are multiples of 16, so w is the start of a group).
  void dot(const uint8_t* w, std::size_t stride, int64_t rows, int64_t n_in, const uint8_t* packed,
           int n_tok, float* y, int64_t ldy) const {
    if (args_.layout.packing == RowPacking::kQ8Rows16)
      ops_.dot_groups_q8(w, rows / kQ8GroupRows, n_in, packed, n_tok, y, ldy);
    else
      ops_.dot_rows(args_.layout.format, w, stride, rows, n_in, packed, n_tok, y, ldy);
  }

  void pack_inputs(const Group& g) {
    const auto& L = args_.layout;
    thread_local std::vector<const float*> src;
    src.resize(g.n_tok);
    for (int t = 0; t < g.n_tok; ++t) src[t] = args_.x + slot_token_[g.slot0 + t] * L.hidden;
    ops_.pack(L.format, g.n_tok, L.hidden, 0, L.hidden, src.data(), scratch() + g.x_off);
  }

  void gate_up(const Group& g, int64_t block) {
    const auto& L = args_.layout;
    const int64_t r0 = block * rows_.phase1, rows = std::min(rows_.phase1, L.intermediate - r0);
    const std::size_t stride = row_bytes(L.format, L.hidden);
    const uint8_t* base = args_.experts[g.expert];
    thread_local std::vector<float> yg, yu;
    thread_local std::vector<const float*> src;
    yg.resize(static_cast<std::size_t>(g.n_tok) * rows);
    yu.resize(yg.size());
    src.resize(g.n_tok);
    const uint8_t* xp = scratch() + g.x_off;
    const std::size_t pf = std::min<std::size_t>(prefetch_bytes(), stride);
    prefetch_rows(base + L.gate_offset + r0 * stride, stride, std::min<int64_t>(rows, 4), pf);
    if (g.n_tok >= kAmxMinTokens)  // up's first tile streams in while gate computes
      prefetch_rows_l2(base + L.up_offset + r0 * stride, stride, std::min<int64_t>(rows, 16));
    else
      prefetch_rows(base + L.up_offset + r0 * stride, stride, std::min<int64_t>(rows, 4), pf);
    dot(base + L.gate_offset + r0 * stride, stride, rows, L.hidden, xp, g.n_tok, yg.data(), rows);
    dot(base + L.up_offset + r0 * stride, stride, rows, L.hidden, xp, g.n_tok, yu.data(), rows);
    for (std::size_t i = 0; i < yg.size(); ++i) yg[i] = silu(yg[i]) * yu[i];
    for (int t = 0; t < g.n_tok; ++t) src[t] = yg.data() + t * rows;
    ops_.pack(L.format, g.n_tok, L.intermediate, r0, r0 + rows, src.data(), scratch() + g.h_off);
  }

  void down(int64_t item) {
    const auto& L = args_.layout;
    const int64_t r0 = item * rows_.phase2, rows = std::min(rows_.phase2, L.hidden - r0);
    const std::size_t stride = row_bytes(L.format, L.intermediate);
    thread_local std::vector<float> y;
    const std::size_t pf = std::min<std::size_t>(prefetch_bytes(), stride);
    const auto first_rows = [&](const Group& g) {
      return args_.experts[g.expert] + L.down_offset + r0 * stride;
    };
    if (!groups_.empty())
      prefetch_rows(first_rows(groups_[0]), stride, std::min<int64_t>(rows, 4), pf);
    for (std::size_t gi = 0; gi < groups_.size(); ++gi) {
      const Group& g = groups_[gi];
      // The next expert's rows start streaming while this one computes.
      if (gi + 1 < groups_.size()) {
        if (groups_[gi + 1].n_tok >= kAmxMinTokens && g.n_tok >= kAmxMinTokens)
          prefetch_rows_l2(first_rows(groups_[gi + 1]), stride, rows);
        else
          prefetch_rows(first_rows(groups_[gi + 1]), stride, std::min<int64_t>(rows, 4), pf);
      }
      y.resize(static_cast<std::size_t>(g.n_tok) * rows);
      dot(args_.experts[g.expert] + L.down_offset + r0 * stride, stride, rows, L.intermediate,
          scratch() + g.h_off, g.n_tok, y.data(), rows);
      for (int t = 0; t < g.n_tok; ++t) {
        const float w = slot_weight_[g.slot0 + t];
        float* o = args_.out + slot_token_[g.slot0 + t] * L.hidden + r0;
        const float* yt = y.data() + t * rows;
        for (int64_t j = 0; j < rows; ++j) o[j] += w * yt[j];
      }
    }
  }

  // Dataflow phase 2: group gi's down rows [r0, r0 + rows_df_) into its slots' partial rows; the
  // item that completes a row block adds every group's partial rows to out, groups in order, as
  // down() does (same operations in the same order: the result does not depend on the mode).
  void down_one(int64_t gi, int64_t block) {
    const auto& L = args_.layout;
    const Group& g = groups_[gi];
    const int64_t r0 = block * rows_df_, rows = std::min(rows_df_, L.hidden - r0);
    const std::size_t stride = row_bytes(L.format, L.intermediate);
    const uint8_t* w = args_.experts[g.expert] + L.down_offset + r0 * stride;
    prefetch_rows(w, stride, std::min<int64_t>(rows, 4),
                  std::min<std::size_t>(prefetch_bytes(), stride));
    thread_local std::vector<float> y;
    y.resize(static_cast<std::size_t>(g.n_tok) * rows);
    dot(w, stride, rows, L.intermediate, scratch() + g.h_off, g.n_tok, y.data(), rows);
    for (int t = 0; t < g.n_tok; ++t)
      std::copy_n(y.data() + t * rows, rows, partial(g.slot0 + t) + r0);
    const auto n_groups = static_cast<int32_t>(groups_.size());
    if (block_done_[block].n.fetch_add(1, std::memory_order_acq_rel) + 1 != n_groups) return;
    for (const Group& gr : groups_)
      for (int t = 0; t < gr.n_tok; ++t) {
        const float wt = slot_weight_[gr.slot0 + t];
        float* o = args_.out + slot_token_[gr.slot0 + t] * L.hidden + r0;
        const float* yt = partial(gr.slot0 + t) + r0;
        for (int64_t j = 0; j < rows; ++j) o[j] += wt * yt[j];
      }
  }
  float* partial(int64_t slot) const {
    return reinterpret_cast<float*>(scratch() + part_off_) + slot * args_.layout.hidden;
  }

  MoeLayerArgs args_;
  const KernelOps& ops_;
  std::vector<const uint8_t*> experts_;
  std::vector<int64_t> slot_token_;
  std::vector<float> slot_weight_;
  std::vector<Group> groups_;
  std::vector<int32_t> pack_groups_;  // groups whose input phase 0 packs (the others share one)
  ItemRows rows_;
  int64_t blocks1_ = 1, n_items1_ = 0, n_items2_ = 0;
  bool dataflow_ = false;
  int64_t rows_df_ = 0, n_blocks2_ = 0;    // dataflow phase 2: rows per item, row blocks of H
  std::size_t part_off_ = 0;               // dataflow: partial down rows [n_assignments][H] fp32
  std::vector<PaddedCount> gate_up_done_;  // per group: phase-1 items ended
  std::vector<PaddedCount> block_done_;    // per row block: groups whose item ended
  std::pair<ScratchCache::Buffer, std::size_t> scratch_;
};

// Prefetches experts' bytes into L2, 64 KiB per item (see ExpertWarm in moe_cpu.h). Item order:
// for each expert, its phase-1 bytes (gate rows then up rows, 8 rows of each per item, as phase 1
// walks them), then every expert's down matrix.
class WarmJob final : public Job {
 public:
  static constexpr std::size_t kItemBytes = 64 * 1024, kCheckBytes = 4096;
  WarmJob(const ExpertLayout& L, const uint8_t* const* experts, int64_t n,
          std::shared_ptr<std::atomic<bool>> stop)
      : L_(L), experts_(experts, experts + n), stop_(std::move(stop)) {
    row_ = row_bytes(L.format, L.hidden);
    rows_per_item_ = std::max<int64_t>(1, static_cast<int64_t>(kItemBytes / (2 * row_)));
    up_items_ = (L.intermediate + rows_per_item_ - 1) / rows_per_item_;
    down_items_ = static_cast<int64_t>((L.down_bytes + kItemBytes - 1) / kItemBytes);
  }
  int phases() const override { return 1; }
  int64_t items(int) const override {
    return static_cast<int64_t>(experts_.size()) * (up_items_ + down_items_);
  }
  void run(int, int64_t item) override {
    const int64_t n_up = static_cast<int64_t>(experts_.size()) * up_items_;
    if (item < n_up) {
      const uint8_t* base = experts_[item / up_items_];
      const int64_t r0 = (item % up_items_) * rows_per_item_;
      const int64_t rows = std::min(rows_per_item_, L_.intermediate - r0);
      const std::size_t off = static_cast<std::size_t>(r0) * row_,
                        len = static_cast<std::size_t>(rows) * row_;
      if (fetch(base + L_.gate_offset + off, len)) fetch(base + L_.up_offset + off, len);
      return;
    }
    item -= n_up;
    const std::size_t off = static_cast<std::size_t>(item % down_items_) * kItemBytes;
    fetch(experts_[item / down_items_] + L_.down_offset + off,
          std::min(kItemBytes, L_.down_bytes - off));
  }

 private:
  // false once cancelled (checked every kCheckBytes)
  bool fetch(const uint8_t* p, std::size_t len) {
    for (std::size_t done = 0; done < len; done += kCheckBytes) {
      if (stop_->load(std::memory_order_relaxed)) return false;
      const std::size_t end = std::min(len, done + kCheckBytes);
      for (std::size_t o = done; o < end; o += 64) __builtin_prefetch(p + o, 0, 2);
    }
    __builtin_prefetch(p + len - 1, 0, 2);  // the last line when len is not line-aligned
    return true;
  }

  ExpertLayout L_;
  std::vector<const uint8_t*> experts_;
  std::shared_ptr<std::atomic<bool>> stop_;
  std::size_t row_ = 0;
  int64_t rows_per_item_ = 1, up_items_ = 0, down_items_ = 0;
};

void validate(const MoeLayerArgs& a) {
  const auto& L = a.layout;
  HM_CHECK(L.hidden > 0 && L.intermediate > 0,
           "layout must come from make_expert_layout, got H=", L.hidden, " I=", L.intermediate);
  const ExpertLayout ref = make_expert_layout(L.format, L.hidden, L.intermediate, L.packing);
  HM_CHECK(ref.gate_offset == L.gate_offset && ref.up_offset == L.up_offset &&
               ref.down_offset == L.down_offset,
           "layout offsets differ from make_expert_layout(", format_name(L.format), ", ", L.hidden,
           ", ", L.intermediate, ")");
  HM_CHECK(a.tokens >= 0, "tokens must be >= 0, got ", a.tokens);
  HM_CHECK(a.n_assignments >= 0, "n_assignments must be >= 0, got ", a.n_assignments);
  HM_CHECK(a.n_experts >= 0 && a.n_experts < (int64_t(1) << 31),
           "n_experts out of range: ", a.n_experts);
  if (a.n_assignments == 0) return;
  HM_CHECK(a.assignments != nullptr, "assignments must not be null");
  HM_CHECK(a.experts != nullptr, "experts (pointer array) must not be null");
  HM_CHECK(a.x != nullptr, "x must not be null");
  HM_CHECK(a.out != nullptr, "out must not be null");
  for (int64_t i = 0; i < a.n_assignments; ++i) {
    const auto& s = a.assignments[i];
    HM_CHECK(s.token >= 0 && s.token < a.tokens, "assignments[", i, "].token = ", s.token,
             ": expected in [0, ", a.tokens, ")");
    HM_CHECK(s.expert >= 0 && s.expert < a.n_experts, "assignments[", i, "].expert = ", s.expert,
             ": expected in [0, ", a.n_experts, ")");
    HM_CHECK(std::isfinite(s.weight), "assignments[", i, "].weight must be finite, got ", s.weight);
    HM_CHECK(a.experts[s.expert] != nullptr, "experts[", s.expert, "] is null but assignment ", i,
             " uses it");
  }
}

}  // namespace

JobHandle submit_moe_layer(ThreadPool& pool, const MoeLayerArgs& args, Isa isa) {
  validate(args);
  prefetch_bytes();  // a malformed HYBRID_MOE_PREFETCH(_HINT) raises here, in the caller's thread
  prefetch_hint(args.layout.format);
  prefetch_every_line();
  row_order();
  amx_kernel();
  barrier_warm_enabled();
  item_rows_setting();
  dataflow_setting();
  return pool.submit(std::make_shared<MoeJob>(args, kernel_ops(isa)));
}

ExpertWarm submit_expert_warm(ThreadPool& pool, const ExpertLayout& layout,
                              const uint8_t* const* experts, int64_t n_experts) {
  const ExpertLayout ref = make_expert_layout(layout.format, layout.hidden, layout.intermediate);
  HM_CHECK(
      layout.hidden > 0 && ref.stride == layout.stride && ref.down_offset == layout.down_offset,
      "layout must come from make_expert_layout");
  HM_CHECK(n_experts >= 0, "n_experts must be >= 0, got ", n_experts);
  HM_CHECK(n_experts == 0 || experts != nullptr, "experts must not be null");
  for (int64_t i = 0; i < n_experts; ++i)
    HM_CHECK(experts[i] != nullptr, "experts[", i, "] is null");
  auto stop = std::make_shared<std::atomic<bool>>(false);
  return {pool.submit(std::make_shared<WarmJob>(layout, experts, n_experts, stop)), stop};
}

JobHandle submit_moe_layer(ThreadPool& pool, const MoeLayerArgs& args) {
  return submit_moe_layer(pool, args, current_isa().isa);
}

RowPacking host_row_packing(WeightFormat f) {
  static const int setting = auto_off_on_env("HYBRID_MOE_Q8_ROWS16");  // -1 auto, 0 off, 1 on
  if (f != WeightFormat::kQ8_0 || setting == 0) return RowPacking::kGguf;
  const Isa isa = current_isa().isa;
  const bool simd = isa != Isa::kGeneric;
  return setting == 1 || simd ? RowPacking::kQ8Rows16 : RowPacking::kGguf;
}

void run_moe_layer(ThreadPool& pool, const MoeLayerArgs& args, Isa isa, bool caller_helps) {
  JobHandle h = submit_moe_layer(pool, args, isa);
  if (caller_helps) h.help();
  h.wait();
}

void run_moe_layer(ThreadPool& pool, const MoeLayerArgs& args, bool caller_helps) {
  run_moe_layer(pool, args, current_isa().isa, caller_helps);
}

}  // namespace hm::cpu
