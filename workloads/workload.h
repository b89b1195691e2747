// Guest programs. Each runs in a guest process's threads and touches the
// machine only through guest::Thread (core operations and system calls).
// `iterations` (or passes, updates, steps) of 0 means: run until the end of
// the simulation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "guest/kernel.h"
#include "sim/params.h"
#include "sim/stats.h"

namespace vmx::workloads {

using cfg::Spec;
using cfg::Unit;

struct ComputeParams {
  std::uint64_t instructions, iterations;
  template <class V>
  void visit(V& v) {
    v.param(instructions, "instructions", "1000", Spec(Unit::Instructions).at_least(1), "Instructions per iteration.");
    v.param(iterations, "iterations", "0", Spec(), "Iterations (0: until the end of the run).");
  }
};

struct StreamParams {
  std::uint64_t working_set, stride, passes, instructions_per_access;
  bool write;
  template <class V>
  void visit(V& v) {
    v.param(working_set, "working_set", "8MiB", Spec(Unit::Bytes).at_least(4096), "Bytes swept per pass.");
    v.param(stride, "stride", "64", Spec(Unit::Bytes).at_least(1), "Distance between consecutive accesses.");
    v.param(passes, "passes", "0", Spec(), "Passes over the working set (0: until the end of the run).");
    v.param(write, "write", "false", Spec(Unit::Flag), "Store instead of load.");
    v.param(instructions_per_access, "instructions_per_access", "2", Spec(Unit::Instructions),
            "Loop instructions besides each access.");
  }
};

struct RandomAccessParams {
  std::uint64_t working_set, updates, instructions_per_update;
  bool checksum;
  template <class V>
  void visit(V& v) {
    v.param(working_set, "working_set", "64MiB", Spec(Unit::Bytes).at_least(4096), "Table size (GUPS-style).");
    v.param(updates, "updates", "0", Spec(), "Read-modify-write updates of random words (0: until the end).");
    v.param(instructions_per_update, "instructions_per_update", "4", Spec(Unit::Instructions),
            "Instructions besides the load and store of an update (index generation).");
    v.param(checksum, "checksum", "false", Spec(Unit::Flag),
            "After the updates, the program reads its whole table back and reports a checksum of it (the "
            "statistic checksum): a guest-visible result that depends on every update, for comparing runs.");
  }
};

struct PointerChaseParams {
  std::uint64_t working_set, steps;
  template <class V>
  void visit(V& v) {
    v.param(working_set, "working_set", "16MiB", Spec(Unit::Bytes).at_least(4096),
            "Bytes covered by the chain (one pointer per 64-byte line, in random cyclic order).");
    v.param(steps, "steps", "0", Spec(), "Dependent loads (0: until the end).");
  }
};

struct CpuidLoopParams {
  std::uint64_t iterations;
  std::uint64_t leaf;
  template <class V>
  void visit(V& v) {
    v.param(iterations, "iterations", "1000", Spec(), "CPUID instructions (0: until the end).");
    v.param(leaf, "leaf", "0", Spec(), "CPUID leaf (EAX).");
  }
};

struct IoLoopParams {
  std::uint64_t iterations, port, size;
  bool write;
  template <class V>
  void visit(V& v) {
    v.param(iterations, "iterations", "1000", Spec(), "Port accesses (0: until the end).");
    v.param(port, "port", "0x80", Spec().at_most(65535), "I/O port.");
    v.param(size, "size", "1", Spec().at_least(1).at_most(4), "Access size in bytes (1, 2 or 4).");
    v.param(write, "write", "true", Spec(Unit::Flag), "OUT instead of IN.");
  }
};

struct VmcallLoopParams {
  std::uint64_t iterations, nr;
  template <class V>
  void visit(V& v) {
    v.param(iterations, "iterations", "1000", Spec(), "Hypercalls (0: until the end).");
    v.param(nr, "nr", "0", Spec(), "Hypercall number in RAX (0 is the hypervisor's no-op).");
  }
};

struct TouchPagesParams {
  std::uint64_t pages, passes;
  bool write;
  template <class V>
  void visit(V& v) {
    v.param(pages, "pages", "1000", Spec().at_least(1), "Pages of a fresh region to touch.");
    v.param(passes, "passes", "1", Spec().at_least(1), "Passes over the pages.");
    v.param(write, "write", "true", Spec(Unit::Flag), "Touch with a store instead of a load.");
  }
};

struct SleepLoopParams {
  std::uint64_t interval, work, iterations;
  template <class V>
  void visit(V& v) {
    v.param(interval, "interval", "1ms", Spec(Unit::Time).at_least(1e3), "Sleep before each round of work.");
    v.param(work, "work", "10000", Spec(Unit::Instructions), "Instructions of work after each wake-up.");
    v.param(iterations, "iterations", "10", Spec(), "Rounds (0: until the end).");
  }
};

struct MmapChurnParams {
  std::uint64_t region, iterations;
  template <class V>
  void visit(V& v) {
    v.param(region, "region", "1MiB", Spec(Unit::Bytes).at_least(4096), "Bytes mapped, touched and unmapped each time.");
    v.param(iterations, "iterations", "100", Spec(), "mmap/touch/munmap rounds (0: until the end).");
  }
};

struct ForkChurnParams {
  std::uint64_t working_set, iterations, child_writes, parent_writes;
  template <class V>
  void visit(V& v) {
    v.param(working_set, "working_set", "1MiB", Spec(Unit::Bytes).at_least(4096),
            "Memory the parent populates before forking.");
    v.param(iterations, "iterations", "20", Spec(), "fork/wait rounds (0: until the end).");
    v.param(child_writes, "child_writes", "16", Spec(), "Pages each child writes (copy-on-write copies).");
    v.param(parent_writes, "parent_writes", "16", Spec(), "Pages the parent writes after each child exits.");
  }
};

struct ProtectionProbeParams {
  std::uint64_t iterations;
  bool kernel_read, kernel_exec, alias_write, alias_exec;
  template <class V>
  void visit(V& v) {
    v.param(iterations, "iterations", "8", Spec().at_least(1).at_most(1 << 20), "Rounds of probes.");
    v.param(kernel_read, "kernel_read", "true", Spec(Unit::Flag),
            "Each round, a forked child makes the kernel read a user page outside STAC/CLAC (a missing-uaccess "
            "bug): SMAP stops it.");
    v.param(kernel_exec, "kernel_exec", "true", Spec(Unit::Flag),
            "Each round, a forked child makes the kernel jump to an executable user page (ret2usr): SMEP stops it.");
    v.param(alias_write, "alias_write", "true", Spec(Unit::Flag),
            "Each round, a forked child writes through the read+execute alias of the code page (W^X): a #PF.");
    v.param(alias_exec, "alias_exec", "true", Spec(Unit::Flag),
            "Each round, a forked child fetches through the writable, non-executable alias: a #PF (XD).");
  }
};

struct PeriodicParams {
  std::uint64_t period, deadline, work, iterations;
  template <class V>
  void visit(V& v) {
    v.param(period, "period", "4ms", Spec(Unit::Time).at_least(1e3), "Release period of the real-time task.");
    v.param(deadline, "deadline", "0ps", Spec(Unit::Time),
            "Relative deadline of each job (0: the period).");
    v.param(work, "work", "100000", Spec(Unit::Instructions), "Instructions per job.");
    v.param(iterations, "iterations", "0", Spec(), "Jobs (0: until the end of the run).");
  }
};

/// A heartbeat: the guest's own view of how long it was stopped (docs/
/// migration.md, "What the guest felt").
struct HeartbeatParams {
  std::uint64_t interval, late, beats;
  template <class V>
  void visit(V& v) {
    v.param(interval, "interval", "100us", Spec(Unit::Time).at_least(1e6),
            "Time between beats: the thread sleeps until each beat is due, then notes it (as ping's default "
            "interval scaled to a simulation: assumption).");
    v.param(late, "late", "0ps", Spec(Unit::Time),
            "A beat taken more than this after it was due counts as late (0: one interval).");
    v.param(beats, "beats", "0", Spec(), "Beats (0: until the end of the run).");
  }
};

/// The critical VM's periodic control loop (workloads/net.cc; docs/
/// protection.md, "Mixed criticality").
struct ControlLoopParams {
  std::uint64_t period, deadline, iterations, state, input, input_pool, work, frame;
  template <class V>
  void visit(V& v) {
    v.param(period, "period", "2ms", Spec(Unit::Time).at_least(1e3), "Release period of the loop.");
    v.param(deadline, "deadline", "0ps", Spec(Unit::Time),
            "Relative deadline of each job, release to actuation (0: the period).");
    v.param(iterations, "iterations", "0", Spec(), "Jobs (0: until the end of the run).");
    v.param(state, "state", "1MiB", Spec(Unit::Bytes).at_least(64),
            "Control state (tables, model) each job walks once, one dependent load per 64-byte line: the data "
            "the loop keeps reusing, which an LLC partition protects.");
    v.param(input, "input", "256KiB", Spec(Unit::Bytes),
            "Sensor data each job reads, one dependent load per line, from the next slice of input_pool: fresh "
            "lines that come from DRAM (0: none).");
    v.param(input_pool, "input_pool", "16MiB", Spec(Unit::Bytes).at_least(4096),
            "Memory the input slices rotate through (at least input).");
    v.param(work, "work", "20000", Spec(Unit::Instructions), "Instructions of computation per job.");
    v.param(frame, "frame", "64", Spec(Unit::Bytes).at_least(38).at_most(1514),
            "Size of the sensor request and of the actuation frame, sent through the VM's network device; the "
            "network peer's echo of the request is the sensor's reading.");
  }
};

struct RequestServerParams {
  double rate;
  std::uint64_t service, requests;
  template <class V>
  void visit(V& v) {
    v.param(rate, "rate", "1000.0", Spec(Unit::Ratio).at_least(1e-3),
            "Mean arrival rate, requests per second (Poisson arrivals from the seeded random stream).");
    v.param(service, "service", "200000", Spec(Unit::Instructions), "Instructions to serve one request.");
    v.param(requests, "requests", "0", Spec(), "Requests (0: until the end of the run).");
  }
};

struct SpinlockParams {
  std::uint64_t critical, work, iterations;
  template <class V>
  void visit(V& v) {
    v.param(critical, "critical", "2000", Spec(Unit::Instructions),
            "Instructions inside the critical section (while holding the lock).");
    v.param(work, "work", "20000", Spec(Unit::Instructions),
            "Mean instructions between releasing and acquiring again (uniform in [work/2, 3 work/2]).");
    v.param(iterations, "iterations", "0", Spec(), "Acquisitions per thread (0: until the end of the run).");
  }
};

struct TraceParams {
  std::string file;
  std::uint64_t passes;
  template <class V>
  void visit(V& v) {
    v.param(file, "file", "", Spec(Unit::Text),
            "Trace to replay (docs/trace.md; made by scripts/trace-capture); relative paths are taken from "
            "the current directory.");
    v.param(passes, "passes", "1", Spec(), "Replays of the whole trace (0: until the end of the run).");
  }
};

// Network workloads (workloads/net.cc; docs/io.md, "Guest networking").
struct NetPingpongParams {
  std::uint64_t size, requests, interval;
  template <class V>
  void visit(V& v) {
    v.param(size, "size", "64", Spec(Unit::Bytes).at_least(38).at_most(4096),
            "Frame size, Ethernet header and the peer's timed header included (at least 38 bytes).");
    v.param(requests, "requests", "1000", Spec(), "Requests, each waiting for its echo (0: until the end).");
    v.param(interval, "interval", "0ps", Spec(Unit::Time),
            "Pause after each reply before the next request (0: back to back).");
  }
};

/// The ring and per-frame cost of a poll-mode driver (net_stream, net_rx),
/// with their defaults declared once.
template <class V>
void visit_pmd_ring(V& v, std::uint64_t& ring, std::uint64_t& pmd_instructions, const char* ring_desc,
                    const char* cost_desc) {
  v.param(ring, "ring", "512", Spec(Unit::Count).at_least(64).at_most(4096).power_of_two(), ring_desc);
  v.param(pmd_instructions, "pmd_instructions", "40", Spec(Unit::Instructions), cost_desc);
}

struct NetStreamParams {
  std::uint64_t size, frames, batch, buffer, ring, pmd_instructions, gap;
  std::string driver, to;
  template <class V>
  void visit(V& v) {
    v.param(size, "size", "1514", Spec(Unit::Bytes).at_least(38).at_most(4096),
            "Frame size, headers included (1514: a full 1500-byte MTU frame without FCS).");
    v.param(frames, "frames", "10000", Spec(), "Frames to send (0: until the end).");
    v.param(batch, "batch", "1", Spec().at_least(1).at_most(4096),
            "Frames queued per doorbell (the device is notified once per batch).");
    v.param(gap, "gap", "0s", Spec(Unit::Time),
            "kernel driver: the program sleeps this long (nanosleep) after each batch, for a stream below line "
            "rate (0: none).");
    v.param(to, "to", "peer", Spec().one_of({"peer", "self"}),
            "kernel driver: the frames' destination MAC: the network peer's, or the device's own (frames that "
            "the far end's NIC steers to its function of that MAC, e.g. the same VF of another host, which drops "
            "them in hardware when it is not enabled: a stream no software receives).");
    v.param(buffer, "buffer", "1MiB", Spec(Unit::Bytes).at_least(4096),
            "The program's send buffer: frames are taken from successive offsets of it. With the pmd "
            "driver it is the pool of packet buffers the device reads (each frame in a slot of the next "
            "power of two of its size, so that no frame crosses a page).");
    v.param(driver, "driver", "kernel", Spec().one_of({"kernel", "pmd"}),
            "kernel: each frame goes through the guest kernel's send path, which copies it into its ring "
            "buffer. pmd: the program claims the NIC function from the kernel and drives its transmit ring "
            "itself, polling for completions without interrupts (as a DPDK poll-mode driver over vfio); the "
            "device reads the frames straight from the program's buffer. Needs a ring NIC (VF or emulated).");
    visit_pmd_ring(v, ring, pmd_instructions,
                   "pmd: descriptors in the program's transmit ring. Default: 512 (assumption: DPDK testpmd's "
                   "long-standing default TX ring size).",
                   "pmd: instructions per frame besides its loads and stores (burst loop, descriptor build, ring "
                   "accounting). Default: 40 (assumption: DPDK's vector transmit paths take a few tens of cycles "
                   "per packet).");
  }
};

/// Answers every frame it receives by sending it back to its sender (the
/// guest side of the network peer's ping, docs/migration.md).
struct NetEchoParams {
  std::uint64_t frames, instructions;
  template <class V>
  void visit(V& v) {
    v.param(frames, "frames", "0", Spec(), "Frames to answer (0: until the end).");
    v.param(instructions, "instructions", "200", Spec(Unit::Instructions),
            "Instructions per frame besides its loads, stores and the kernel's calls (assumption, of the order "
            "of an ICMP echo reply in a kernel's receive path).");
  }
};

struct NetRxParams {
  std::uint64_t frames, batch, buffer, ring, pmd_instructions;
  std::string driver;
  template <class V>
  void visit(V& v) {
    v.param(frames, "frames", "0", Spec(), "Frames to receive (0: until the end).");
    v.param(driver, "driver", "kernel", Spec().one_of({"kernel", "pmd"}),
            "kernel: each frame through the guest kernel's receive call (interrupt, copy). pmd: the program "
            "claims the NIC function and polls its own receive ring; the device writes the frames straight "
            "into the program's buffers (docs/io.md, \"Poll-mode driver\").");
    v.param(batch, "batch", "32", Spec().at_least(1).at_most(4096),
            "pmd: descriptors given back to the device per RX_TAIL write.");
    v.param(buffer, "buffer", "1MiB", Spec(Unit::Bytes).at_least(4096),
            "pmd: the pool of 2 KiB receive buffers (at least as many as the ring has descriptors); kernel: "
            "unused.");
    visit_pmd_ring(v, ring, pmd_instructions,
                   "pmd: descriptors in the program's receive ring. Default: 512 (assumption: DPDK testpmd's "
                   "long-standing default RX ring size).",
                   "pmd: instructions per frame besides its loads and stores (burst loop, descriptor refill). "
                   "Default: 40 (assumption, as net_stream's).");
  }
};

struct DmaRogueParams {
  std::uint64_t address, stride, count, delay;
  bool rx, tx;
  template <class V>
  void visit(V& v) {
    v.param(address, "address", "0x4000000", Spec(),
            "First bus address the rogue driver points its device at (a guest-physical address outside its "
            "memory, e.g. where other VMs' memory sits in the host).");
    v.param(stride, "stride", "1MiB", Spec(Unit::Bytes), "Distance between successive target addresses.");
    v.param(count, "count", "8", Spec().at_least(1), "Target addresses (attempts per direction).");
    v.param(delay, "delay", "1ms", Spec(Unit::Time), "Time to wait before the attack (lets other VMs fill memory).");
    v.param(rx, "rx", "true", Spec(Unit::Flag),
            "Attack with device writes: a receive descriptor aimed at the target, then a frame echoed into it.");
    v.param(tx, "tx", "true", Spec(Unit::Flag),
            "Attack with device reads: a transmit descriptor whose buffer is the target (after the writes).");
  }
};

struct PatternCheckParams {
  std::uint64_t working_set, hold, salt, passes;
  template <class V>
  void visit(V& v) {
    v.param(working_set, "working_set", "4MiB", Spec(Unit::Bytes).at_least(4096),
            "Memory filled with a known pattern (one distinct quadword per 8 bytes).");
    v.param(hold, "hold", "2ms", Spec(Unit::Time), "Time between filling and checking the memory.");
    v.param(salt, "salt", "0", Spec(),
            "XORed into every quadword of the pattern: VMs with different salts hold different contents, so a "
            "page of one VM showing up in another is caught.");
    v.param(passes, "passes", "1", Spec(Unit::Count).at_least(1).at_most(1000),
            "Fill-hold-check rounds, each with its own pattern (every page rewritten each round).");
  }
};

/// A program profiled with the guest kernel's perf facility (workloads/
/// profile.cc; docs/pmu.md, "Profiling in a guest").
struct ProfileParams {
  std::string mode;
  std::uint64_t event, sample_period, rounds, compute, working_set, stride, pause;
  template <class V>
  void visit(V& v) {
    v.param(mode, "mode", "count", Spec().one_of({"count", "sample"}),
            "count: read the counters around the work (perf stat); sample: PMC0 interrupts every sample_period "
            "events and each sample goes to the phase the program was in (perf record).");
    v.param(event, "event", "0x412E", Spec().at_most(0xFFFF),
            "Event of IA32_PMC0: event number in bits 7:0, unit mask in 15:8 (default 0x412E, the architectural "
            "LLC Misses; 0x00C0 instructions retired, 0x003C core cycles; docs/pmu.md lists the events).");
    v.param(sample_period, "sample_period", "20000", Spec().at_least(1).at_most(0x7FFFFFFF),
            "sample: events between two samples.");
    v.param(rounds, "rounds", "10", Spec().at_least(1), "Rounds; each runs phase 0 then phase 1.");
    v.param(compute, "compute", "200000", Spec(Unit::Instructions),
            "Phase 0 of each round: instructions of pure computation.");
    v.param(working_set, "working_set", "1MiB", Spec(Unit::Bytes).at_least(4096),
            "Phase 1 of each round: one pass of loads over this many bytes (cold after the first round when "
            "larger than the caches).");
    v.param(stride, "stride", "64", Spec(Unit::Bytes).at_least(8), "Phase 1: distance between loads.");
    v.param(pause, "pause", "0ps", Spec(Unit::Time),
            "Sleep after each round (0: none). A vCPU whose only thread sleeps halts, and a halted vCPU may "
            "later move to an idle core (hypervisor.migration).");
  }
};

// Controlled page contents (workloads/page_content.cc; docs/memory.md,
// "Same-page merging"): pages identical across VMs, zero pages and private
// pages, with writes over the shared ones and a moving read working set.
struct PageContentParams {
  std::uint64_t pages, content_seed, write_offset, working_set, accesses, instructions_per_access;
  double shared_fraction, zero_fraction, write_rate;
  std::string write_value;
  std::uint64_t phase;
  template <class V>
  void visit(V& v) {
    v.param(pages, "pages", "1024", Spec(Unit::Count).at_least(1).at_most(1u << 20),
            "Pages of the program's region (each thread has its own), filled with stores before the measured "
            "work.");
    v.param(shared_fraction, "shared_fraction", "0.5", Spec(Unit::Ratio).at_least(0).at_most(1),
            "Fraction of the pages whose contents derive from content_seed only: the same in every VM (and "
            "thread) that runs the program with that seed, as the pages of a common binary or library.");
    v.param(zero_fraction, "zero_fraction", "0.1", Spec(Unit::Ratio).at_least(0).at_most(1),
            "Fraction of the pages left all zero (touched by REP STOSB of zeros, so that they are backed). "
            "The rest are private: contents from the VM's own seed (the thread's random stream). "
            "shared_fraction + zero_fraction must not exceed 1.");
    v.param(content_seed, "content_seed", "1", Spec(),
            "Seed of the shared pages' contents: VMs with the same seed have identical shared pages.");
    v.param(write_rate, "write_rate", "0.0", Spec(Unit::Ratio).at_least(0),
            "Writes per second of guest time to a random shared page (0: the shared pages are only read). "
            "Each write stores one byte at write_offset, the rarely written byte of otherwise identical pages "
            "(false sharing).");
    v.param(write_value, "write_value", "same", Spec().one_of({"same", "private"}),
            "same: the byte is rewritten with the value it holds (the page stays identical to its siblings, "
            "as a flag set again or a counter put back); private: a value from the VM's random stream (the "
            "page diverges from its siblings).");
    v.param(write_offset, "write_offset", "2048", Spec(Unit::Bytes).at_most(4095),
            "Offset in the page of the byte the writes store.");
    v.param(working_set, "working_set", "0", Spec(Unit::Count),
            "Pages of the region the read loop touches at a time (0: all of them).");
    v.param(phase, "phase", "0ps", Spec(Unit::Time),
            "Guest time after which the read working set moves on by working_set pages (0: it never moves).");
    v.param(accesses, "accesses", "0", Spec(), "Read accesses of the measured loop (0: until the end of the run).");
    v.param(instructions_per_access, "instructions_per_access", "20", Spec(Unit::Instructions),
            "Instructions besides each read access (the program's work per access).");
  }
};

/// An interpreter of RV32I machine code (workloads/interpreter.cc; docs/pmu.md,
/// "S21: an interpreter"): the program image, the interpreted machine's
/// memory and the interpreter's register file and dispatch table live in
/// guest memory and are reached with the core's loads and stores.
struct InterpreterParams {
  std::string program, perf;
  std::uint64_t elements, passes, data_seed, max_steps, event, sample_period;
  template <class V>
  void visit(V& v) {
    v.param(program, "program", "checksum", Spec().one_of({"checksum", "illegal", "out_of_range"}),
            "The interpreted program (assembled into RV32I machine words by workloads/rv32i.h). checksum: fills "
            "an array of `elements` words with a xorshift32 sequence, then sums it `passes` times (two running "
            "sums, Fletcher-style) and ends with ECALL, a0 holding the checksum. illegal: the same with an "
            "undefined instruction word after the fill; out_of_range: the same with a load from outside the "
            "interpreted memory after the fill (both end the interpreted run there, with that reason).");
    v.param(elements, "elements", "4096", Spec(Unit::Count).at_least(1).at_most(1u << 24),
            "32-bit words of the program's array (the interpreted machine's memory is 4 KiB of code and "
            "result plus the array).");
    v.param(passes, "passes", "4", Spec(Unit::Count).at_least(1).at_most(1u << 20),
            "Checksum passes over the array.");
    v.param(data_seed, "data_seed", "0x2545F491", Spec().at_least(1).at_most(0xFFFFFFFF),
            "Nonzero seed of the program's xorshift32 sequence.");
    v.param(max_steps, "max_steps", "0", Spec(Unit::Instructions),
            "Interpreted instructions after which the interpreter stops the program (0: no limit).");
    v.param(perf, "perf", "none", Spec().one_of({"none", "count", "sample"}),
            "none: no counters. count: the guest's perf facility counts instructions, cycles and `event` around "
            "each run (interpreted and native). sample: PMC0 interrupts every sample_period `event`s and each "
            "sample goes to the interpreter's stage (fetch, decode, dispatch, execute) or to the native run.");
    v.param(event, "event", "0x003C", Spec().at_most(0xFFFF),
            "Event of IA32_PMC0 (event number in bits 7:0, unit mask in 15:8; 0x003C core cycles, 0x08D1 L1 "
            "load misses; docs/pmu.md lists the events).");
    v.param(sample_period, "sample_period", "20000", Spec().at_least(1).at_most(0x7FFFFFFF),
            "sample: events between two samples.");
  }
};

struct WorkloadParams {
  std::string type;
  std::uint64_t threads;
  std::uint64_t page_size;
  std::int64_t nice;
  ComputeParams compute;
  ComputeParams cpu_bound;
  StreamParams stream;
  RandomAccessParams random_access;
  PointerChaseParams pointer_chase;
  CpuidLoopParams cpuid_loop;
  IoLoopParams io_loop;
  VmcallLoopParams vmcall_loop;
  TouchPagesParams touch_pages;
  SleepLoopParams sleep_loop;
  TraceParams trace;
  MmapChurnParams mmap_churn;
  ForkChurnParams fork_churn;
  PeriodicParams periodic;
  HeartbeatParams heartbeat;
  ControlLoopParams control_loop;
  RequestServerParams request_server;
  SpinlockParams spinlock;
  NetPingpongParams net_pingpong;
  NetStreamParams net_stream;
  NetRxParams net_rx;
  NetEchoParams net_echo;
  DmaRogueParams dma_rogue;
  PatternCheckParams pattern_check;
  ProtectionProbeParams protection_probe;
  ProfileParams profile;
  PageContentParams page_content;
  InterpreterParams interpreter;

