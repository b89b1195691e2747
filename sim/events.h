// Hardware events and their listeners (docs/model.md, "Events and
// listeners").
//
// A hardware block reports each event once, where it happens, to the
// listeners attached to the core it belongs to: the per-vCPU accounting, the
// hypervisor's totals, the event trace and (next) the PMU. A block's own
// statistics (system.cpu0.*, the caches' counters) stay in its stats struct,
// updated at the same place; listeners are for everyone else.
//
// Infrastructure only: payloads are plain integers, named the way the
// hardware documents them (exit reasons and qualifications as the SDM
// numbers them), so that sim/ knows no hardware type.
//
// Cost. A source asks `wants(kind)` before it builds a payload: one load and
// one well-predicted branch when nothing listens, no virtual call, no
// allocation. Dispatch goes to a fixed array of listeners, each called only
// for the kinds in its mask.
#pragma once

#include <array>
#include <cstdint>

namespace vmx::events {

/// What happened. The values index the bits of a Mask.
enum Kind : std::uint8_t {
  kRetired,      // instructions retired (batched: a compute operation of N reports N once)
  kCacheAccess,  // a demand access looked up one cache level (hit or miss), or an L2 prefetch request
  kCacheMiss,    // a demand access missed one cache level, or the L2 prefetcher requested a line
  kTlbMiss,      // a translation missed one TLB level
  kWalk,         // a page walk completed (or faulted)
  kVmEntry,      // VMLAUNCH/VMRESUME entered VMX non-root operation
  kVmExit,       // a VM exit
  kInterrupt,    // an interrupt was delivered (through the IDT, or a posted-interrupt notification)
  kMsi,          // a device's interrupt message reached the interrupt fabric (a device event)
  kDmaBlocked,   // the IOMMU blocked a device's DMA (a device event)
  kKinds
};

using Mask = std::uint32_t;
constexpr Mask bit(Kind k) { return Mask{1} << k; }
constexpr Mask kAll = (Mask{1} << kKinds) - 1;

// Core cycles are not an event: the core's clock advances on every
// operation, so a cycle counter (the PMU's unhalted-core-cycles) reads the
// core's unhalted-cycle count when it is read or checked for overflow
// (cpu::Core::unhalted_cycles), instead of being told about each advance.

/// Payloads. Times are cycles of the reporting core's clock.
struct Retired {
  std::uint64_t instructions;
  bool guest;  // in VMX non-root operation
};

/// Cache levels as reported: 1 is the L1 the access used (L1I for fetches,
/// L1D otherwise), 2 the private L2, 3 the shared last-level cache.
struct CacheAccess {
  std::uint64_t pa;
  std::uint8_t level;
  bool fetch;  // instruction fetch (L1I); otherwise a load, store or walk reference (L1D)
  bool write;
  bool walk;   // a page walker's paging-structure reference
  bool hit;
  bool prefetch = false;  // the L2 prefetcher's request for a line the L2 lacks (level 2, a miss; not demand)
};

/// TLB levels: 1 is every first-level TLB of the access's kind (looked up in
/// parallel), 2 the second-level TLB (a miss there walks).
struct TlbMiss {
  std::uint64_t la;
  std::uint8_t level;
  bool fetch;
  bool guest;
};

/// Outcome of a walk, as the walker reports it.
enum class WalkOutcome : std::uint8_t { Ok, PageFault, EptViolation, EptMisconfig, PmlFull };

struct Walk {
  std::uint64_t la;
  std::uint64_t start;   // cycle the walk began
  std::uint32_t cycles;  // its latency
  std::uint32_t refs;        // paging-structure references, both dimensions
  std::uint32_t guest_refs;  // of those, guest-dimension (refs - guest_refs are EPT-dimension)
  std::uint32_t psc_hits;    // paging-structure-cache hits
  std::uint32_t nested_hits; // nested-TLB hits
  WalkOutcome outcome;
  bool guest;
};

struct VmEntry {
  std::uint64_t vmcs;  // region address of the VMCS entered with
  std::uint64_t now;
  std::uint16_t vpid;
  bool launch;  // VMLAUNCH (else VMRESUME)
};

struct VmExit {
  std::uint64_t vmcs;
  std::uint64_t now;  // when the exit was taken (before its own latency)
  std::uint64_t qualification;
  std::uint16_t reason;  // basic exit reason (SDM Vol. 3C, Appendix C)
  std::uint16_t vpid;
};

/// How an interrupt reached the software.
enum class Delivery : std::uint8_t {
  Idt,                 // through the IDT of the current mode (including virtual-interrupt delivery)
  PostedNotification,  // notification vector processed as posted interrupts (no VM exit)
};

struct Interrupt {
  std::uint64_t now;
  std::uint8_t vector;  // for a posted notification: the highest vector posted (0 if none)
  bool guest;           // delivered in VMX non-root operation
  Delivery how;
};

/// Device events are reported by the device, in picoseconds of simulated
/// time (devices have no core clock).
enum class MsiOutcome : std::uint8_t {
  Delivered,       // compatibility format, to a local APIC
  Remapped,        // through an interrupt-remapping table entry
  Posted,          // into a posted-interrupt descriptor, no notification
  PostedNotified,  // posted, and the notification vector sent
  Blocked,         // an interrupt-remapping fault
  Dropped,         // logical destination or a delivery mode not modelled
};

struct Msi {
  std::uint64_t at_ps;
  std::uint32_t requester;  // PCI requester ID (bus/device/function)
  std::uint32_t dest;       // destination APIC ID (0 when blocked or dropped)
  std::uint32_t vector;
  MsiOutcome outcome;
};

struct DmaBlocked {
  std::uint64_t at_ps;
  std::uint64_t address;    // the DMA address that did not translate
  std::uint32_t requester;
  std::uint32_t reason;     // VT-d fault reason (VT-d spec, 7.1.3)
  bool write;
};

/// Receives the kinds in its mask. Listeners are simulator observation:
/// they may count, sample or record, never change the machine.
class Listener {
 public:
  explicit Listener(Mask kinds) : m_kinds(kinds) {}
  virtual ~Listener() = default;
  Mask kinds() const { return m_kinds; }

