// The migration stream's frame format (docs/migration.md, "The stream's
// transport"), shared by migration.cc, postcopy.cc, vf_migration.cc and
// mig_transport.cc (private to hypervisor/*.cc).
//
// A frame: Ethernet header (destination, source, EtherType 0x88B5, the IEEE
// 802 local experimental type), 2 bytes of padding, then the stream header:
// type (4 bytes), length (4), address (8), sequence number (4, the frame's
// place in the stream; 0 in frames outside it), 4 bytes of padding; payload
// from byte 40.
#pragma once

#include <cstdint>

namespace vmx::hv::stream {

constexpr std::uint64_t kEtherType = 0x88B5;
constexpr std::uint32_t kHeader = 40;
constexpr std::uint32_t kOffType = 16, kOffLen = 20, kOffAddr = 24, kOffSeq = 32;

enum FrameType : std::uint32_t {
  // The stream (source to destination), in sequence.
  kStart = 1,
  kPageData = 2,
  kState = 3,
  kDone = 4,
  kVfState = 5,
  // Outside the stream (destination to source).
  kAck = 0x200,  // address: the next sequence number expected; length: the receive window (frames)
};

/// Stores the Ethernet header and the stream header's type, length and
/// address at `h` (the core's stores).
template <class CoreT>
void put_header(CoreT& c, std::uint64_t h, std::uint64_t to, std::uint64_t from, std::uint32_t type,
                std::uint32_t len, std::uint64_t addr, std::uint32_t seq) {
  c.store(h, to & 0xFFFFFFFF, 4);
  c.store(h + 4, ((to >> 32) & 0xFFFF) | ((from & 0xFFFF) << 16), 4);
  c.store(h + 8, (from >> 16) & 0xFFFFFFFF, 4);
  c.store(h + 12, (kEtherType >> 8) | ((kEtherType & 0xFF) << 8), 2);  // network byte order
  c.store(h + kOffType, type, 4);
  c.store(h + kOffLen, len, 4);
  c.store(h + kOffAddr, addr);
  c.store(h + kOffSeq, seq, 4);
}

}  // namespace vmx::hv::stream
