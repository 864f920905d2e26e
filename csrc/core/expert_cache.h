// [NOTE] The expert cache (DESIGN.md section 5): ONE global pool of equal VRAM slots shared by all
// layers (so skewed layers earn more slots), a residency table (layer, expert) -> slot, and per
// slot a state, a pin count and an eviction key.
//
//   free -> begin_load(slot, layer, expert, ready_at) -> loading -> complete_load(slot) -> resident
//   resident -> evict(slot) -> free         (only when pins == 0: an expert in use is never
//   evicted)
//
// The live runtime calls complete_load() from its mover thread once the copy's event completed, so
// a plan never names a slot whose bytes are not there; the simulator instead passes the copy's
// completion time as ready_at and asks is_ready(slot, now). Slots are pinned by every plan that
// names them and unpinned when the plan is released.
//
// Victims: the policy gives each resident slot a key (smaller = evict first) whose order does not
// change with time (LRU: last access tick; LFU: count; value: log of a decayed score; oracle:
// minus next use). An indexed binary min-heap over slots finds the smallest evictable key in
// O(log slots), so choosing a victim costs the same at 10 or 10,000 slots.
//
// Lazy increases (speed: a hit raises its key, which would sift it to the heap's bottom on every
// access): the heap is ordered by hkey (the key when the slot was last sifted), and hkey <= key
// always. set_key() sifts up at once when the key falls below hkey, and only records a rise.
// choose_victim() repairs a stale slot (hkey < key) when its walk reaches it: hkey := key and a
// sift-down, then the walk looks at that heap position again. Subtrees are pruned by hkey, a lower
// bound of every true key below it, so the victim is exactly the evictable slot of smallest key.
// A slot re-taken by begin_load keeps its heap position (its new key, usually larger, is a rise).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "core/check.h"

namespace hm {

enum class SlotState : uint8_t { kFree = 0, kLoading = 1, kResident = 2 };

class ExpertCache {
 public:
  static constexpr double kNever = std::numeric_limits<double>::infinity();

  // n_slots may be 0 (the cpu policy). n_layer * n_expert entries in the residency table.
  // simulated_clock: a loading slot counts as ready once `now` passes its ready_at (simulator);
  // otherwise only complete_load() makes it ready (runtime; ready_at is then an estimate).
  ExpertCache(int n_layer, int n_expert, int n_slots, bool simulated_clock = true);

  int n_layer() const { return n_layer_; }
  int n_expert() const { return n_expert_; }
  int n_slots() const { return static_cast<int>(state_.size()); }
  int n_used() const { return n_used_; }

  // Slot holding (layer, expert) in any state but free, or -1.
  int lookup(int layer, int expert) const { return table_[index(layer, expert)]; }
  SlotState state(int slot) const { return state_[slot]; }
  int slot_layer(int slot) const { return layer_[slot]; }
  int slot_expert(int slot) const { return expert_[slot]; }
  int pins(int slot) const { return pins_[slot]; }
  double ready_at(int slot) const { return ready_at_[slot]; }
  // Resident, or loading with a known completion time <= now (simulator clock).
  bool is_ready(int slot, double now) const {
    return state_[slot] == SlotState::kResident ||
           (simulated_clock_ && state_[slot] == SlotState::kLoading && ready_at_[slot] <= now);
  }

  void pin(int slot);
  void unpin(int slot);

  // A free slot, or -1 when all are used.
  int free_slot() const { return free_.empty() ? -1 : free_.back(); }
  // The evictable slot (resident or done loading by `now`, unpinned) with the smallest key, or -1.
  // Const to callers: it only re-sorts the heap's stale entries (see [NOTE]).
  int choose_victim(double now) const;

  // Take `slot` (free, or an unpinned evictable one, whose expert is dropped) for (layer, expert):
  // state loading, ready at `ready_at` (kNever: the runtime's mover calls complete_load later).
  void begin_load(int slot, int layer, int expert, double ready_at, double key);
  void complete_load(int slot);
  // Drop the expert in `slot` (must be unpinned); the slot becomes free.
  void evict(int slot);
  // Make (layer, expert) resident at once (static placement, tests).
  int preload(int layer, int expert, double key);

  double key(int slot) const { return key_[slot]; }
  void set_key(int slot, double key);

  // Sum over slots of their state, for invariant checks: residency table and slots agree.
  bool consistent() const;

 private:
  int index(int layer, int expert) const { return layer * n_expert_ + expert; }
  void check_slot(int slot) const {
    HM_CHECK(slot >= 0 && slot < n_slots(), "slot must be in [0, ", n_slots(), "), got ", slot);
  }
  // Indexed min-heap over used slots, ordered by hkey_ (<= key_; see [NOTE]). Mutable: the
  // const choose_victim() repairs stale entries, which changes positions, never contents.
  void heap_push(int slot) const;
  void heap_remove(int slot) const;
  void sift_up(int pos) const;
  void sift_down(int pos) const;
  bool less(int a, int b) const { return hkey_[heap_[a]] < hkey_[heap_[b]]; }
  void swap_pos(int a, int b) const;

  int n_layer_, n_expert_;
  bool simulated_clock_;
  int n_used_ = 0;
  std::vector<int> table_;  // [n_layer * n_expert] slot or -1
  std::vector<SlotState> state_;
  std::vector<int> layer_, expert_, pins_;
  std::vector<double> ready_at_, key_;
  mutable std::vector<double> hkey_;   // heap order key, <= key_
  std::vector<int> free_;              // stack of free slots
  mutable std::vector<int> heap_;      // slots, min-heap by hkey_
  mutable std::vector<int> heap_pos_;  // slot -> position in heap_ or -1
  mutable std::vector<int> scratch_;   // choose_victim's search stack (no allocation once warm)
};

}  // namespace hm