  template <class V>
  void visit(V& v) {
    v.param(threads, "threads", "1", Spec().at_least(1).at_most(1024),
            "Threads of the process, spread over the VM's vCPUs.");
    v.param(page_size, "page_size", "4KiB", Spec(Unit::Bytes).power_of_two(),
            "Guest page size of the program's memory: 4KiB, 2MiB or 1GiB (as with hugetlbfs).");
    v.param(nice, "nice", "0", Spec().at_least(-20).at_most(19),
            "Nice value of the program's threads: the guest scheduler weighs them by Linux's "
            "sched_prio_to_weight (nice 0: 1024, nice 19: 15, nice -20: 88761).");
    v.variant(type, "type", "What the program does (cpu_bound is another name for compute).",
              cfg::alt("compute", compute), cfg::alt("cpu_bound", cpu_bound), cfg::alt("stream", stream),
              cfg::alt("random_access", random_access), cfg::alt("pointer_chase", pointer_chase),
              cfg::alt("cpuid_loop", cpuid_loop), cfg::alt("io_loop", io_loop),
              cfg::alt("vmcall_loop", vmcall_loop), cfg::alt("touch_pages", touch_pages),
              cfg::alt("sleep_loop", sleep_loop), cfg::alt("trace", trace),
              cfg::alt("mmap_churn", mmap_churn), cfg::alt("fork_churn", fork_churn),
              cfg::alt("periodic", periodic), cfg::alt("request_server", request_server),
              cfg::alt("spinlock", spinlock), cfg::alt("net_pingpong", net_pingpong),
              cfg::alt("net_stream", net_stream), cfg::alt("net_rx", net_rx), cfg::alt("dma_rogue", dma_rogue),
              cfg::alt("pattern_check", pattern_check), cfg::alt("protection_probe", protection_probe),
              cfg::alt("profile", profile), cfg::alt("page_content", page_content),
              cfg::alt("control_loop", control_loop), cfg::alt("heartbeat", heartbeat),
              cfg::alt("interpreter", interpreter), cfg::alt("net_echo", net_echo));
  }
};

/// Statistics every workload keeps (as the program itself would count).
struct WorkloadStats : stats::Group {
  using Group::Group;
  stats::Counter operations{this, "operations", "operations",
                            "units of work done (iterations, accesses, updates, steps, instructions issued)"};
  stats::Counter threads_done{this, "threads_done", "threads", "threads that finished their work"};
  stats::Gauge first_start{this, "start_cycle", "cycles", "TSC when the first thread started its measured work"};
  stats::Gauge last_end{this, "end_cycle", "cycles", "TSC when the last thread finished"};
};

class Workload : public guest::Program {
 public:
  explicit Workload(stats::Group* parent, const std::string& name) : m_stats(parent, name) {}

  static std::shared_ptr<Workload> create(const WorkloadParams& p, stats::Group* parent, const std::string& name);
  /// The network workloads and pattern_check (workloads/net.cc); null for other types.
  static std::shared_ptr<Workload> create_net(const WorkloadParams& p, stats::Group* parent, const std::string& name);
  /// The profile workload (workloads/profile.cc).
  static std::shared_ptr<Workload> create_profile(const ProfileParams& p, stats::Group* parent,
                                                  const std::string& name);
  /// The RV32I interpreter (workloads/interpreter.cc).
  static std::shared_ptr<Workload> create_interpreter(const InterpreterParams& p, stats::Group* parent,
                                                      const std::string& name);
  /// page_content (workloads/page_content.cc); null for other types.
  static std::shared_ptr<Workload> create_page_content(const WorkloadParams& p, stats::Group* parent,
                                                       const std::string& name);

 protected:
  void started(guest::Thread& t);
  void finished(guest::Thread& t);
  WorkloadStats m_stats;
};

}  // namespace vmx::workloads
