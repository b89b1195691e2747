// The coherence directory (models/coherence.h): what a line moving between
// two cores' private caches costs, with exact latencies from the defaults.
#include "models/coherence.h"

#include <catch2/catch.hpp>

#include "models/cache.h"
#include "models/mem_hierarchy.h"
#include "sim/params.h"
#include "sim/stats.h"

using namespace vmx;
using models::AccessKind;
using models::Cache;
using models::Coherence;
using models::CoherenceParams;
using models::MemHierarchy;
using models::MemHierarchyParams;

namespace {
constexpr std::uint32_t kL1 = 4, kLlc = 42, kDram = 204;
constexpr std::uint32_t kSnoop = 65, kTransfer = 75, kInvalidate = 65;

// Two cores sharing an LLC; coherent unless told otherwise.
struct Rig {
  explicit Rig(bool coherent = true) {
    if (coherent) {
      dir.join(cpu0);
      dir.join(cpu1);
    }
  }
  stats::Group root{"system"};
  Cache llc{cfg::defaults<models::LlcParams>(), &root, "llc"};
  MemHierarchy cpu0{cfg::defaults<MemHierarchyParams>(), &llc, &root, "cpu0_mem"};
  MemHierarchy cpu1{cfg::defaults<MemHierarchyParams>(), &llc, &root, "cpu1_mem"};
  Coherence dir{cfg::defaults<MemHierarchyParams>().coherence, &root};
};

constexpr std::uint64_t kX = 0x10000040;
}  // namespace

TEST_CASE("default coherence latencies", "[coherence]") {
  const CoherenceParams p = cfg::defaults<MemHierarchyParams>().coherence;
  CHECK(p.enabled);
  CHECK(p.snoop_latency == kSnoop);
  CHECK(p.transfer_latency == kTransfer);
  CHECK(p.invalidate_latency == kInvalidate);
}

TEST_CASE("a line written by one core and read by another pays exactly the transfer latency", "[coherence]") {
  Rig r;
  CHECK(r.cpu0.access(kX, AccessKind::Write) == kLlc + kDram);
  CHECK(r.cpu0.l1d().probe_dirty(kX));
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kTransfer);
  // The owner wrote the line back to the LLC and keeps a clean Shared copy.
  CHECK_FALSE(r.cpu0.l1d().probe_dirty(kX));
  CHECK(r.cpu0.l1d().state(kX) == Cache::kPresent);
  CHECK(r.llc.probe_dirty(kX));
  CHECK(r.cpu1.coherence_stats()->transfers.value() == 1);
  CHECK(r.cpu1.coherence_stats()->cycles.value() == kTransfer);
  CHECK(r.cpu0.coherence_stats()->downgrades_received.value() == 1);
  CHECK(r.cpu1.stats().dram_accesses.value() == 0);
  // Both now hit their own L1.
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kL1);
  CHECK(r.cpu0.access(kX, AccessKind::Read) == kL1);
}

TEST_CASE("a load of a line another core holds exclusive snoops it", "[coherence]") {
  Rig r;
  CHECK(r.cpu0.access(kX, AccessKind::Read) == kLlc + kDram);
  CHECK(r.cpu0.l1d().state(kX) == (Cache::kPresent | Cache::kOwned));  // Exclusive
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kSnoop);
  CHECK(r.cpu0.l1d().state(kX) == Cache::kPresent);  // Shared
  CHECK(r.cpu1.l1d().state(kX) == Cache::kPresent);
  CHECK(r.cpu1.coherence_stats()->snoop_hits.value() == 1);
  // A third look-up by either core is an L1 hit; a load of a line both hold
  // Shared costs nothing more.
  CHECK(r.cpu0.access(kX, AccessKind::Read) == kL1);
}

TEST_CASE("a store invalidates the other core's copy, whose next load misses", "[coherence]") {
  Rig r;
  r.cpu0.access(kX, AccessKind::Read);
  r.cpu1.access(kX, AccessKind::Read);  // both Shared
  const std::uint64_t cpu0_l1_misses = r.cpu0.l1d().stats().misses.value();
  // cpu1's store hits its Shared L1 line: an upgrade that invalidates cpu0.
  CHECK(r.cpu1.access(kX, AccessKind::Write) == kInvalidate);
  CHECK(r.cpu1.coherence_stats()->upgrades.value() == 1);
  CHECK(r.cpu1.coherence_stats()->invalidations_sent.value() == 1);
  CHECK(r.cpu0.coherence_stats()->invalidations_received.value() == 1);
  CHECK_FALSE(r.cpu0.l1d().probe(kX));
  CHECK_FALSE(r.cpu0.l2().probe(kX));
  // The next store by cpu1 is a plain hit on its Modified line.
  CHECK(r.cpu1.access(kX, AccessKind::Write) == kL1);
  CHECK(r.cpu1.coherence_stats()->upgrades.value() == 1);
  // cpu0's next load misses its L1 and takes the line from cpu1.
  CHECK(r.cpu0.access(kX, AccessKind::Read) == kTransfer);
  CHECK(r.cpu0.l1d().stats().misses.value() == cpu0_l1_misses + 1);
}

