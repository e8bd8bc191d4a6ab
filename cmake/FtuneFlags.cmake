# Compile options for ftune's own programs (never imposed on consumers of ftune::ftune).
#   ftune_program_flags(target): -O3 in Release, -march=${FTUNE_ARCH} when set, else -march=native
#   unless FTUNE_NATIVE=OFF, warnings;
#   AddressSanitizer + UndefinedBehaviorSanitizer (every report fatal) with FTUNE_SANITIZE=ON.
function(ftune_program_flags target)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  target_compile_options(${target} PRIVATE
    $<$<CXX_COMPILER_ID:GNU,Clang>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>
    $<$<AND:$<CXX_COMPILER_ID:GNU,Clang>,$<CONFIG:Release>>:-O3>)
  if(FTUNE_ARCH)
    target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-march=${FTUNE_ARCH}>)
  elseif(FTUNE_NATIVE)
    target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU,Clang>:-march=native>)
  endif()
  if(FTUNE_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined
      -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()
