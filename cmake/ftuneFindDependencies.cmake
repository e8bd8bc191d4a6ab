# Finds ftune's dependencies. Included by ftune's own build and by the installed ftuneConfig.cmake.
# Debian: libeigen3-dev libxsimd-dev nlohmann-json3-dev (+ GCC's libgomp or libomp-dev for OpenMP).
include(CMakeFindDependencyMacro)
find_dependency(Eigen3 3.3 NO_MODULE)
find_dependency(xsimd 8)
find_dependency(nlohmann_json 3.9)

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
