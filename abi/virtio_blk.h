// The virtio-blk and virtio-balloon devices' ABI (abi/: shared by the guest
// drivers, guest/virtio_blk.* and guest/balloon.cc, and the hypervisor's
// back ends, hypervisor/virtio_blk.* and hypervisor/balloon.*).
//
// Both use the register page of the virtio-net device (abi/virtio_net.h,
// virtio_reg: a reduced virtio-mmio, virtio spec v1.1, 4.2.2) at a window
// of their own, with their device ID and configuration space at 0x100.
#pragma once

#include <cstdint>

#include "abi/virtio_net.h"

namespace vmx::abi {

namespace virtio_blk {
/// Guest-physical address of the register page (next to virtio-net's).
constexpr std::uint64_t kWindow = 0xFEB01000;
constexpr std::uint32_t kDeviceId = 2;  // block device (5.2)
/// Config space (5.2.4): struct virtio_blk_config.capacity, in 512-byte sectors.
constexpr std::uint64_t kCapacity = virtio_reg::kMac;  // 0x100, 64-bit
constexpr std::uint64_t kSectorBytes = 512;
constexpr unsigned kRequestQueue = 0;  // requestq1 (5.2.2)
constexpr std::uint16_t kMaxQueueSize = 256;
// 5.2.6 Device Operation: struct virtio_blk_req = { le32 type; le32
// reserved; le64 sector; u8 data[]; u8 status; }, here as a chain of three
// descriptors: the 16-byte header (device-readable), the data, the status
// byte (device-writable).
struct RequestHeader {
  std::uint32_t type;
  std::uint32_t reserved;
  std::uint64_t sector;
};
static_assert(sizeof(RequestHeader) == 16, "virtio_blk_req header is 16 bytes (5.2.6)");
constexpr std::uint32_t kTypeIn = 0;   // VIRTIO_BLK_T_IN: read
constexpr std::uint32_t kTypeOut = 1;  // VIRTIO_BLK_T_OUT: write
constexpr std::uint8_t kStatusOk = 0;
constexpr std::uint8_t kStatusIoErr = 1;
constexpr std::uint8_t kStatusUnsupp = 2;
}  // namespace virtio_blk

namespace virtio_balloon {
/// Guest-physical address of the register page.
constexpr std::uint64_t kWindow = 0xFEB02000;
constexpr std::uint32_t kDeviceId = 5;  // traditional memory balloon (5.5)
// Config space (5.5.4): struct virtio_balloon_config { le32 num_pages;
// le32 actual; }: the target the device asks for and what the driver has,
// in 4 KiB pages.
constexpr std::uint64_t kNumPages = virtio_reg::kMac;     // 0x100, read-only
constexpr std::uint64_t kActual = virtio_reg::kMac + 4;   // 0x104, written by the driver
// Feature bits (5.5.3).
constexpr std::uint64_t kFeatureStatsVq = 1ull << 1;        // VIRTIO_BALLOON_F_STATS_VQ
constexpr std::uint64_t kFeatureDeflateOnOom = 1ull << 2;   // VIRTIO_BALLOON_F_DEFLATE_ON_OOM
// Virtqueues (5.5.2).
constexpr unsigned kInflateQueue = 0, kDeflateQueue = 1, kStatsQueue = 2;
constexpr std::uint16_t kMaxQueueSize = 64;
/// Page frame numbers per inflate/deflate message: an array of le32 PFNs
/// of 4 KiB pages, at most 256 per buffer as Linux's VIRTIO_BALLOON_ARRAY_PFNS_MAX.
constexpr unsigned kPfnsPerMessage = 256;
constexpr unsigned kPageShift = 12;  // VIRTIO_BALLOON_PFN_SHIFT
// 5.5.6.3 Memory Statistics: struct virtio_balloon_stat { le16 tag; le64
// val; } packed, 10 bytes each.
constexpr unsigned kStatBytes = 10;
enum StatTag : std::uint16_t {
  kStatSwapIn = 0,    // VIRTIO_BALLOON_S_SWAP_IN: pages swapped in
  kStatSwapOut = 1,   // VIRTIO_BALLOON_S_SWAP_OUT: pages swapped out
  kStatMajFlt = 2,    // VIRTIO_BALLOON_S_MAJFLT
  kStatMinFlt = 3,    // VIRTIO_BALLOON_S_MINFLT
  kStatMemFree = 4,   // VIRTIO_BALLOON_S_MEMFREE: bytes
  kStatMemTot = 5,    // VIRTIO_BALLOON_S_MEMTOT: bytes
  kStatCount = 6,
};
}  // namespace virtio_balloon

}  // namespace vmx::abi
