// Same-page merging in the manner of Linux's KSM (mm/ksm.c; docs/memory.md,
// "Same-page merging"): its parameters, its statistics and the trees of
// pages ordered by content. The scanner itself is a room of the hypervisor
// (hypervisor/ksm.cc): it runs in the hypervisor context of one core, reads
// guest frames with loads of that core and changes EPT only through the EPT
// cursor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::hv {

struct KsmParams {
  bool enabled;
  std::uint64_t pages_to_scan, sleep, max_page_sharing, core;
  bool use_zero_pages;
  std::uint64_t scan_page, checksum, compare, merge, cow;

  template <class V>
  void visit(V& v) {
    using cfg::Spec;
    using cfg::Unit;
    v.param(enabled, "enabled", "false", Spec(Unit::Flag),
            "Run the same-page merging scanner (Linux: /sys/kernel/mm/ksm/run, 0 by default). Needs "
            "hypervisor.ept_page_size 4KiB. VMs with a device (passthrough, emulated NIC, virtio-net) or shadow "
            "paging are not scanned.");
    v.param(pages_to_scan, "pages_to_scan", "100", Spec(Unit::Count).at_least(1),
            "Guest pages the scanner visits per wake-up (Linux mm/ksm.c: ksm_thread_pages_to_scan = 100).");
    v.param(sleep, "sleep", "20ms", Spec(Unit::Time).at_least(1e6),
            "Time the scanner sleeps after each batch (Linux mm/ksm.c: ksm_thread_sleep_millisecs = 20).");
    v.param(max_page_sharing, "max_page_sharing", "256", Spec(Unit::Count).at_least(2),
            "Most mappings one merged frame may have; a page equal to a full one starts another (Linux "
            "mm/ksm.c: ksm_max_page_sharing = 256).");
    v.param(use_zero_pages, "use_zero_pages", "false", Spec(Unit::Flag),
            "Map all-zero pages to one dedicated zero frame instead of merging them in the trees (Linux "
            "/sys/kernel/mm/ksm/use_zero_pages, off by default); off, zero pages merge as any other content.");
    v.param(core, "core", "0", Spec().at_most(255),
            "Core whose hypervisor context runs the scanner: its batches take that core from the vCPU running "
            "there (assumption: one kernel thread, ksmd, on one core).");
    v.param(scan_page, "scan_page", "300", Spec(Unit::Instructions),
            "Visiting one page besides its loads: finding its record, checks, the stable-tree step's "
            "bookkeeping (assumption, of the order of ksm's scan_get_next_rmap_item and cmp_and_merge_page "
            "without the page reads).");
    v.param(checksum, "checksum", "512", Spec(Unit::Instructions),
            "Checksumming one 4 KiB page besides its 512 quadword loads (assumption: ksm's calc_checksum uses "
            "xxHash64, about one instruction per 8 bytes).");
    v.param(compare, "compare", "1", Spec(Unit::Instructions),
            "Per pair of quadwords compared (memcmp of two pages in a tree search), besides the loads "
            "(assumption).");
    v.param(merge, "merge", "2000", Spec(Unit::Instructions),
            "Merging one page besides the EPT cursor's loads and stores and the compare: reverse-map work, "
            "reference counts (assumption, of the order of ksm's try_to_merge_one_page and replace_page).");
    v.param(cow, "cow", "1000", Spec(Unit::Instructions),
            "Breaking the sharing of one page on a write, besides the EPT-violation exit, the copy and the EPT "
            "cursor's work (assumption, of the order of Linux's wp_page_copy without the copy).");
  }
};

/// A binary search tree of guest pages ordered by their contents (memcmp
/// order), as KSM's stable and unstable trees. The tree holds no contents:
/// every step compares the frame searched for with a node's frame through
/// `Compare`, which in the hypervisor reads both frames with loads of the
/// core (charged). Equal contents may appear more than once (a merged frame
/// that reached max_page_sharing has a sibling with the same contents):
/// an equal node goes to the right of the equal nodes already there, and a
/// search passes an equal node its predicate refuses by going right.
/// Linux keeps red-black trees; this one is not rebalanced (pages with
/// random contents keep it shallow).
class ContentTree {
 public:
  /// Sign of memcmp(contents of frame a, contents of frame b).
  using Compare = std::function<int(std::uint64_t a, std::uint64_t b)>;
  struct Entry {
    std::uint64_t frame = 0;  // host-physical
    unsigned vm = 0;          // where it was found (unstable tree)
    std::uint64_t gpa = 0;
    bool live = true;         // false: merged since (kept to steer searches)
  };
  using Accept = std::function<bool(const Entry&)>;

  /// The first node on `page`'s search path whose frame has the same
  /// contents and which `accept` accepts (any if null); -1 if none.
  int find(std::uint64_t page, const Compare& cmp, const Accept& accept = nullptr) const;
  /// find(e.frame, ...); if none, inserts e where the search ended.
  /// Returns the node and whether it is the one inserted.
  std::pair<int, bool> find_or_insert(const Entry& e, const Compare& cmp, const Accept& accept = nullptr);
  /// Inserts e (after any nodes with equal contents).
  int insert(const Entry& e, const Compare& cmp);
  /// Removes a node; the other nodes keep their indices.
  void erase(int node);
  void clear();

