# LibTorch from the pinned PyPI torch wheel.
#
# The wheel is the CUDA-enabled build, so its CMake config looks for the CUDA toolkit even
# though we compile no CUDA code ourselves: point it at /usr/local/cuda when that exists.
# The device is chosen at run time (--device cpu|cuda:N); the same binary runs on both.
if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()
if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS ${CUDAToolkit_ROOT}/bin/nvcc)
  set(CMAKE_CUDA_COMPILER ${CUDAToolkit_ROOT}/bin/nvcc)
endif()
# We build no kernels; this only silences the architecture probe in Caffe2's CUDA config.
if(NOT DEFINED TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "9.0")
endif()
find_package(Torch REQUIRED CONFIG)
message(STATUS "atman: LibTorch ${Torch_VERSION} from ${Torch_DIR}")

# One interface target for our code: LibTorch's libraries plus its compile flags (the C++11
# ABI define) as usage requirements, its headers as system headers.
add_library(atman_torch INTERFACE)
target_link_libraries(atman_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(atman_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
separate_arguments(_atman_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(atman_torch INTERFACE ${_atman_torch_flags})

# The torch wheel's libtorch*.so carry their own copy of libstdc++'s std::filesystem and
# export it. Linked in the default order they come before libstdc++.so in DT_NEEDED, so our
# std::filesystem calls bind to that copy, whose layout does not match our compiler's headers:
# directory_iterator and remove_all crash. Naming libstdc++ first makes the system library
# win symbol lookup, for our code and LibTorch's alike.
target_link_options(atman_torch INTERFACE "LINKER:--push-state,--no-as-needed" "-lstdc++"
                    "LINKER:--pop-state")