  virtual void retired(const Retired&) {}
  virtual void cache_access(const CacheAccess&) {}  // kCacheAccess and kCacheMiss
  virtual void tlb_miss(const TlbMiss&) {}
  virtual void walk(const Walk&) {}
  virtual void vm_entry(const VmEntry&) {}
  virtual void vm_exit(const VmExit&) {}
  virtual void interrupt(const Interrupt&) {}
  virtual void msi(const Msi&) {}
  virtual void dma_blocked(const DmaBlocked&) {}

 protected:
  /// A listener whose interest changes (the PMU, as counters are enabled)
  /// sets its kinds while detached, then attaches again.
  void set_kinds(Mask m) { m_kinds = m; }

 private:
  Mask m_kinds;
};

/// The listeners of one core (or one device), in attachment order. A source
/// holds one (or a pointer to its core's) and reports through it.
class Dispatcher {
 public:
  static constexpr unsigned kMaxListeners = 8;

  /// Attaches `l` for l.kinds(); attaching one already attached does nothing.
  /// Throws std::length_error beyond kMaxListeners.
  void attach(Listener& l);
  /// Detaches `l` (nothing if it is not attached).
  void detach(Listener& l);
  unsigned size() const { return m_count; }

  /// The hot-path test: does anyone listen to `k`?
  bool wants(Kind k) const { return (m_any & bit(k)) != 0; }
  bool wants_any(Mask m) const { return (m_any & m) != 0; }
  /// How many attached listeners want `k` (not for hot paths).
  unsigned listening(Kind k) const {
    unsigned n = 0;
    each(bit(k), [&](Listener&) { ++n; });
    return n;
  }

  // Dispatch, out of line: a source's fast path keeps only the wants()
  // test, and its call here is a tail call (payloads go by value).
  void retired(Retired e) const;
  void cache_access(CacheAccess e) const;
  void tlb_miss(TlbMiss e) const;
  void walk(Walk e) const;
  void vm_entry(VmEntry e) const;
  void vm_exit(VmExit e) const;
  void interrupt(Interrupt e) const;
  void msi(Msi e) const;
  void dma_blocked(DmaBlocked e) const;

  /// A dispatcher nobody listens to, for sources not wired to a core.
  static const Dispatcher& none();

 private:
  template <class F>
  void each(Mask m, F f) const {
    for (unsigned i = 0; i < m_count; ++i)
      if (m_masks[i] & m) f(*m_listeners[i]);
  }
  void recompute();

  Mask m_any = 0;
  unsigned m_count = 0;
  std::array<Listener*, kMaxListeners> m_listeners{};
  std::array<Mask, kMaxListeners> m_masks{};
};

}  // namespace vmx::events
