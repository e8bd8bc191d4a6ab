// Includes Catch2 v3 where installed, v2 (Debian 12's catch2 package) otherwise, or where
// FTUNE_CATCH2_V2 is defined (scripts/gpu-check.sh --deps: the packed v2 header on a machine
// whose system Catch2 is v3, built without its library).
#pragma once
#if !defined(FTUNE_CATCH2_V2) && __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#else
#include <catch2/catch.hpp>
#endif
