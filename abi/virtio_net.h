// The virtio-net device's register page (abi/: shared by the guest driver,
// guest/virtio_net.*, and the hypervisor's back end, hypervisor/virtio_net.*).
#pragma once

#include <cstdint>

namespace vmx::abi {

/// The device's register page (offsets in bytes; all little-endian).
/// Modelled on virtio-mmio (virtio spec v1.1, 4.2.2) but reduced: one page,
/// 64-bit queue addresses, a read-to-clear ISR as virtio-pci's (4.1.4.5),
/// and a register holding the guest vector the device raises (the role of
/// the MSI-X table, which the hypervisor owns).
namespace virtio_reg {
constexpr std::uint64_t kMagic = 0x000;           // R  0x74726976 ("virt")
constexpr std::uint64_t kVersion = 0x004;         // R  2 (virtio 1.x)
constexpr std::uint64_t kDeviceId = 0x008;        // R  1 (network card, 5.1)
constexpr std::uint64_t kDeviceFeatures = 0x010;  // R  64-bit feature bits offered
constexpr std::uint64_t kDriverFeatures = 0x018;  // W  64-bit feature bits accepted
constexpr std::uint64_t kQueueSel = 0x020;        // RW queue index (0 = receiveq1, 1 = transmitq1, 5.1.2)
constexpr std::uint64_t kQueueSizeMax = 0x024;    // R  largest queue size
constexpr std::uint64_t kQueueSize = 0x028;       // RW size of the selected queue
constexpr std::uint64_t kQueueReady = 0x02C;      // RW 1: the selected queue is set up
constexpr std::uint64_t kQueueDesc = 0x030;       // RW 64-bit guest-physical descriptor table
constexpr std::uint64_t kQueueAvail = 0x038;      // RW 64-bit guest-physical available ring
constexpr std::uint64_t kQueueUsed = 0x040;       // RW 64-bit guest-physical used ring
constexpr std::uint64_t kQueueNotify = 0x050;     // W  queue index: buffers are available
constexpr std::uint64_t kIsr = 0x060;             // R  bit 0: used buffer notification; read clears
constexpr std::uint64_t kStatus = 0x070;          // RW device status (2.1); writing 0 resets
constexpr std::uint64_t kVector = 0x078;          // RW guest interrupt vector the device raises
constexpr std::uint64_t kMac = 0x100;             // R  config space: struct virtio_net_config.mac (5.1.4)
constexpr std::uint64_t kPageBytes = 0x1000;
/// Guest-physical address of the register page (outside guest RAM, in the
/// PCI MMIO hole below 4 GiB, where QEMU's q35 puts device BARs).
constexpr std::uint64_t kWindow = 0xFEB00000;

constexpr std::uint32_t kMagicValue = 0x74726976;
constexpr std::uint64_t kFeatureMac = 1ull << 5;         // VIRTIO_NET_F_MAC
constexpr std::uint64_t kFeatureEventIdx = 1ull << 29;   // VIRTIO_F_RING_EVENT_IDX
constexpr std::uint64_t kFeatureVersion1 = 1ull << 32;   // VIRTIO_F_VERSION_1
constexpr std::uint32_t kStatusDriverOk = 4;             // 2.1 DRIVER_OK
constexpr unsigned kRxQueue = 0, kTxQueue = 1;
constexpr std::uint16_t kMaxQueueSize = 256;
}  // namespace virtio_reg

}  // namespace vmx::abi
