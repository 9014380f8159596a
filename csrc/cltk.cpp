// cltk._C: a limited-API module with no Python functions of its own. Importing it loads this shared
// library, which runs the static TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL registrations of every
// kernel family; the ops are then reached as torch.ops.cltk.<name>.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "cltk native ops; use torch.ops.cltk.* or the cltk.ops wrappers",
      -1,    // size
      nullptr,
  };
  return PyModule_Create(&module_def);
}
