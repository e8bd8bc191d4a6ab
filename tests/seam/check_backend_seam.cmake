# The backend seam: library code outside include/ftune/backends/ and the dispatch in
# include/ftune/ops.hpp never names a backend (it calls ftune::ops, which dispatches on the
# device of its tensors). Run as `cmake -DROOT=<source dir> -P check_backend_seam.cmake`; fails
# naming each file and line that calls a backend directly.
file(GLOB_RECURSE headers RELATIVE "${ROOT}" "${ROOT}/include/ftune/*.hpp")
set(bad "")
foreach(h IN LISTS headers)
  if(h MATCHES "^include/ftune/backends/" OR h STREQUAL "include/ftune/ops.hpp")
    continue()
  endif()
  file(STRINGS "${ROOT}/${h}" lines)
  set(n 0)
  foreach(line IN LISTS lines)
    math(EXPR n "${n} + 1")
    if(line MATCHES "backends::(cpu|reference|cuda)::")
      string(APPEND bad "  ${h}:${n}: ${line}\n")
    endif()
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "backend calls outside backends/ and ops.hpp (call ftune::ops instead):\n${bad}")
endif()
message(STATUS "backend seam: no direct backend call in ${ROOT}/include/ftune outside backends/ and ops.hpp")
