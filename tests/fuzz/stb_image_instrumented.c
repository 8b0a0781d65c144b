/* stb_image compiled into a fuzz target (sanitizer and fuzz builds only, atman_add_fuzzer's
   LINK_INSTRUMENTED_STB): the same header as Debian's libstb.so, built with our sanitizer and
   coverage flags, so that the sanitizers check stb's PNG and GIF decoding and the fuzzer is
   guided by its branches. Its stbi_* definitions take precedence over libstb.so's. */
#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