  Entry& at(int node) { return m_nodes.at(static_cast<std::size_t>(node)).e; }
  const Entry& at(int node) const { return m_nodes.at(static_cast<std::size_t>(node)).e; }
  std::size_t size() const { return m_size; }
  /// Longest root-to-leaf path, in nodes (0 when empty).
  unsigned depth() const;
  /// Calls fn for each node in content order.
  void in_order(const std::function<void(int, const Entry&)>& fn) const;

 private:
  struct Node {
    Entry e;
    int left = -1, right = -1, parent = -1;
    bool used = false;
  };
  /// Descends from the root; returns the accepted equal node (or -1) and
  /// the last node visited with the side where e would hang.
  int search(std::uint64_t page, const Compare& cmp, const Accept& accept, int& parent, bool& right) const;
  int attach(const Entry& e, int parent, bool right);
  void transplant(int u, int v);
  unsigned depth_of(int n) const;

  std::vector<Node> m_nodes;
  std::vector<int> m_free;
  int m_root = -1;
  std::size_t m_size = 0;
};

/// Host-wide statistics (hypervisor.ksm), named as Linux's
/// /sys/kernel/mm/ksm/ files where they count the same thing.
struct KsmStats : stats::Group {
  explicit KsmStats(stats::Group* p) : Group(p, "ksm", "same-page merging (hypervisor/ksm.h)") {}
  stats::Gauge pages_shared{this, "pages_shared", "frames", "merged frames in use (at the end)"};
  stats::Gauge pages_sharing{this, "pages_sharing", "pages",
                             "guest pages mapped to a merged frame beyond the first of each: frames saved (at the end)"};
  stats::Gauge pages_unshared{this, "pages_unshared", "pages",
                              "pages in the unstable tree: stable but unique so far (at the end)"};
  stats::Gauge pages_stale{this, "pages_stale", "frames",
                           "merged frames whose last mapping went, held by the stable tree until the scanner prunes "
                           "them at the end of a full scan (at the end)"};
  stats::Gauge zero_pages_sharing{this, "zero_pages_sharing", "pages",
                                  "use_zero_pages: guest pages mapped to the zero frame (at the end)"};
  stats::Counter full_scans{this, "full_scans", "scans", "passes of the scanner over all scanned VMs' memory"};
  stats::Counter pages_scanned{this, "pages_scanned", "pages", "guest pages the scanner visited"};
  stats::Counter checksum_changes{this, "checksum_changes", "pages",
                                  "visits that found a page's checksum changed since the last (kept out of the unstable tree)"};
  stats::Counter merges{this, "merges", "pages", "guest pages remapped to a merged frame"};
  stats::Counter merge_failures{this, "merge_failures", "pages",
                                "merges abandoned: the page changed or moved between the search and the merge"};
  stats::Counter compares{this, "compares", "compares", "page comparisons (tree steps and checks before merging)"};
  stats::Counter cow_breaks{this, "cow_breaks", "pages", "writes that broke a page's sharing (copy-on-write), all VMs"};
  stats::Counter scanner_cycles{this, "scanner_cycles", "cycles", "cycles of the scanner's core spent in its batches"};
  stats::Counter batches{this, "batches", "events", "scanner wake-ups"};
};

/// Per VM (vm.<name>.ksm).
struct KsmVmStats : stats::Group {
  explicit KsmVmStats(stats::Group* p) : Group(p, "ksm", "same-page merging of this VM's pages") {}
  stats::Gauge shared_pages{this, "shared_pages", "pages", "guest pages mapped to a merged (or the zero) frame (at the end)"};
  stats::Counter merges{this, "merges", "pages", "guest pages remapped to a merged frame"};
  stats::Counter cow_breaks{this, "cow_breaks", "pages", "writes that broke the sharing of a page (copy-on-write)"};
  stats::Counter cow_cycles{this, "cow_cycles", "cycles",
                            "cycles the hypervisor spent breaking sharing on this VM's writes (in the EPT-violation exit)"};
};

/// The scanner's state (the hypervisor's software state, kept as C++ as
/// the frame allocator's descriptors are).
struct KsmState {
  KsmState(const KsmParams& params, stats::Group* parent) : p(params), stats(parent) {}
  KsmParams p;
  ContentTree stable, unstable;
  /// Merged frames and their stable-tree nodes.
  std::unordered_map<std::uint64_t, int> merged;
  std::uint64_t zero_frame = 0, zero_sum = 0;  // use_zero_pages
  /// Per VM, per 4 KiB guest page: its checksum at the last visit (0: none).
  std::vector<std::vector<std::uint64_t>> sums;
  std::vector<std::unique_ptr<KsmVmStats>> vm_stats;
  std::vector<std::uint64_t> vm_shared;
  // Where the scan goes on, and when (TSC).
  unsigned vm_cursor = 0;
  std::uint64_t gpa_cursor = 0;
  std::uint64_t next_scan = 0, sleep_ticks = 0;
  // Merged frames, their mappings, mappings of the zero frame.
  std::uint64_t shared = 0, mappings = 0, zero_mappings = 0;
  KsmStats stats;
};

}  // namespace vmx::hv
