#include "core/layer_split.h"

#include <algorithm>

namespace hm {

void LayerSplitter::prepare(const SplitItem* items, int n) {
  copy_order_.clear();
  fixed_order_.clear();
  for (int i = 0; i < n; ++i) (items[i].needs_copy ? copy_order_ : fixed_order_).push_back(i);
  std::sort(copy_order_.begin(), copy_order_.end(), [items](int a, int b) {
    const SplitItem &x = items[a], &y = items[b];
    const bool xa = x.t_copy <= x.t_gpu, ya = y.t_copy <= y.t_gpu;
    if (xa != ya) return xa;  // Johnson: short copies first
    if (xa && x.t_copy != y.t_copy) return x.t_copy < y.t_copy;
    if (!xa && x.t_gpu != y.t_gpu) return x.t_gpu > y.t_gpu;
    return a < b;
  });
  std::sort(fixed_order_.begin(), fixed_order_.end(), [items](int a, int b) {
    return items[a].ready != items[b].ready ? items[a].ready < items[b].ready : a < b;
  });
}

SplitResult LayerSplitter::eval(SplitItem* items, int n, const Queues& q, double ovh) {
  SplitResult r;
  double cpu = 0;
  for (int i = 0; i < n; ++i) {
    if (items[i].where == Where::kCpu) {
      cpu += items[i].t_cpu;
      ++r.n_cpu;
    }
  }
  r.cpu_busy = cpu;
  r.cpu_finish = r.n_cpu ? std::max(q.now, q.cpu_free) + cpu : q.now;
  double t = std::max(q.now, q.copy_free);
  for (int i : copy_order_) {
    if (items[i].where == Where::kCpu) continue;
    t += items[i].t_copy;
    r.copy_busy += items[i].t_copy;
    items[i].fetch_ready = t;
    ++r.n_fetch;
  }
  r.copy_free = r.n_fetch ? t : q.copy_free;
  // GPU: merge the fixed-ready list and the fetch list (both ascending in ready time).
  std::size_t a = 0, b = 0;
  double g = std::max(q.now, q.gpu_free);
  bool any = false;
  for (;;) {
    while (a < fixed_order_.size() && items[fixed_order_[a]].where == Where::kCpu) ++a;
    while (b < copy_order_.size() && items[copy_order_[b]].where == Where::kCpu) ++b;
    const bool ha = a < fixed_order_.size(), hb = b < copy_order_.size();
    if (!ha && !hb) break;
    if (!any) {
      g += ovh;
      r.gpu_busy += ovh;
      any = true;
    }
    int i;
    double ready;
    if (ha && (!hb || items[fixed_order_[a]].ready <= items[copy_order_[b]].fetch_ready)) {
      i = fixed_order_[a++];
      ready = items[i].ready;
    } else {
      i = copy_order_[b++];
      ready = items[i].fetch_ready;
    }
    g = std::max(g, ready) + items[i].t_gpu;
    r.gpu_busy += items[i].t_gpu;
    ++r.n_gpu;
  }
  r.gpu_finish = any ? g : q.now;
  r.finish = std::max(r.cpu_finish, r.gpu_finish);
  return r;
}

SplitResult LayerSplitter::evaluate(SplitItem* items, int n, const Queues& q, double ovh) {
  prepare(items, n);
  for (int i = 0; i < n; ++i)
    if (items[i].where == Where::kFetch && !items[i].needs_copy) items[i].where = Where::kGpu;
  for (int i = 0; i < n; ++i)
    if (items[i].where == Where::kGpu && items[i].needs_copy) items[i].where = Where::kFetch;
  return eval(items, n, q, ovh);
}

SplitResult LayerSplitter::split(SplitItem* items, int n, const Queues& q, double ovh) {
  prepare(items, n);
  free_.clear();
  for (int i = 0; i < n; ++i) {
    SplitItem& it = items[i];
    const Where gpu = it.needs_copy ? Where::kFetch : Where::kGpu;
    if (it.choice == Choice::kForceGpu) {
      it.where = gpu;
    } else {
      it.where = Where::kCpu;
      if (it.choice == Choice::kFree) free_.push_back(i);
    }
  }
  SplitResult best = eval(items, n, q, ovh);
  // Prune (exact): a free item whose GPU option cannot finish before the all-CPU assignment's
  // finish F0 never helps: any assignment putting it on the GPU ends at or after
  //   max(max(now, gpu_free) + overhead, its ready time) + t_gpu >= F0,
  // (its ready time for a fetch: at least max(now, copy_free) + t_copy), so the minimum over the
  // assignments that keep it on the CPU is the global minimum. In decode with a busy copy engine
  // this drops every miss from the search.
  {
    const double gpu0 = std::max(q.now, q.gpu_free) + ovh, copy0 = std::max(q.now, q.copy_free);
    std::size_t kept = 0;
    for (int i : free_) {
      const SplitItem& it = items[i];
      const double ready = it.needs_copy ? copy0 + it.t_copy : it.ready;
      if (std::max(gpu0, ready) + it.t_gpu < best.finish - 1e-9) free_[kept++] = i;
    }
    free_.resize(kept);
  }
  if (free_.empty()) return best;
  auto gpu_of = [items](int i) { return items[i].needs_copy ? Where::kFetch : Where::kGpu; };
  best_where_.assign(n, 0);
  auto remember = [&](const SplitResult& r) {
    // Strictly better finish; on a tie fewer GPU-side free items (fewer copies, less PCIe).
    if (r.finish < best.finish - 1e-9 ||
        (r.finish <= best.finish + 1e-9 && r.n_fetch + r.n_gpu < best.n_fetch + best.n_gpu)) {
      best = r;
      for (int i = 0; i < n; ++i) best_where_[i] = static_cast<uint8_t>(items[i].where);
      return true;
    }
    return false;
  };
  for (int i = 0; i < n; ++i) best_where_[i] = static_cast<uint8_t>(items[i].where);

  // Group identical free items.
  std::sort(free_.begin(), free_.end(), [items](int a, int b) {
    const SplitItem &x = items[a], &y = items[b];
    if (x.needs_copy != y.needs_copy) return x.needs_copy < y.needs_copy;
    if (x.t_cpu != y.t_cpu) return x.t_cpu < y.t_cpu;
    if (x.t_gpu != y.t_gpu) return x.t_gpu < y.t_gpu;
    if (x.t_copy != y.t_copy) return x.t_copy < y.t_copy;
    if (x.ready != y.ready) return x.ready < y.ready;
    return a < b;
  });
  group_start_.clear();
  group_count_.clear();
  long combos = 1;
  for (std::size_t j = 0; j < free_.size(); ++j) {
    const SplitItem& x = items[free_[j]];
    const bool same = j > 0 && [&] {
      const SplitItem& y = items[free_[j - 1]];
      return x.needs_copy == y.needs_copy && x.t_cpu == y.t_cpu && x.t_gpu == y.t_gpu &&
             x.t_copy == y.t_copy && x.ready == y.ready;
    }();
    if (same) {
      ++group_count_.back();
    } else {
      if (!group_count_.empty()) combos *= group_count_.back() + 1;
      group_start_.push_back(static_cast<int>(j));
      group_count_.push_back(1);
    }
    if (combos > kMaxCombos) break;
  }
  if (combos <= kMaxCombos) combos *= group_count_.back() + 1;

  if (combos <= kMaxCombos) {
    // Odometer over per-group GPU counts; best_ reuses as the counter.
    const int G = static_cast<int>(group_count_.size());
    best_.assign(G, 0);
    for (;;) {
      int g = 0;
      while (g < G && best_[g] == group_count_[g]) best_[g++] = 0;
      if (g == G) break;
      ++best_[g];
      for (int h = 0; h < G; ++h)
        for (int j = 0; j < group_count_[h]; ++j) {
          const int i = free_[group_start_[h] + j];
          items[i].where = j < best_[h] ? gpu_of(i) : Where::kCpu;
        }
      remember(eval(items, n, q, ovh));
    }
  } else {
    // Prefixes by benefit ratio: the item that saves most CPU time per GPU-side time goes first.
    std::sort(free_.begin(), free_.end(), [items](int a, int b) {
      const double ra =
          items[a].t_cpu / (items[a].t_copy * items[a].needs_copy + items[a].t_gpu + 1e-9);
      const double rb =
          items[b].t_cpu / (items[b].t_copy * items[b].needs_copy + items[b].t_gpu + 1e-9);
      return ra != rb ? ra > rb : a < b;
    });
    for (int i : free_) {
      items[i].where = gpu_of(i);
      remember(eval(items, n, q, ovh));
    }
  }
  for (int i = 0; i < n; ++i) items[i].where = static_cast<Where>(best_where_[i]);
  return eval(items, n, q, ovh);
}

}  // namespace hm
