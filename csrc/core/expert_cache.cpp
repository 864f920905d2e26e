#include "core/expert_cache.h"

#include <utility>

namespace hm {

ExpertCache::ExpertCache(int n_layer, int n_expert, int n_slots, bool simulated_clock)
    : n_layer_(n_layer), n_expert_(n_expert), simulated_clock_(simulated_clock) {
  HM_CHECK(n_layer >= 1 && n_expert >= 1, "cache needs n_layer >= 1 and n_expert >= 1, got ",
           n_layer, " and ", n_expert);
  HM_CHECK(
      n_slots >= 0 && static_cast<int64_t>(n_slots) <= static_cast<int64_t>(n_layer) * n_expert,
      "n_slots must be in [0, n_layer * n_expert = ", static_cast<int64_t>(n_layer) * n_expert,
      "], got ", n_slots);
  table_.assign(static_cast<std::size_t>(n_layer) * n_expert, -1);
  state_.assign(n_slots, SlotState::kFree);
  layer_.assign(n_slots, -1);
  expert_.assign(n_slots, -1);
  pins_.assign(n_slots, 0);
  ready_at_.assign(n_slots, 0.0);
  key_.assign(n_slots, 0.0);
  hkey_.assign(n_slots, 0.0);
  heap_pos_.assign(n_slots, -1);
  heap_.reserve(n_slots);
  scratch_.reserve(64);
  free_.reserve(n_slots);
  for (int s = n_slots - 1; s >= 0; --s) free_.push_back(s);
}

void ExpertCache::pin(int slot) {
  check_slot(slot);
  HM_CHECK(state_[slot] != SlotState::kFree, "pin: slot ", slot, " is free");
  ++pins_[slot];
}

void ExpertCache::unpin(int slot) {
  check_slot(slot);
  HM_CHECK(pins_[slot] > 0, "unpin: slot ", slot, " is not pinned");
  --pins_[slot];
}

int ExpertCache::choose_victim(double now) const {
  // The unevictable slots (pinned or still loading) are few, so walk the heap from the root and
  // prune every subtree whose root is evictable (its descendants have larger keys) or whose root
  // hkey (a lower bound of the subtree's keys) is not below the best evictable found so far.
  // A stale root (hkey < key) is sifted down first; that only permutes its own subtree, which holds
  // no position still on the stack.
  int best = -1;
  scratch_.clear();
  if (!heap_.empty()) scratch_.push_back(0);
  while (!scratch_.empty()) {
    const int pos = scratch_.back();
    scratch_.pop_back();
    if (best >= 0 && hkey_[heap_[pos]] >= key_[best]) continue;  // subtree keys are >= this
    while (hkey_[heap_[pos]] < key_[heap_[pos]]) {  // repair: the key rose since the last sift
      hkey_[heap_[pos]] = key_[heap_[pos]];
      sift_down(pos);
    }
    const int slot = heap_[pos];
    if (best >= 0 && key_[slot] >= key_[best]) continue;
    if (pins_[slot] == 0 && is_ready(slot, now)) {
      best = slot;  // children have keys >= this one: no need to descend
      continue;
    }
    const int l = 2 * pos + 1, r = l + 1;
    if (l < static_cast<int>(heap_.size())) scratch_.push_back(l);
    if (r < static_cast<int>(heap_.size())) scratch_.push_back(r);
  }
  return best;
}

void ExpertCache::begin_load(int slot, int layer, int expert, double ready_at, double key) {
  check_slot(slot);
  HM_CHECK(layer >= 0 && layer < n_layer_, "layer must be in [0, ", n_layer_, "), got ", layer);
  HM_CHECK(expert >= 0 && expert < n_expert_, "expert must be in [0, ", n_expert_, "), got ",
           expert);
  HM_CHECK(table_[index(layer, expert)] < 0, "begin_load: expert (", layer, ", ", expert,
           ") already has slot ", table_[index(layer, expert)]);
  if (state_[slot] != SlotState::kFree) {
    // Re-take a used slot in place: it keeps its heap position (cheaper than remove + push).
    HM_CHECK(pins_[slot] == 0, "begin_load: slot ", slot, " is pinned ", pins_[slot],
             " time(s): an expert in use is never evicted");
    table_[index(layer_[slot], expert_[slot])] = -1;
  } else {
    // Take it off the free stack (usually its top).
    if (free_.empty() || free_.back() != slot) {
      for (auto& s : free_)
        if (s == slot) std::swap(s, free_.back());
    }
    HM_CHECK(!free_.empty() && free_.back() == slot, "begin_load: slot ", slot, " is not free");
    free_.pop_back();
    ++n_used_;
    hkey_[slot] = key;
    heap_push(slot);
  }
  state_[slot] = SlotState::kLoading;
  layer_[slot] = layer;
  expert_[slot] = expert;
  ready_at_[slot] = ready_at;
  table_[index(layer, expert)] = slot;
  set_key(slot, key);
}

void ExpertCache::complete_load(int slot) {
  check_slot(slot);
  HM_CHECK(state_[slot] == SlotState::kLoading, "complete_load: slot ", slot, " is not loading");
  state_[slot] = SlotState::kResident;
}

void ExpertCache::evict(int slot) {
  check_slot(slot);
  HM_CHECK(state_[slot] != SlotState::kFree, "evict: slot ", slot, " is already free");
  HM_CHECK(pins_[slot] == 0, "evict: slot ", slot, " is pinned ", pins_[slot],
           " time(s): an expert in use is never evicted");
  table_[index(layer_[slot], expert_[slot])] = -1;
  heap_remove(slot);
  state_[slot] = SlotState::kFree;
  layer_[slot] = expert_[slot] = -1;
  free_.push_back(slot);
  --n_used_;
}

int ExpertCache::preload(int layer, int expert, double key) {
  const int slot = free_slot();
  HM_CHECK(slot >= 0, "preload: no free slot for (", layer, ", ", expert, ")");
  begin_load(slot, layer, expert, 0.0, key);
  complete_load(slot);
  return slot;
}

void ExpertCache::set_key(int slot, double key) {
  key_[slot] = key;
  const int pos = heap_pos_[slot];
  if (pos < 0) return;
  if (key < hkey_[slot]) {  // a fall moves it up now
    hkey_[slot] = key;
    sift_up(pos);
  } else if (4 * static_cast<std::size_t>(pos) + 3 >= heap_.size()) {
    // A rise where the slot has no grandchildren (about 3/4 of the slots) costs one level now;
    // higher up it waits for choose_victim (see [NOTE]).
    hkey_[slot] = key;
    sift_down(pos);
  }
}

bool ExpertCache::consistent() const {
  int used = 0;
  for (int s = 0; s < n_slots(); ++s) {
    if (state_[s] == SlotState::kFree) {
      if (heap_pos_[s] >= 0 || pins_[s] != 0) return false;
      continue;
    }
    ++used;
    if (table_[index(layer_[s], expert_[s])] != s || heap_pos_[s] < 0) return false;
    if (!(hkey_[s] <= key_[s])) return false;
  }
  for (std::size_t p = 1; p < heap_.size(); ++p)
    if (hkey_[heap_[p]] < hkey_[heap_[(p - 1) / 2]]) return false;  // heap order by hkey
  int mapped = 0;
  for (int v : table_) mapped += v >= 0;
  return used == n_used_ && mapped == used && static_cast<int>(heap_.size()) == used &&
         used + static_cast<int>(free_.size()) == n_slots();
}

void ExpertCache::swap_pos(int a, int b) const {
  std::swap(heap_[a], heap_[b]);
  heap_pos_[heap_[a]] = a;
  heap_pos_[heap_[b]] = b;
}

void ExpertCache::sift_up(int pos) const {
  while (pos > 0) {
    const int parent = (pos - 1) / 2;
    if (!less(pos, parent)) break;
    swap_pos(pos, parent);
    pos = parent;
  }
}

void ExpertCache::sift_down(int pos) const {
  const int n = static_cast<int>(heap_.size());
  for (;;) {
    const int l = 2 * pos + 1, r = l + 1;
    int m = pos;
    if (l < n && less(l, m)) m = l;
    if (r < n && less(r, m)) m = r;
    if (m == pos) return;
    swap_pos(pos, m);
    pos = m;
  }
}

void ExpertCache::heap_push(int slot) const {
  heap_.push_back(slot);
  heap_pos_[slot] = static_cast<int>(heap_.size()) - 1;
  sift_up(heap_pos_[slot]);
}

void ExpertCache::heap_remove(int slot) const {
  const int pos = heap_pos_[slot];
  const int last = static_cast<int>(heap_.size()) - 1;
  if (pos != last) swap_pos(pos, last);
  heap_.pop_back();
  heap_pos_[slot] = -1;
  if (pos != last) {
    const int moved = heap_[pos];
    sift_up(pos);
    sift_down(heap_pos_[moved]);
  }
}

}  // namespace hm
