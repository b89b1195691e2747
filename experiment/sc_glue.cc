// libsystemc's own main() calls sc_main(). vmxsim's programs have their own
// main() and start SystemC with sc_start(), so sc_main is never called; the
// shared library still needs the symbol to link.
#include <cstdio>

extern "C" int sc_main(int, char**) {
  std::fprintf(stderr, "vmxsim: sc_main is not an entry point of this program\n");
  return 1;
}
