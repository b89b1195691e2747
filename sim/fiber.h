// Cooperative execution contexts for simulated software.
//
// Every piece of simulated software (a hypervisor context per core, each guest
// vCPU, each guest thread) runs on a Fiber: its own stack, switched to and
// from explicitly. A switch saves and restores only the callee-saved
// registers, so it costs a few nanoseconds of host time (docs/architecture.md,
// "Time": a switch must stay in the tens of nanoseconds). Fibers never call
// into the SystemC kernel themselves; the core's SystemC thread does that
// when a fiber hands control back to it.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <string>

namespace vmx::sim {

/// Aligned to 16 bytes: a fiber's address is the "RIP" of the software on
/// it, and a hypervisor advances RIP by an instruction length of up to 15
/// (cpu/core.cc, VM entry).
class alignas(16) Fiber {
 public:
  using Body = std::function<void()>;

  /// A fiber that will run `body` on a fresh stack when first switched to.
  /// When `body` returns the fiber is finished and control goes to the fiber
  /// named by `on_exit` (set_exit_target), which must be set before then.
  Fiber(std::string name, Body body, std::size_t stack_bytes = 256 * 1024);
  /// Wraps the calling host thread (for example a SystemC thread) so that it
  /// can switch to other fibers and be switched back to.
  explicit Fiber(std::string name);
  ~Fiber();

  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  /// Suspends `from` (which must be the running fiber) and runs `to`.
  /// Returns when some fiber switches back to `from`.
  static void switch_to(Fiber& from, Fiber& to);

  void set_exit_target(Fiber* f) { m_exit_target = f; }
  /// The fiber executing now (nullptr outside any switch).
  static Fiber* running();
  /// Software's own tag for the context (a guest kernel keeps its thread
  /// descriptor here, as a kernel keeps `current` on its stack).
  void set_user(void* p) { m_user = p; }
  void* user() const { return m_user; }
  const std::string& name() const { return m_name; }
  bool finished() const { return m_finished; }
  bool started() const { return m_started; }
  /// An exception that escaped the fiber's body (rethrown by whoever finds it).
  std::exception_ptr error() const { return m_error; }

 private:
  static void entry(Fiber* self);

  std::string m_name;
  Body m_body;
  std::unique_ptr<unsigned char[]> m_stack;
  std::size_t m_stack_bytes = 0;
  void* m_sp = nullptr;  // saved stack pointer while suspended
  Fiber* m_exit_target = nullptr;
  void* m_user = nullptr;
  bool m_started = false;
  bool m_finished = false;
  std::exception_ptr m_error;
#if defined(__SANITIZE_ADDRESS__)
  void* m_fake_stack = nullptr;
  const void* m_stack_bottom = nullptr;
  std::size_t m_stack_size_seen = 0;
#endif

  friend struct FiberAccess;
};

}  // namespace vmx::sim
