# Turns a text file into a C++ string constant (used for the embedded default config).
file(READ ${INPUT} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE ${OUTPUT} "// Generated from ${INPUT}; do not edit.\n#include <cstddef>\nnamespace vmx::experiment {\nextern const char kQuickstartYaml[];\nextern const std::size_t kQuickstartYamlSize;\nconst char kQuickstartYaml[] = {${bytes} 0x00};\nconst std::size_t kQuickstartYamlSize = sizeof(kQuickstartYaml) - 1;\n}\n")