TEST_CASE("a store to a line other cores hold clean pays the invalidation", "[coherence]") {
  Rig r;
  r.cpu0.access(kX, AccessKind::Read);  // Exclusive in cpu0
  CHECK(r.cpu1.access(kX, AccessKind::Write) == kInvalidate);
  CHECK_FALSE(r.cpu0.l1d().probe(kX));
  CHECK(r.cpu1.l1d().state(kX) == (Cache::kPresent | Cache::kOwned | Cache::kDirty));
  CHECK(r.cpu1.coherence_stats()->cycles.value() == kInvalidate);
}

TEST_CASE("an upgrade no other core shares any more is one LLC round trip", "[coherence]") {
  Rig r;
  r.cpu0.access(kX, AccessKind::Read);
  r.cpu1.access(kX, AccessKind::Read);  // both Shared
  // 16 lines 64 KiB apart share kX's L1 and L2 sets: kX leaves cpu1's caches.
  for (std::uint64_t k = 1; k <= 16; ++k) r.cpu1.access(kX + k * 0x10000, AccessKind::Read);
  REQUIRE_FALSE(r.cpu1.l1d().probe(kX));
  REQUIRE_FALSE(r.cpu1.l2().probe(kX));
  CHECK(r.cpu0.access(kX, AccessKind::Write) == kLlc);
  CHECK(r.cpu0.coherence_stats()->upgrades.value() == 1);
  CHECK(r.cpu0.coherence_stats()->invalidations_sent.value() == 0);
}

TEST_CASE("two cores alternately updating a word with locked RMWs pay a transfer each time", "[coherence]") {
  Rig r;
  // A locked read-modify-write is one Write access (cpu/core.cc, locked_update).
  CHECK(r.cpu0.access(kX, AccessKind::Write) == kLlc + kDram);
  constexpr int kRounds = 10;
  for (int i = 0; i < kRounds; ++i) {
    CHECK(r.cpu1.access(kX, AccessKind::Write) == kTransfer);
    CHECK(r.cpu0.access(kX, AccessKind::Write) == kTransfer);
  }
  CHECK(r.cpu0.coherence_stats()->transfers.value() == kRounds);
  CHECK(r.cpu1.coherence_stats()->transfers.value() == kRounds);
  CHECK(r.cpu0.coherence_stats()->invalidations_received.value() == kRounds);
  CHECK(r.cpu1.coherence_stats()->invalidations_received.value() == kRounds);
}

TEST_CASE("a spinning reader misses once after the writer's store, then hits", "[coherence]") {
  Rig r;
  r.cpu0.access(kX, AccessKind::Write);  // the lock word, held by cpu0
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kTransfer);
  for (int i = 0; i < 100; ++i) CHECK(r.cpu1.access(kX, AccessKind::Read) == kL1);
  const std::uint64_t misses = r.cpu1.l1d().stats().misses.value();
  // cpu0 releases: a store to its Shared copy invalidates the spinner's.
  CHECK(r.cpu0.access(kX, AccessKind::Write) == kInvalidate);
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kTransfer);
  for (int i = 0; i < 100; ++i) CHECK(r.cpu1.access(kX, AccessKind::Read) == kL1);
  CHECK(r.cpu1.l1d().stats().misses.value() == misses + 1);
}

TEST_CASE("without coherence a line moves between cores at no cost", "[coherence]") {
  Rig r(false);
  CHECK(r.cpu0.coherence_stats() == nullptr);
  CHECK(r.cpu0.access(kX, AccessKind::Write) == kLlc + kDram);
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kLlc);  // from the LLC, not cpu0
  CHECK(r.cpu0.l1d().probe_dirty(kX));                 // cpu0 keeps its dirty copy
  for (int i = 0; i < 10; ++i) {
    CHECK(r.cpu1.access(kX, AccessKind::Write) == kL1);
    CHECK(r.cpu0.access(kX, AccessKind::Write) == kL1);
  }
  CHECK(r.cpu1.access(kX, AccessKind::Read) == kL1);
  CHECK(r.root.find_group("cpu0_mem.coherence") == nullptr);
}

TEST_CASE("a DMA write invalidates every core's copy", "[coherence]") {
  Rig r;
  r.cpu0.access(kX, AccessKind::Write);
  r.cpu1.access(kX + 64, AccessKind::Read);
  r.dir.dma_read(kX);
  CHECK(r.dir.stats().dma_modified_reads.value() == 1);
  CHECK(r.cpu0.l1d().probe_dirty(kX));  // a DMA read leaves the owner alone
  r.dir.dma_write(kX);
  r.dir.dma_write(kX + 64);
  CHECK_FALSE(r.cpu0.l1d().probe(kX));
  CHECK_FALSE(r.cpu1.l1d().probe(kX + 64));
  CHECK(r.dir.stats().dma_invalidations.value() == 2);
  CHECK(r.cpu0.coherence_stats()->invalidations_received.value() == 1);
  CHECK(r.cpu0.access(kX, AccessKind::Read) == kLlc);  // the LLC still has the line
}

TEST_CASE("fetches see other cores' stores too", "[coherence]") {
  Rig r;
  CHECK(r.cpu0.access(kX, AccessKind::Fetch) == kLlc + kDram);
  CHECK(r.cpu1.access(kX, AccessKind::Write) == kInvalidate);  // code written by another core
  CHECK_FALSE(r.cpu0.l1i().probe(kX));
  CHECK(r.cpu0.access(kX, AccessKind::Fetch) == kTransfer);
}
