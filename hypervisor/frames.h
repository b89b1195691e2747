// The hypervisor's host frame allocator (docs/memory.md, "Host frames").
//
// Host-physical memory is split into zones (the hypervisor's own data below
// hypervisor.reserved_memory, guest memory above it). Each zone keeps free
// lists per block size (4 KiB, 2 MiB, 1 GiB, the EPT page sizes) in the
// manner of a buddy allocator restricted to those three orders: a larger
// block is split when no block of the asked size is free, and 512 free
// buddies merge back into their parent. An allocation always returns the
// lowest-addressed free block of its size, aligned to its size, so that a run
// without frees places every frame where a bump allocator would.
//
// Each allocated block has a descriptor: its size, a reference count and a
// reverse map (the (VM, guest-physical address) pairs that map it, more than
// one once pages are shared). The descriptors are the hypervisor's software
// state that no hardware reads; they are kept as C++ beside the frames (as
// the scheduler's queues are), and the software cost of an allocation is part
// of the path length charged by the handler that allocates (HvCosts), see
// docs/memory.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "sim/stats.h"

namespace vmx::hv {

class FrameAllocator {
 public:
  static constexpr std::uint64_t k4K = 1ull << 12;
  static constexpr std::uint64_t k2M = 1ull << 21;
  static constexpr std::uint64_t k1G = 1ull << 30;

  /// One mapping of a frame: which VM maps it at which guest-physical address.
  struct Mapping {
    unsigned vm = 0;
    std::uint64_t gpa = 0;
    bool operator==(const Mapping& o) const { return vm == o.vm && gpa == o.gpa; }
  };

  struct Stats : stats::Group {
    explicit Stats(stats::Group* p) : Group(p, "frames", "host frames (hypervisor/frames.h)") {}
    stats::Gauge frames_free{this, "frames_free", "frames", "4 KiB host frames free, all zones, at the end"};
    stats::Gauge frames_used{this, "frames_used", "frames", "4 KiB host frames allocated, all zones, at the end"};
    stats::Gauge frames_peak{this, "frames_peak", "frames", "most 4 KiB host frames allocated at once"};
    stats::Counter allocs{this, "allocs", "blocks", "blocks allocated (any size)"};
    stats::Counter frees{this, "frees", "blocks", "blocks returned to the free lists"};
    stats::Counter failures{this, "failures", "blocks", "allocations refused: no free block of the size"};
  };

  /// stats_parent may be null (no statistics registered).
  explicit FrameAllocator(stats::Group* stats_parent = nullptr);
  FrameAllocator(const FrameAllocator&) = delete;
  FrameAllocator& operator=(const FrameAllocator&) = delete;

  /// Adds host-physical [base, end) (4 KiB aligned, not overlapping another
  /// zone) as a zone; returns its index.
  unsigned add_zone(std::string name, std::uint64_t base, std::uint64_t end);

  /// The lowest free block of `size` (4 KiB, 2 MiB or 1 GiB) in the zone,
  /// aligned to its size, with reference count 1; 0 if there is none.
  /// *fresh (if given) tells whether no part of it was ever allocated
  /// before: such memory still holds the zeros of power-on.
  std::uint64_t alloc(unsigned zone, std::uint64_t size, bool* fresh = nullptr);
  /// Another reference to the allocated block at `frame` (its base).
  void get(std::uint64_t frame);
  /// Drops a reference; the block returns to its free list when none is
  /// left (true). Its reverse map must be empty by then.
  bool put(std::uint64_t frame);

  bool allocated(std::uint64_t frame) const { return m_used.count(frame) != 0; }
  /// The lowest allocated block of the zone at or above `from` (its base),
  /// 0 if there is none: a clock over the zone's frames (host swap).
  std::uint64_t next_allocated(unsigned zone, std::uint64_t from) const;
  unsigned refcount(std::uint64_t frame) const;
  std::uint64_t block_size(std::uint64_t frame) const;

  /// Reverse map: record / forget that `m` maps the block at `frame`.
  void rmap_add(std::uint64_t frame, Mapping m);
  void rmap_remove(std::uint64_t frame, Mapping m);
  const std::vector<Mapping>& mappings(std::uint64_t frame) const;

  /// Bytes free / in use in a zone, and its size.
  std::uint64_t free_bytes(unsigned zone) const;
  std::uint64_t used_bytes(unsigned zone) const;
  std::uint64_t zone_bytes(unsigned zone) const;
  const std::string& zone_name(unsigned zone) const { return m_zones.at(zone).name; }
  unsigned zone_count() const { return static_cast<unsigned>(m_zones.size()); }
  /// 4 KiB frames in use over all zones, and the most there ever were.
  std::uint64_t frames_used() const { return m_used_frames; }
  std::uint64_t frames_peak() const { return m_peak_frames; }

 private:
  static constexpr unsigned kOrders = 3;  // 4 KiB, 2 MiB, 1 GiB
  static unsigned order_of(std::uint64_t size);
  static std::uint64_t size_of(unsigned order) { return k4K << (9 * order); }

  struct Zone {
    std::string name;
    std::uint64_t base = 0, end = 0;
    std::uint64_t free = 0;  // bytes
    std::set<std::uint64_t> free_blocks[kOrders];
    // Free children of each parent block held in the next-lower free list
    // (512 merge into the parent), indexed from the aligned-down base.
    std::vector<std::uint16_t> free_children[kOrders - 1];
    std::uint64_t parent_base[kOrders - 1] = {};
    std::vector<std::uint64_t> used_once;  // one bit per 4 KiB frame: allocated at some time
    bool covers(std::uint64_t a, std::uint64_t size) const { return a >= base && a + size <= end; }
  };

  struct Block {
    unsigned zone = 0;
    unsigned order = 0;
    unsigned refs = 0;
    std::vector<Mapping> rmap;
  };

  /// Puts a free block on its list, merging it with its buddies.
  void insert_free(Zone& z, std::uint64_t a, unsigned order);
  void erase_free(Zone& z, std::uint64_t a, unsigned order);
  std::uint16_t& children(Zone& z, unsigned order, std::uint64_t a);
  void publish();
  const Block& block(std::uint64_t frame) const;
  Block& block(std::uint64_t frame) { return const_cast<Block&>(std::as_const(*this).block(frame)); }

  std::vector<Zone> m_zones;
  std::map<std::uint64_t, Block> m_used;  // by base address
  std::uint64_t m_free_frames = 0, m_used_frames = 0, m_peak_frames = 0;
  std::unique_ptr<Stats> m_stats;
};

}  // namespace vmx::hv
