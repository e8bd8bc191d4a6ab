# Finds ftune's dependencies. Included by ftune's own build and by the installed ftuneConfig.cmake.
# Debian: libxsimd-dev nlohmann-json3-dev libutf8proc-dev (+ GCC's libgomp or libomp-dev for
# OpenMP). Eigen (libeigen3-dev) only for ftune's own tests and benchmarks (gemm_eigen.hpp).
# Inside find_package(ftune) the dependencies are found with find_dependency (which forwards
# QUIET/REQUIRED and reports ftune as not found when one is missing); in ftune's own build they
# are REQUIRED, so a missing one stops configuration with its own name.
include(CMakeFindDependencyMacro)
# Which dependencies: all in ftune's own build and for find_package(ftune) without components;
# with COMPONENTS, those the components need (core: xsimd; text: utf8proc; io: all three).
set(_ftune_need_xsimd ON)
set(_ftune_need_json ON)
set(_ftune_need_utf8proc ON)
if(CMAKE_FIND_PACKAGE_NAME STREQUAL "ftune" AND ftune_FIND_COMPONENTS)
  set(_ftune_need_xsimd OFF)
  set(_ftune_need_json OFF)
  set(_ftune_need_utf8proc OFF)
  foreach(_c IN LISTS ftune_FIND_COMPONENTS)
    if(_c STREQUAL "core")
      set(_ftune_need_xsimd ON)
    elseif(_c STREQUAL "text")
      set(_ftune_need_utf8proc ON)
    elseif(_c STREQUAL "io" OR _c STREQUAL "ftune")
      set(_ftune_need_xsimd ON)
      set(_ftune_need_json ON)
      set(_ftune_need_utf8proc ON)
    else()
      set(ftune_FOUND FALSE)
      set(ftune_NOT_FOUND_MESSAGE "unknown ftune component \"${_c}\" (core, text, io, ftune)")
      return()
    endif()
    set(ftune_${_c}_FOUND TRUE)
  endforeach()
endif()
macro(_ftune_find_dependency)
  if(CMAKE_FIND_PACKAGE_NAME STREQUAL "ftune")
    find_dependency(${ARGV})
  else()
    find_package(${ARGV} REQUIRED)
  endif()
endmacro()
# xsimd: any version from 8 on (its version file accepts only the same major version, and xsimd
# 8's is too old for version ranges, so the minimum is checked here)
if(_ftune_need_xsimd)
  _ftune_find_dependency(xsimd)
  if(xsimd_FOUND AND xsimd_VERSION VERSION_LESS 8)
    message(FATAL_ERROR "ftune needs xsimd 8 or later; found ${xsimd_VERSION} (Debian: libxsimd-dev)")
  endif()
endif()
if(_ftune_need_json)
  _ftune_find_dependency(nlohmann_json 3.9)  # for ftune/io.hpp (Hugging Face config.json)
endif()

# Debian 12's xsimd 8.1 target names "xtl" as a link library without depending on xtl-dev; the
# linker then looks for a non-existent libxtl. ftune does not use xtl: use its target when it is
# installed, and otherwise drop the dangling name.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_ftune_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_ftune_xsimd_libs AND "xtl" IN_LIST _ftune_xsimd_libs)
    find_package(xtl QUIET)
    if(NOT TARGET xtl)
      list(REMOVE_ITEM _ftune_xsimd_libs xtl)
      set_property(TARGET xsimd PROPERTY INTERFACE_LINK_LIBRARIES "${_ftune_xsimd_libs}")
    endif()
  endif()
endif()

# utf8proc (the tokenizer's Unicode data): Debian ships no CMake config, so find the header and
# library and make an imported target.
if(_ftune_need_utf8proc AND NOT TARGET ftune_utf8proc)
  find_path(FTUNE_UTF8PROC_INCLUDE_DIR utf8proc.h)
  find_library(FTUNE_UTF8PROC_LIBRARY NAMES utf8proc)
  if(FTUNE_UTF8PROC_INCLUDE_DIR AND FTUNE_UTF8PROC_LIBRARY)
    add_library(ftune_utf8proc INTERFACE IMPORTED)
    set_target_properties(ftune_utf8proc PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${FTUNE_UTF8PROC_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${FTUNE_UTF8PROC_LIBRARY}")
  elseif(CMAKE_FIND_PACKAGE_NAME STREQUAL "ftune")
    set(ftune_FOUND FALSE)
    set(ftune_NOT_FOUND_MESSAGE "ftune needs utf8proc (Debian: libutf8proc-dev)")
  else()
    message(FATAL_ERROR "ftune needs utf8proc for its tokenizer (Debian: libutf8proc-dev)")
  endif()
endif()
