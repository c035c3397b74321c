// What every C ABI call shares (c_api.cpp, c_api_policy.cpp): exceptions become a status and a per-thread message.
#pragma once

#include <string>

#include "evospec/drafter.hpp"
#include "evospec/drafter_c.h"

namespace evospec::capi {

inline thread_local std::string last_error;  // evospec_last_error()

template <typename Body>
int guarded(Body body) {
  try {
    body();
    return EVOSPEC_OK;
  } catch (const evospec::BundleError& e) {
    last_error = e.what();
    return EVOSPEC_BUNDLE_ERROR;
  } catch (const evospec::SettingsError& e) {
    last_error = e.what();
    return EVOSPEC_SETTINGS_ERROR;
  } catch (const std::exception& e) {
    last_error = e.what();
    return EVOSPEC_INTERNAL_ERROR;
  } catch (...) {
    last_error = "unknown C++ exception";
    return EVOSPEC_INTERNAL_ERROR;
  }
}

inline std::string text(const char* s) { return s == nullptr ? std::string() : std::string(s); }

inline int missing(const char* what) {
  last_error = std::string(what) + " is NULL";
  return EVOSPEC_SETTINGS_ERROR;
}

}  // namespace evospec::capi
