# Configures, builds and runs a consumer project. Variables: SOURCE, BINARY, CONFIGURE_ARGS
# (list), and optionally INSTALL_FROM / INSTALL_PREFIX to install ftune first.
if(INSTALL_FROM)
  file(REMOVE_RECURSE "${INSTALL_PREFIX}")
  execute_process(COMMAND "${CMAKE_COMMAND}" --install "${INSTALL_FROM}" --prefix "${INSTALL_PREFIX}"
    RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "cmake --install failed (${rc})")
  endif()
endif()
file(REMOVE_RECURSE "${BINARY}")
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SOURCE}" -B "${BINARY}" -DCMAKE_BUILD_TYPE=Release ${CONFIGURE_ARGS}
  RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring ${SOURCE} failed (${rc})")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BINARY}" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building ${SOURCE} failed (${rc})")
endif()
execute_process(COMMAND "${BINARY}/app" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "${BINARY}/app failed (${rc})")
endif()
