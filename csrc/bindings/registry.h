// [NOTE] Each bindings file registers itself: HM_BINDINGS(name) { m.def(...); }
// module.cpp runs the registered functions in name order when `hybrid_moe._C` is imported, so a new
// subsystem adds one file here and edits nothing else. Bindings hold no logic: they convert
// arguments, release the GIL around long calls, and leave checks to the C++ they call.
#pragma once

#include <pybind11/pybind11.h>

#include <functional>
#include <map>
#include <string>

namespace hm::bindings {

using RegisterFn = std::function<void(pybind11::module_&)>;
std::map<std::string, RegisterFn>& registry();

struct Registrar {
  Registrar(const char* name, RegisterFn fn) { registry().emplace(name, std::move(fn)); }
};

}  // namespace hm::bindings

#define HM_BINDINGS(name)                                                            \
  static void hm_bind_##name(pybind11::module_& m);                                  \
  static const ::hm::bindings::Registrar hm_registrar_##name(#name, hm_bind_##name); \
  static void hm_bind_##name(pybind11::module_& m)
