// Shared pieces of the DMA-path tests (root complex, NIC, network peer):
// a fake interrupt fabric, a test initiator that drives a target socket from
// a SystemC thread, and VT-d tables built in PhysMem.
#pragma once

#include <systemc>
#include <tlm>
#include <tlm_utils/simple_initiator_socket.h>

#include <cstdint>
#include <functional>
#include <vector>

#include <catch2/catch.hpp>

#include "iommu/iommu.h"
#include "iommu/vtd_regs.h"
#include "mmu/paging.h"
#include "models/dma.h"
#include "models/eth_link.h"
#include "models/phys_mem.h"

namespace vmx::test {

/// Records every MSI with its SystemC arrival time.
struct FakeMsiSink final : models::MsiSink {
  struct Rec {
    models::MsiMessage m;
    sc_core::sc_time at;
  };
  std::vector<Rec> got;
  sc_core::sc_event fired;  // notified on every message, for test threads to wait on
  void msi(const models::MsiMessage& m) override {
    got.push_back({m, sc_core::sc_time_stamp()});
    fired.notify(sc_core::SC_ZERO_TIME);
  }
};

/// A bus master for tests: reads and writes through its socket, as DMA (with
/// a DmaContext) or as MMIO (without), and waits out the annotated delay.
struct TestInitiator : sc_core::sc_module {
  tlm_utils::simple_initiator_socket_optional<TestInitiator> socket{"socket"};  // unbound: a plain test thread
  /// What the initiator's thread runs once simulation starts.
  std::function<void()> body;

  explicit TestInitiator(sc_core::sc_module_name n) : sc_module(n) {
    SC_HAS_PROCESS(TestInitiator);
    SC_THREAD(main);
  }
  void main() {
    if (body) body();
  }

  tlm::tlm_response_status access(bool write, std::uint64_t addr, void* data, unsigned len, int rid = -1,
                                  sc_core::sc_time* delay_out = nullptr, int pasid = -1) {
    tlm::tlm_generic_payload t;
    models::DmaContext ctx;
    t.set_command(write ? tlm::TLM_WRITE_COMMAND : tlm::TLM_READ_COMMAND);
    t.set_address(addr);
    t.set_data_ptr(static_cast<unsigned char*>(data));
    t.set_data_length(len);
    t.set_streaming_width(len);
    t.set_response_status(tlm::TLM_INCOMPLETE_RESPONSE);
    if (rid >= 0) {
      ctx.requester = static_cast<std::uint16_t>(rid);
      if (pasid >= 0) {
        ctx.has_pasid = true;
        ctx.pasid = static_cast<std::uint32_t>(pasid);
      }
      t.set_extension(&ctx);
    }
    sc_core::sc_time d = sc_core::SC_ZERO_TIME;
    socket->b_transport(t, d);
    if (rid >= 0) t.clear_extension(&ctx);
    if (delay_out) *delay_out = d;
    sc_core::wait(d);
    return t.get_response_status();
  }
  std::uint32_t read32(std::uint64_t addr) {
    std::uint32_t v = 0;
    access(false, addr, &v, 4);
    return v;
  }
  void write32(std::uint64_t addr, std::uint32_t v) { access(true, addr, &v, 4); }
};

/// Runs body on the initiator's thread, then simulates until nothing is
/// left to do or `limit` is reached.
inline void run(TestInitiator& on, std::function<void()> body,
                sc_core::sc_time limit = sc_core::sc_time(1, sc_core::SC_SEC)) {
  on.body = std::move(body);
  sc_core::sc_start(limit);
}

/// VT-d legacy-mode tables in PhysMem (root, context, 4-level second level).
struct VtdTables {
  models::PhysMem& mem;
  std::uint64_t next;
  std::uint64_t rtaddr;

  VtdTables(models::PhysMem& m, std::uint64_t pool) : mem(m), next(pool), rtaddr(alloc()) {}

