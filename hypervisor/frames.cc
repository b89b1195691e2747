#include "hypervisor/frames.h"

#include <algorithm>
#include <memory>
#include <stdexcept>

#include <fmt/format.h>

namespace vmx::hv {

FrameAllocator::FrameAllocator(stats::Group* stats_parent) {
  if (stats_parent) m_stats = std::make_unique<Stats>(stats_parent);
}

unsigned FrameAllocator::order_of(std::uint64_t size) {
  switch (size) {
    case k4K: return 0;
    case k2M: return 1;
    case k1G: return 2;
    default: throw std::invalid_argument(fmt::format("frame allocator: no block size {:#x}", size));
  }
}

unsigned FrameAllocator::add_zone(std::string name, std::uint64_t base, std::uint64_t end) {
  if (base % k4K || end % k4K || end < base)
    throw std::invalid_argument(fmt::format("frame allocator: zone {} [{:#x}, {:#x}) is not a 4 KiB aligned range",
                                            name, base, end));
  for (const Zone& z : m_zones)
    if (base < z.end && z.base < end)
      throw std::invalid_argument(fmt::format("frame allocator: zone {} overlaps zone {}", name, z.name));
  Zone z;
  z.name = std::move(name);
  z.base = base;
  z.end = end;
  for (unsigned o = 0; o + 1 < kOrders; ++o) {
    const std::uint64_t ps = size_of(o + 1);
    z.parent_base[o] = base & ~(ps - 1);
    z.free_children[o].assign(end > z.parent_base[o] ? (end - z.parent_base[o] + ps - 1) / ps : 0, 0);
  }
  // The zone as maximal aligned blocks, lowest first.
  for (std::uint64_t a = base; a < end;) {
    unsigned o = kOrders - 1;
    while (o > 0 && (a % size_of(o) || a + size_of(o) > end)) --o;
    insert_free(z, a, o);
    a += size_of(o);
  }
  z.free = end - base;
  z.used_once.assign(((end - base) / k4K + 63) / 64, 0);
  m_free_frames += (end - base) / k4K;
  m_zones.push_back(std::move(z));
  publish();
  return static_cast<unsigned>(m_zones.size() - 1);
}

std::uint16_t& FrameAllocator::children(Zone& z, unsigned order, std::uint64_t a) {
  return z.free_children[order][(a - z.parent_base[order]) >> (12 + 9 * (order + 1))];
}

void FrameAllocator::insert_free(Zone& z, std::uint64_t a, unsigned order) {
  z.free_blocks[order].insert(a);
  if (order + 1 >= kOrders) return;
  const std::uint64_t ps = size_of(order + 1);
  const std::uint64_t parent = a & ~(ps - 1);
  if (!z.covers(parent, ps)) return;
  if (++children(z, order, a) < 512) return;
  // All 512 children free: they merge into the parent.
  children(z, order, a) = 0;
  for (unsigned i = 0; i < 512; ++i) z.free_blocks[order].erase(parent + i * size_of(order));
  insert_free(z, parent, order + 1);
}

void FrameAllocator::erase_free(Zone& z, std::uint64_t a, unsigned order) {
  z.free_blocks[order].erase(a);
  if (order + 1 >= kOrders) return;
  const std::uint64_t ps = size_of(order + 1);
  if (z.covers(a & ~(ps - 1), ps)) --children(z, order, a);
}

std::uint64_t FrameAllocator::alloc(unsigned zone, std::uint64_t size, bool* fresh) {
  Zone& z = m_zones.at(zone);
  const unsigned want = order_of(size);
  // The lowest free block that holds an aligned block of the size: any such
  // block starts a free block of the size or larger.
  unsigned from = kOrders;
  std::uint64_t a = 0;
  for (unsigned o = want; o < kOrders; ++o)
    if (!z.free_blocks[o].empty() && (from == kOrders || *z.free_blocks[o].begin() < a)) {
      a = *z.free_blocks[o].begin();
      from = o;
    }
  if (from == kOrders) {
    if (m_stats) ++m_stats->failures;
    return 0;
  }
  erase_free(z, a, from);
  // Split down to the size: the lowest part is taken, the rest stays free.
  while (from > want) {
    --from;
    for (unsigned i = 1; i < 512; ++i) insert_free(z, a + i * size_of(from), from);
  }
  bool was_fresh = true;
  for (std::uint64_t f = (a - z.base) / k4K, n = f + size / k4K; f < n; ++f) {
    std::uint64_t& w = z.used_once[f / 64];
    was_fresh = was_fresh && !(w >> (f % 64) & 1);
    w |= 1ull << (f % 64);
  }
  if (fresh) *fresh = was_fresh;
  Block& b = m_used[a];
  b.zone = zone;
  b.order = want;
  b.refs = 1;
  z.free -= size;
  m_free_frames -= size / k4K;
  m_used_frames += size / k4K;
  m_peak_frames = std::max(m_peak_frames, m_used_frames);
  if (m_stats) ++m_stats->allocs;
  publish();
  return a;
}

const FrameAllocator::Block& FrameAllocator::block(std::uint64_t frame) const {
  auto it = m_used.find(frame);
  if (it == m_used.end())
    throw std::logic_error(fmt::format("frame allocator: {:#x} is not an allocated block", frame));
  return it->second;
}

void FrameAllocator::get(std::uint64_t frame) { ++block(frame).refs; }

bool FrameAllocator::put(std::uint64_t frame) {
  Block& b = block(frame);
  if (b.refs == 1 && !b.rmap.empty())
    throw std::logic_error(fmt::format("frame allocator: {:#x} freed while still mapped", frame));
  if (--b.refs > 0) return false;
  Zone& z = m_zones[b.zone];
  const unsigned order = b.order;
  m_used.erase(frame);
  insert_free(z, frame, order);
  z.free += size_of(order);
  m_free_frames += size_of(order) / k4K;
  m_used_frames -= size_of(order) / k4K;
  if (m_stats) ++m_stats->frees;
  publish();
  return true;
}

unsigned FrameAllocator::refcount(std::uint64_t frame) const {
  auto it = m_used.find(frame);
  return it == m_used.end() ? 0 : it->second.refs;
}

std::uint64_t FrameAllocator::block_size(std::uint64_t frame) const { return size_of(block(frame).order); }

void FrameAllocator::rmap_add(std::uint64_t frame, Mapping m) { block(frame).rmap.push_back(m); }

void FrameAllocator::rmap_remove(std::uint64_t frame, Mapping m) {
  auto& r = block(frame).rmap;
  auto it = std::find(r.begin(), r.end(), m);
  if (it == r.end())
    throw std::logic_error(fmt::format("frame allocator: {:#x} is not mapped by VM {} at {:#x}", frame, m.vm, m.gpa));
  r.erase(it);
}

const std::vector<FrameAllocator::Mapping>& FrameAllocator::mappings(std::uint64_t frame) const {
  return block(frame).rmap;
}

std::uint64_t FrameAllocator::free_bytes(unsigned zone) const { return m_zones.at(zone).free; }
std::uint64_t FrameAllocator::zone_bytes(unsigned zone) const { return m_zones.at(zone).end - m_zones.at(zone).base; }
std::uint64_t FrameAllocator::used_bytes(unsigned zone) const { return zone_bytes(zone) - free_bytes(zone); }

void FrameAllocator::publish() {
  if (!m_stats) return;
  m_stats->frames_free.set(static_cast<double>(m_free_frames));
  m_stats->frames_used.set(static_cast<double>(m_used_frames));
  m_stats->frames_peak.set(static_cast<double>(m_peak_frames));
}

std::uint64_t FrameAllocator::next_allocated(unsigned zone, std::uint64_t from) const {
  const Zone& z = m_zones.at(zone);
  for (auto it = m_used.lower_bound(std::max(from, z.base)); it != m_used.end() && it->first < z.end; ++it)
    if (it->second.zone == zone) return it->first;
  return 0;
}

}  // namespace vmx::hv
