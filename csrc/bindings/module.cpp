// The extension module hybrid_moe._C: exception translation, then every registered subsystem.
#include <pybind11/pybind11.h>

#include "bindings/registry.h"
#include "core/check.h"

namespace hm::bindings {

std::map<std::string, RegisterFn>& registry() {
  static std::map<std::string, RegisterFn> fns;
  return fns;
}

}  // namespace hm::bindings

PYBIND11_MODULE(_C, m) {
  m.doc() = "hybrid-moe native core (C++/CUDA); use the Python package hybrid_moe";
  // hm::ValueError derives from std::invalid_argument and hm::RuntimeError from
  // std::runtime_error: map them explicitly so the mapping does not depend on pybind11 defaults.
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const hm::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const hm::RuntimeError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  for (auto& [name, fn] : hm::bindings::registry()) fn(m);
}