  std::uint64_t alloc() {
    std::uint64_t p = next;
    next += 0x1000;
    return p;
  }
  void set_context(std::uint16_t rid, const iommu::ContextEntry& ce) {
    const std::uint64_t re = rtaddr + iommu::rid_bus(rid) * iommu::root::kEntrySize;
    if (!(mem.read(re, 8) & iommu::root::kPresent)) mem.write(re, iommu::root::lo(alloc()), 8);
    const std::uint64_t a = (mem.read(re, 8) & iommu::root::kCtpMask) + iommu::rid_devfn(rid) * iommu::ctx::kEntrySize;
    mem.write(a, ce.lo, 8);
    mem.write(a + 8, ce.hi, 8);
  }
  /// Maps the 4 KiB page at iova to hpa in the second-level tables at slpt.
  void map(std::uint64_t slpt, std::uint64_t iova, std::uint64_t hpa, std::uint64_t rights = iommu::sl::kRw) {
    std::uint64_t table = slpt;
    for (unsigned level = 4; level > 1; --level) {
      const std::uint64_t a = table + mmu::table_index(iova, level) * 8;
      std::uint64_t e = mem.read(a, 8);
      if (!(e & iommu::sl::kRw)) {
        e = alloc() | iommu::sl::kRw;
        mem.write(a, e, 8);
      }
      table = e & iommu::sl::kAddrMask;
    }
    mem.write(table + mmu::table_index(iova, 1) * 8, (hpa & iommu::sl::kAddrMask) | rights, 8);
  }
  /// A domain for rid: a fresh second-level table; returns its root.
  std::uint64_t domain(std::uint16_t rid, std::uint16_t did) {
    const std::uint64_t slpt = alloc();
    set_context(rid, iommu::ctx::make(slpt, did));
    return slpt;
  }
  /// Points the unit at these tables and turns translation on, through its
  /// register set (RTADDR, GCMD.SRTP, GCMD.TE, each status bit checked).
  void program(iommu::VtdRegisters& regs) const {
    namespace vtd = iommu::vtd;
    regs.write(vtd::kRtaddr, rtaddr, 8, 0);
    regs.write(vtd::kGcmd, vtd::gcmd::kSrtp, 4, 0);
    REQUIRE((regs.read(vtd::kGsts, 4, 0) & vtd::gcmd::kSrtp) != 0);
    regs.write(vtd::kGcmd, vtd::gcmd::kTe, 4, 0);
    REQUIRE((regs.read(vtd::kGsts, 4, 0) & vtd::gcmd::kTe) != 0);
  }
};

/// The other direction of VtdTables, for tables someone else built (the
/// hypervisor's driver): the context entry of `rid` under the legacy-mode
/// root table at `rtaddr` (zeros if its root entry is not present, VT-d 9.1).
inline iommu::ContextEntry read_context(const models::PhysMem& mem, std::uint64_t rtaddr, std::uint16_t rid) {
  const std::uint64_t re = mem.read(rtaddr + iommu::rid_bus(rid) * iommu::root::kEntrySize, 8);
  if (!(re & iommu::root::kPresent)) return {};
  const std::uint64_t a = (re & iommu::root::kCtpMask) + iommu::rid_devfn(rid) * iommu::ctx::kEntrySize;
  return {mem.read(a, 8), mem.read(a + 8, 8)};
}

/// A software walk of the second-level table at `slptptr` (`levels` deep,
/// 4 KiB, 2 MiB and 1 GiB leaves, VT-d 9.8): the address iova translates to,
/// ~0 if an entry on the way has R = W = 0.
inline std::uint64_t sl_translate(const models::PhysMem& mem, std::uint64_t slptptr, std::uint64_t iova,
                                  unsigned levels = 4) {
  std::uint64_t table = slptptr & iommu::sl::kAddrMask;
  for (unsigned level = levels; level >= 1; --level) {
    const std::uint64_t e = mem.read(table + mmu::table_index(iova, level) * 8, 8);
    if (!(e & iommu::sl::kRw)) return ~0ull;
    if (level == 1 || (level <= 3 && (e & iommu::sl::kPageSize))) {
      const std::uint64_t mask = (1ull << mmu::level_shift(level)) - 1;
      return (e & iommu::sl::kAddrMask & ~mask) | (iova & mask);
    }
    table = e & iommu::sl::kAddrMask;
  }
  return ~0ull;
}

/// Register-based page-selective IOTLB invalidation (IVA_REG, IOTLB_REG).
inline void invalidate_page(iommu::VtdRegisters& regs, std::uint16_t did, std::uint64_t addr) {
  namespace vtd = iommu::vtd;
  regs.write(vtd::kIva, vtd::iotlbreg::iva(addr), 8, 0);
  regs.write(vtd::kIotlb, vtd::iotlbreg::make(3, did), 8, 0);
  REQUIRE(((regs.read(vtd::kIotlb, 8, 0) >> vtd::iotlbreg::kIaigShift) & 3) == 3);
}

/// One end of a link for tests: records every frame with its arrival time,
/// sends frames, and optionally reflects each arrival straight back (MAC
/// addresses swapped).
struct TestEndpoint final : models::PacketEndpoint {
  struct Rec {
    sc_core::sc_time at;
    models::Packet p;
  };
  models::EthLink* link = nullptr;
  bool reflect = false;
  std::vector<Rec> got;
  void receive(models::Packet&& p) override {
    if (reflect && p.bytes.size() >= 12) {
      models::Packet r = p;
      for (int i = 0; i < 6; ++i) std::swap(r.bytes[i], r.bytes[6 + i]);
      link->send(*this, std::move(r));
    }
    got.push_back({sc_core::sc_time_stamp(), std::move(p)});
  }
  void send(std::vector<std::uint8_t> bytes) { link->send(*this, models::Packet{std::move(bytes)}); }
};

/// A simple additive checksum over a memory range.
inline std::uint64_t checksum(const models::PhysMem& mem, std::uint64_t pa, std::uint64_t len) {
  std::uint64_t s = 0;
  std::vector<std::uint8_t> b(len);
  mem.read_bytes(pa, b.data(), len);
  for (std::uint64_t i = 0; i < len; ++i) s = s * 131 + b[i];
  return s;
}

}  // namespace vmx::test
