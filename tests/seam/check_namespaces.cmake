# Namespaces match folders: a header under include/ftune/A/B/ opens only namespace A::B (written
# `namespace A::B {` or `namespace A {`), helpers named detail or *_detail, and nothing else; a
# top-level header X.hpp and a header of core/ (ftune's own namespace) may open the namespace of
# their file name (ops.hpp: ops; core/device.hpp: device). Run as
# `cmake -DROOT=<source dir> -P check_namespaces.cmake`; fails naming each file and namespace.
file(GLOB_RECURSE headers RELATIVE "${ROOT}/include/ftune" "${ROOT}/include/ftune/*.hpp")
set(bad "")
foreach(h IN LISTS headers)
  get_filename_component(dir "${h}" DIRECTORY)
  get_filename_component(stem "${h}" NAME_WE)
  string(REPLACE "/" "::" folder_ns "${dir}")
  set(allowed "")
  if(dir STREQUAL "" OR dir STREQUAL "core")
    list(APPEND allowed "${stem}")
  else()
    list(APPEND allowed "${folder_ns}")
    string(REPLACE "/" ";" parts "${dir}")
    list(GET parts 0 first)
    list(APPEND allowed "${first}")  # nested form: namespace A { namespace B {
  endif()
  file(STRINGS "${ROOT}/include/ftune/${h}" lines REGEX "^namespace [A-Za-z_:]+ {")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^namespace ([A-Za-z_:]+) {.*" "\\1" ns "${line}")
    if(ns STREQUAL "ftune" AND (h STREQUAL "version.hpp" OR h STREQUAL "config.hpp"))
      continue()  # the library's own namespace, opened where it is defined
    endif()
    string(REGEX REPLACE "::[a-z_]*detail$" "" ns "${ns}")  # A::B::detail is A::B's helper
    if(ns STREQUAL "detail" OR ns MATCHES "_detail$")
      continue()
    endif()
    list(FIND allowed "${ns}" found)
    if(found EQUAL -1)
      string(APPEND bad "  include/ftune/${h}: namespace ${ns} (expected ${allowed})\n")
    endif()
  endforeach()
endforeach()
if(bad)
  message(FATAL_ERROR "namespaces that do not match their folders:\n${bad}")
endif()
list(LENGTH headers n)
message(STATUS "namespaces match folders in ${n} headers under ${ROOT}/include/ftune")
